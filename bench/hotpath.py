"""
The server's own cost per request, without a second process: queue a batch
of requests in a server socket, time how long one read-answer-send pass
over them takes, repeat.  No scheduling, no wake-ups, no load generator:
only the code of the path under test and its system calls.

    python bench/hotpath.py [--count 2000] [--rounds 30]

Compares udptime's text and NTP services (every policy on, as in
bench/run.py) through its specialised port, with and without kernel
timestamps, through Twisted's generic port, and the plain blocking loop's
work (recvfrom, build a reply, sendto) for the same requests.
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

from references import REPLIES
from twisted.internet import reactor, udp

from udptime.clock import ClockSource
from udptime.fastport import ServerPort
from udptime.server import NTPServer, TextTimeServer, UDPServerProtocol
from udptime.service import bindUDPSocket
from udptime.tap import Options

NTP_REQUEST = bytes([0x23]) + bytes(39) + b"\x12\x34\x56\x78\x9a\xbc\xde\xf0"
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
    target = server.getsockname()[:2]
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


def timePasses(
    name: str,
    serverSock: socket.socket,
    payload: bytes,
    onePass: Callable[[], None],
    count: int,
    rounds: int,
) -> float:
    socks = clients(64)
    best = []
    for _ in range(rounds):
        fill(serverSock, socks, payload, count)
        start = time.perf_counter()
        onePass()
        elapsed = time.perf_counter() - start
        answered = drain(socks)
        if answered != count:
            raise RuntimeError(f"{name}: {answered} replies to {count} requests")
        best.append(elapsed / count * 1e6)
    for sock in socks:
        sock.close()
    best.sort()
    median = best[len(best) // 2]
    print(f"{name:<40} {median:6.2f} µs/request (best {best[0]:.2f})")
    return median


def blocking(protocol: str, count: int, rounds: int) -> float:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    reply = REPLIES[protocol]

    def onePass() -> None:
        recvfrom, sendto = sock.recvfrom, sock.sendto
        for _ in range(count):
            data, addr = recvfrom(2048)
            answer = reply(data)
            if answer is not None:
                sendto(answer, addr)

    payload = NTP_REQUEST if protocol == "ntp" else b"time"
    try:
        return timePasses(
            f"{protocol}: blocking loop", sock, payload, onePass, count, rounds
        )
    finally:
        sock.close()


def udptimeServer(protocol: str) -> UDPServerProtocol:
    options = Options()
    options.parseOptions(POLICY)
    limit = options.globalLimit()
    if protocol == "ntp":
        server: UDPServerProtocol = NTPServer(clockSource=ClockSource(10))
    else:
        server = TextTimeServer(defaultZone=UTC)
    server.policy = options.servicePolicy(protocol, limit)
    return server


def udptime(protocol: str, fast: bool, kernel: bool, count: int, rounds: int) -> float:
    sock = bindUDPSocket("127.0.0.1", 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    server = udptimeServer(protocol)
    port: Any
    if fast:
        port = ServerPort.adopt(reactor, sock, server, 65535, kernelTimestamps=kernel)
        port.maxDatagramsPerRead = count
    else:
        port = reactor.adoptDatagramPort(  # type: ignore[attr-defined]
            sock.fileno(), sock.family, server, maxPacketSize=65535
        )
        port.maxThroughput = 1 << 30
    sock.close()
    name = f"{protocol}: udptime {'ServerPort' if fast else 'udp.Port'}"
    if fast:
        name += ", kernel ts" if kernel else ", no kernel ts"
    payload = NTP_REQUEST if protocol == "ntp" else b"time"
    try:
        return timePasses(name, port.socket, payload, port.doRead, count, rounds)
    finally:
        port.stopListening()
        assert isinstance(port, udp.Port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    for protocol in ("text", "ntp"):
        blocking(protocol, args.count, args.rounds)
        udptime(protocol, False, False, args.count, args.rounds)
        udptime(protocol, True, False, args.count, args.rounds)
        if protocol == "ntp":
            udptime(protocol, True, True, args.count, args.rounds)


if __name__ == "__main__":
    main()
