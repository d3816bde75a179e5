"""
The server's own cost per request, without a second process: queue a batch
of requests in a server socket, time how long one read-answer-send pass
over them takes, repeat, every path taking its turn in each round (so that
the load of a shared machine weighs on all alike).  No scheduling, no
wake-ups, no load generator: only the code of the path under test and its
system calls.

    python bench/hotpath.py [--count 2000] [--rounds 30] [--parts]

Compares udptime's text and NTP services (every policy on, as in
bench/run.py) through its specialised port, with and without kernel
timestamps, one datagram per system call and batched (recvmmsg/sendmmsg,
where the system has them), through Twisted's generic port, and the plain
blocking loop's work (recvfrom, build a reply, sendto) and the bare Twisted
L{DatagramProtocol} of bench/references.py for the same requests.

L{udptimeServer} also makes udptime's Roughtime service (a synchronised
clock, a new key), which C{bench/instructions.py} counts.

With C{--parts} it takes udptime's default path for each service apart
instead, adding one piece at a time: the port and its system calls with a
constant reply (beside the blocking loop with a constant reply), kernel
timestamps (NTP), the service's codec, and the policy; then the same bound
to the wildcard address, where each reply is sent from the address its
request reached.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from references import REPLIES, twistedServer
from twisted.internet import reactor, udp

from udptime.clock import ClockSource
from udptime.decision import Decision
from udptime.port import ServerPort, batchingAvailable
from udptime.roughtime import buildRequest
from udptime.roughtimekeys import OnlineKey
from udptime.roughtimeserver import RoughtimeResponder, RoughtimeServer
from udptime.server import NTPServer, TextTimeServer, UDPServerProtocol
from udptime.service import bindUDPSocket
from udptime.tap import Options

NTP_REQUEST = bytes([0x23]) + bytes(39) + b"\x12\x34\x56\x78\x9a\xbc\xde\xf0"
# A Roughtime request naming no server, as bench/load.py sends.
ROUGHTIME_REQUEST = buildRequest(None).packet
PAYLOADS = {"ntp": NTP_REQUEST, "text": b"time", "roughtime": ROUGHTIME_REQUEST}
POLICY = ["--rate", "1000000", "--burst", "100000", "--global-rate", "1e8"]


def clients(count: int) -> list[socket.socket]:
    """
    Client sockets on distinct source addresses, as many clients would be.
    """
    socks = []
    for i in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((f"127.2.{i >> 8}.{i & 255 or 1}", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        sock.setblocking(False)
        socks.append(sock)
    return socks


def fill(
    server: socket.socket, socks: list[socket.socket], payload: bytes, count: int
) -> None:
    host, port = server.getsockname()[:2]
    target = ("127.0.0.1" if host in ("0.0.0.0", "::") else host, port)
    for sock in itertools.islice(itertools.cycle(socks), count):
        sock.sendto(payload, target)


def drain(socks: list[socket.socket]) -> int:
    got = 0
    for sock in socks:
        while True:
            try:
                sock.recv(2048)
            except BlockingIOError:
                break
            got += 1
    return got


class Path:
    """
    One way of answering the queued requests: a server socket and one pass
    of the code under test over what waits in it.
    """

    def __init__(
        self,
        name: str,
        serverSock: socket.socket,
        payload: bytes,
        onePass: Callable[[], None],
        close: Callable[[], object],
    ) -> None:
        self.name = name
        self.serverSock = serverSock
        self.payload = payload
        self.onePass = onePass
        self.close = close
        self.times: list[float] = []

    def median(self) -> float:
        ordered = sorted(self.times)
        return ordered[len(ordered) // 2]


def timeInterleaved(paths: list[Path], count: int, rounds: int) -> None:
    """
    Time C{rounds} passes of each path over C{count} queued requests, the
    paths taking turns round by round, so that a change in the machine's
    load (a shared guest's is large) affects them all alike.
    """
    socks = clients(64)
    try:
        for _ in range(rounds):
            for path in paths:
                fill(path.serverSock, socks, path.payload, count)
                start = time.perf_counter()
                path.onePass()
                elapsed = time.perf_counter() - start
                answered = drain(socks)
                if answered != count:
                    raise RuntimeError(
                        f"{path.name}: {answered} replies to {count} requests"
                    )
                path.times.append(elapsed / count * 1e6)
    finally:
        for sock in socks:
            sock.close()


def loopbackSocket(interface: str = "127.0.0.1") -> socket.socket:
    """
    A server socket on a free port of C{interface} (loopback by default),
    with room for a pass's requests.
    """
    sock = bindUDPSocket(interface, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    return sock


def blocking(
    protocol: str, reply: Callable[[bytes], bytes | None] | None = None
) -> Path:
    """
    The blocking loop's work for C{protocol}'s requests, answering each
    with C{reply} (by default the reference server's reply).
    """
    sock = loopbackSocket()
    if reply is None:
        reply = REPLIES[protocol]

    def onePass() -> None:
        recvfrom, sendto = sock.recvfrom, sock.sendto
        while True:
            try:
                data, addr = recvfrom(2048)
            except BlockingIOError:
                return
            answer = reply(data)
            if answer is not None:
                sendto(answer, addr)

    return Path(
        f"{protocol}: blocking loop", sock, PAYLOADS[protocol], onePass, sock.close
    )


def bareTwisted(protocol: str) -> Path:
    """
    The bare Twisted L{DatagramProtocol} of bench/references.py on
    Twisted's generic port, answering C{protocol}'s requests.
    """
    sock = loopbackSocket()
    port = reactor.adoptDatagramPort(  # type: ignore[attr-defined]
        sock.fileno(), sock.family, twistedServer(REPLIES[protocol])
    )
    port.maxThroughput = 1 << 30
    sock.close()
    return Path(
        f"{protocol}: bare Twisted",
        port.socket,
        PAYLOADS[protocol],
        port.doRead,
        port.stopListening,
    )


def udptimeServer(protocol: str) -> UDPServerProtocol:
    options = Options()
    options.parseOptions(POLICY)
    limit = options.globalLimit()
    if protocol == "ntp":
        server: UDPServerProtocol = NTPServer(clockSource=ClockSource(10))
    elif protocol == "roughtime":
        # A synchronised clock (a local stratum 1) and a new long-term key.
        responder = RoughtimeResponder(
            OnlineKey(Ed25519PrivateKey.generate()), ClockSource(1).state
        )
        server = RoughtimeServer(responder)
    else:
        server = TextTimeServer(defaultZone=UTC)
    server.policy = options.servicePolicy(protocol, limit)
    return server


class ConstantServer(UDPServerProtocol):
    """
    A service that answers every datagram with one reply, sent as the
    replies of C{like} are (at once, or held for a batch): what udptime's
    port and the generic bookkeeping of a service cost, without a codec.
    """

    def __init__(self, reply: bytes, like: UDPServerProtocol) -> None:
        super().__init__()
        self.reply = reply
        self.transmitTimestamps = like.transmitTimestamps  # type: ignore[misc]

    def respond(self, data: bytes, addr: Any, received: float) -> Decision:
        return self.reply


def serverPort(
    server: UDPServerProtocol,
    kernel: bool,
    batched: bool,
    count: int,
    interface: str = "127.0.0.1",
) -> ServerPort:
    """
    udptime's port serving C{server} on a socket bound to C{interface},
    reading up to C{count} datagrams per pass.
    """
    sock = loopbackSocket(interface)
    port = ServerPort.adopt(
        reactor, sock, server, 65535, kernelTimestamps=kernel, batched=batched
    )
    sock.close()
    port.maxDatagramsPerRead = count
    return port


def udptime(
    protocol: str, fast: bool, kernel: bool, count: int, batched: bool = False
) -> Path:
    server = udptimeServer(protocol)
    if fast:
        kind = "ServerPort, batched" if batched else "ServerPort"
        return served(protocol, server, kernel, batched, count, kind)
    sock = loopbackSocket()
    port = reactor.adoptDatagramPort(  # type: ignore[attr-defined]
        sock.fileno(), sock.family, server, maxPacketSize=65535
    )
    port.maxThroughput = 1 << 30
    sock.close()
    assert isinstance(port, udp.Port)
    return Path(
        f"{protocol}: udptime udp.Port",
        port.socket,
        PAYLOADS[protocol],
        port.doRead,
        port.stopListening,
    )


def parts(protocol: str, count: int) -> list[Path]:
    """
    udptime's default path for C{protocol}, a piece at a time (see the
    module's C{--parts}), after the blocking loop, with its reply and with
    a constant one of the same size.
    """
    reference = blocking(protocol)
    size = len(REPLIES[protocol](PAYLOADS[protocol]) or b"")
    constant = b"x" * size
    floor = blocking(protocol, lambda data: constant)
    floor.name += ", constant reply"
    batched = batchingAvailable()
    kind = "ServerPort, batched" if batched else "ServerPort"
    withKernel = [False, True] if protocol == "ntp" else [False]
    paths = [reference, floor]
    for kernel in withKernel:
        fixed = ConstantServer(constant, udptimeServer(protocol))
        paths.append(
            served(protocol, fixed, kernel, batched, count, f"{kind}, constant reply")
        )
    kernel = withKernel[-1]
    unlimited = udptimeServer(protocol)
    unlimited.policy = None
    paths.append(
        served(protocol, unlimited, kernel, batched, count, f"{kind}, no policy")
    )
    paths.append(udptime(protocol, True, kernel, count, batched))
    paths.append(
        served(
            protocol,
            udptimeServer(protocol),
            kernel,
            batched,
            count,
            f"{kind}, bound to 0.0.0.0",
            "0.0.0.0",
        )
    )
    return paths


def served(
    protocol: str,
    server: UDPServerProtocol,
    kernel: bool,
    batched: bool,
    count: int,
    what: str,
    interface: str = "127.0.0.1",
) -> Path:
    """
    C{server} on udptime's port, bound to C{interface}, answering
    C{protocol}'s requests, as a path called after C{what}.
    """
    port = serverPort(server, kernel, batched, count, interface=interface)
    name = f"{protocol}: udptime {what}"
    name += ", kernel ts" if kernel else ", no kernel ts"
    return Path(name, port.socket, PAYLOADS[protocol], port.doRead, port.stopListening)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    parser.add_argument(
        "--parts", action="store_true", help="take udptime's default path apart"
    )
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    batchings = [False, True] if batchingAvailable() else [False]
    for protocol in ("text", "ntp"):
        if args.parts:
            paths = parts(protocol, args.count)
        else:
            paths = [
                blocking(protocol),
                bareTwisted(protocol),
                udptime(protocol, False, False, args.count),
            ]
            for batched in batchings:
                paths.append(udptime(protocol, True, False, args.count, batched))
                if protocol == "ntp":
                    paths.append(udptime(protocol, True, True, args.count, batched))
        try:
            timeInterleaved(paths, args.count, args.rounds)
        finally:
            for path in paths:
                path.close()
        reference = paths[0].median()
        width = max(len(path.name) for path in paths)
        for path in paths:
            median = path.median()
            print(
                f"{path.name:<{width}}  {median:6.2f} µs/request"
                f" (best {min(path.times):.2f}), {median / reference:.2f}"
                " x the blocking loop"
            )


if __name__ == "__main__":
    main()
