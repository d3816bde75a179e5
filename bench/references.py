"""
Reference time servers for udptime's benchmark: the usual ways to serve the
time from Python, each written plainly, as a user would.

Usage::

    python bench/references.py KIND PROTOCOL PORT

KIND is C{twisted} (a bare L{DatagramProtocol} on the default reactor),
C{asyncio} (the default event loop), C{uvloop} or C{blocking} (a
C{recvfrom}/C{sendto} loop); PROTOCOL is C{text} (any datagram gets the UTC
time in ISO 8601 with microseconds, one line) or C{ntp} (a mode-3 request
gets a mode-4 reply).  Each binds 127.0.0.1, prints C{ready} once bound and
serves until killed.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

NTP_UNIX_OFFSET = 2_208_988_800
_NTP = struct.Struct("!BBbbII4sQ8sQQ")


def textReply(data: bytes) -> bytes | None:
    """
    The current UTC time, as every text reference answers any datagram.
    """
    return datetime.now(UTC).isoformat(timespec="microseconds").encode() + b"\n"


def _ntpTime(t: float) -> int:
    return int((t + NTP_UNIX_OFFSET) * 4294967296.0) & 0xFFFFFFFFFFFFFFFF


def ntpReply(data: bytes) -> bytes | None:
    """
    A plain SNTP server reply: mode 3 in, mode 4 out, origin copied.
    """
    received = time.time()
    if len(data) < 48 or data[0] & 7 != 3:
        return None
    stamp = _ntpTime(received)
    return _NTP.pack(
        (data[0] & 0x38) | 4,
        1,
        data[2],
        -20,
        0,
        0,
        b"LOCL",
        stamp,
        data[40:48],
        stamp,
        _ntpTime(time.time()),
    )


REPLIES: dict[str, Callable[[bytes], bytes | None]] = {
    "text": textReply,
    "ntp": ntpReply,
}


def bound(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    return sock


def ready() -> None:
    print("ready", flush=True)


def runBlocking(reply: Callable[[bytes], bytes | None], port: int) -> None:
    sock = bound(port)
    ready()
    while True:
        data, addr = sock.recvfrom(2048)
        answer = reply(data)
        if answer is not None:
            sock.sendto(answer, addr)


def twistedServer(reply: Callable[[bytes], bytes | None]) -> Any:
    """
    The bare Twisted L{DatagramProtocol} answering each datagram with
    C{reply}.
    """
    from twisted.internet.protocol import DatagramProtocol

    class Server(DatagramProtocol):
        def datagramReceived(self, data: bytes, addr: Any) -> None:
            answer = reply(data)
            if answer is not None:
                self.transport.write(answer, addr)  # type: ignore[union-attr]

    return Server()


def runTwisted(reply: Callable[[bytes], bytes | None], port: int) -> None:
    from twisted.internet import reactor

    reactor.listenUDP(  # type: ignore[attr-defined]
        port, twistedServer(reply), interface="127.0.0.1"
    )
    reactor.callWhenRunning(ready)
    reactor.run()


def runAsyncio(
    reply: Callable[[bytes], bytes | None], port: int, useUvloop: bool
) -> None:
    import asyncio

    class Server(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            answer = reply(data)
            if answer is not None:
                self.transport.sendto(answer, addr)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(Server, local_addr=("127.0.0.1", port))
        ready()
        await asyncio.Event().wait()

    if useUvloop:
        import uvloop

        uvloop.run(serve())
    else:
        asyncio.run(serve())


def main(argv: list[str]) -> None:
    kind, protocol, port = argv[0], argv[1], int(argv[2])
    reply = REPLIES[protocol]
    if kind == "blocking":
        runBlocking(reply, port)
    elif kind == "twisted":
        runTwisted(reply, port)
    elif kind in ("asyncio", "uvloop"):
        runAsyncio(reply, port, kind == "uvloop")
    else:
        raise SystemExit(f"unknown server kind {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
