"""
What Network Time Security costs in udptime, piece by piece.

    python bench/nts.py [--count 20000] [--sessions 200]

Prints microseconds per operation (the best of 5 runs of C{--count}):

  - AES-SIV alone: building an C{AESSIV} object, sealing and opening a
    cookie with a server key (whose object is built once);
  - the NTP server's whole work for one request, codecs only: a plain
    request (L{udptime.ntp.parseRequest} and L{udptime.ntp.buildReply}) as
    the baseline, then NTS requests with 0 and 7 cookie placeholders
    (C{parseRequest}, L{udptime.nts.checkRequest}, C{buildReply},
    L{udptime.nts.NTSRequest.seal}), with the session ciphers built per
    request or taken from a L{udptime.nts.SessionCiphers} cache, and the
    part after the transmit timestamp is read (the seal alone);
  - the NTP service's whole decision (L{udptime.server.NTPServer.decide},
    with no admission policy), as the port asks it: a plain request, and
    NTS requests with 0 and 7 placeholders (the session ciphers cached, as
    for a client that keeps its key exchange's cookies);
  - the client's work: building a request and checking a reply;
  - a whole NTS-KE session over TLS 1.3 on loopback (C{--sessions} of them,
    one after the other), udptime's client and server in this one process:
    milliseconds per session, both ends together.

Only loopback traffic; nothing here is a test (speed is never asserted).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from twisted.internet import defer, task

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.certificates import makeCertificates
from tests.keservice import startKEService
from tests.ntsresponder import clockState
from udptime.clock import ClockSource
from udptime.ntp import NTPPacket, buildReply, parseRequest
from udptime.nts import (
    NTSRequest,
    SessionCiphers,
    buildClientRequest,
    checkRequest,
    readReply,
)
from udptime.ntsclient import ntsKeyExchange
from udptime.ntscookie import CookieKeys, SessionKeys
from udptime.ntsserver import NTSAuthentication
from udptime.policy import SourceLimiter
from udptime.server import NTPServer

STATE = clockState()


def perCall(operation: Callable[[], object], count: int, runs: int = 5) -> float:
    """
    The best of C{runs} timings of C{count} calls, in microseconds per call.
    """
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(count):
            operation()
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


def report(name: str, microseconds: float) -> None:
    print(f"  {name:58} {microseconds:8.2f} µs")


def codecs(count: int) -> None:
    keys = CookieKeys.generate(time.time())
    session = SessionKeys(os.urandom(32), os.urandom(32))
    cookie = keys.seal(session)
    material = os.urandom(32)
    print("AES-SIV")
    report("build an AESSIV object", perCall(lambda: AESSIV(material), count))
    report("seal a cookie (server key)", perCall(lambda: keys.seal(session), count))
    report("open a cookie", perCall(lambda: keys.open(cookie), count))

    header = NTPPacket(leap=0, version=4, mode=3, transmitTimestamp=1).toBytes()
    c2s = AESSIV(session.c2s)
    s2c = AESSIV(session.s2c)
    uid = os.urandom(32)

    def plain() -> bytes:
        return buildReply(parseRequest(header), STATE, time.time(), time.time)

    print("NTP server, one request, codecs only")
    report("plain request (baseline)", perCall(plain, count))
    for placeholders in (0, 7):
        request = buildClientRequest(
            header, cookie, placeholders, c2s, uid, os.urandom(16)
        )
        cache = SessionCiphers()

        def nts(ciphers: SessionCiphers | None, data: bytes = request) -> bytes:
            decision = checkRequest(data, keys, ciphers)
            assert isinstance(decision, NTSRequest)
            received = time.time()
            return decision.seal(
                buildReply(parseRequest(data), STATE, received, time.time)
            )

        label = f"NTS, {placeholders} placeholders ({len(request)} bytes)"
        report(label + ", new ciphers", perCall(lambda: nts(None), count))
        report(
            label + ", cached ciphers",
            perCall(lambda cache=cache: nts(cache), count),  # type: ignore[misc]
        )
        prepared = checkRequest(request, keys, cache)
        assert isinstance(prepared, NTSRequest)
        report(
            f"  of which after the transmit timestamp (seal, {prepared.cookies}"
            " cookies)",
            perCall(partial(prepared.seal, plain()), count),
        )

    print("NTP service's decision (NTPServer.decide, no policy)")
    server = NTPServer(clockSource=ClockSource(2), nts=NTSAuthentication(keys))
    server.startProtocol()
    source = ("127.0.0.1", 40000)
    report(
        "plain request (baseline)",
        perCall(lambda: server.decide(header, source, time.time()), count),
    )
    for placeholders in (0, 7):
        request = buildClientRequest(
            header, cookie, placeholders, c2s, uid, os.urandom(16)
        )
        report(
            f"NTS, {placeholders} placeholders ({len(request)} bytes)",
            perCall(
                lambda data=request: server.decide(data, source, time.time()),  # type: ignore[misc]
                count,
            ),
        )
    assert server.nts is not None
    print(f"  {server.nts.counters}")

    print("NTS client")
    request = buildClientRequest(header, cookie, 0, c2s, uid, os.urandom(16))
    decision = checkRequest(request, keys)
    assert isinstance(decision, NTSRequest)
    reply = decision.seal(plain())
    report(
        "build a request (no placeholders)",
        perCall(
            lambda: buildClientRequest(header, cookie, 0, c2s, uid, os.urandom(16)),
            count,
        ),
    )
    report(
        "check a reply (1 cookie)", perCall(lambda: readReply(reply, uid, s2c), count)
    )


async def sessions(reactor: Any, count: int) -> None:
    directory = tempfile.mkdtemp(prefix="udptime-bench-nts-")
    files = makeCertificates(directory)
    keys = CookieKeys.generate(time.time())
    service, port = await startKEService(
        keys, files, limiter=SourceLimiter(1e6, 1_000_000)
    )
    times = []
    for _ in range(count):
        start = time.perf_counter()
        await ntsKeyExchange(reactor, "127.0.0.1", port, caFile=files.ca)
        times.append(time.perf_counter() - start)
    await service.stopService()
    print("NTS-KE over TLS 1.3 on loopback, client and server in one process")
    print(
        f"  {'one session, both ends':58} {statistics.median(times) * 1e3:8.2f} ms"
        f" (median of {count}; fastest {min(times) * 1e3:.2f} ms)"
    )
    print(f"  server: {service.counters}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--sessions", type=int, default=200)
    options = parser.parse_args()
    codecs(options.count)
    task.react(
        lambda reactor: defer.Deferred.fromCoroutine(
            sessions(reactor, options.sessions)
        )
    )


if __name__ == "__main__":
    main()
