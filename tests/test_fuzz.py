"""
Fuzzing: every server protocol and codec against arbitrary datagrams of 0
to 65 507 bytes, odd source addresses, and mutations of valid requests in
the manner of chrony's packet fuzzing (bit flips, byte changes, cuts,
extensions, shuffled extension fields); and a running server sent tens of
thousands of them.

The suite runs a bounded number of cases.  For a longer run set
C{UDPTIME_FUZZ_EXAMPLES} (hypothesis examples per property; the mutation
fuzzers run 20 times as many cases) and, to reproduce a mutation run,
C{UDPTIME_FUZZ_SEED}::

    UDPTIME_FUZZ_EXAMPLES=20000 python -m pytest -q tests/test_fuzz.py
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.support import (
    RecordingTransport,
    TwistdServer,
    deliver,
    freePort,
    udpQuery,
)
from udptime import daytime, echo, ntp, rfc868, text
from udptime.reading import QueryError, ReplyMismatch
from udptime.server import (
    DaytimeServer,
    EchoServer,
    NTPServer,
    TextTimeServer,
    TimeServer,
    UDPServerProtocol,
)
from udptime.services import SERVICES
from udptime.text import TextClientCodec

EXAMPLES = int(os.environ.get("UDPTIME_FUZZ_EXAMPLES", "150"))
MUTATIONS = 20 * EXAMPLES
SEED = int(os.environ.get("UDPTIME_FUZZ_SEED", "0")) or random.SystemRandom().randrange(
    1, 2**32
)
MAX_PAYLOAD = 65_507
_Case = TypeVar("_Case", bound=SynchronousTestCase)
NOW = 1_800_000_000.25

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def ntpPacket(
    first: int,
    trailer: bytes = b"",
    transmit: int = 0x0123456789ABCDEF,
    stratum: int = 0,
    poll: int = 6,
    precision: int = -20,
) -> bytes:
    """
    An NTP packet whose first byte (LI, VN, mode) is C{first}, followed by
    C{trailer}.
    """
    packet = ntp.NTPPacket(
        leap=first >> 6,
        version=first >> 3 & 7,
        mode=first & 7,
        stratum=stratum,
        poll=poll,
        precision=precision,
        transmitTimestamp=transmit,
    )
    return packet.toBytes() + trailer


def extensionField(kind: int, size: int) -> bytes:
    return struct.pack("!HH", kind, size) + bytes(size - 4)


SEEDS: dict[str, list[bytes]] = {
    "ntp": [
        ntpPacket(0x23),  # v4 client
        ntpPacket(0x1B),  # v3 client
        ntpPacket(0x13),  # v2 client
        ntpPacket(0x08),  # v1, mode 0
        ntpPacket(0x21),  # v4 symmetric active
        ntpPacket(0xE3, precision=32),  # ntpdig's LI 3, chronyd's precision
        ntpPacket(0x23, extensionField(0x0104, 28)),
        ntpPacket(0x23, extensionField(0x0104, 16) + extensionField(0x0204, 28)),
        ntpPacket(0x23, bytes(4)),  # crypto-NAK
        ntpPacket(0x23, struct.pack("!I", 1) + bytes(16)),  # MD5 MAC
        ntpPacket(0x23, struct.pack("!I", 1) + bytes(20)),  # SHA-1 MAC
        ntpPacket(0x26),  # control (mode 6)
        ntpPacket(0x17) + bytes(144),  # private (mode 7), monlist-sized
    ],
    "text": [
        b"",
        b"time",
        b"iso Europe/Paris",
        b"unix",
        b"ctime UTC",
        b"rfc2822 America/Argentina/Buenos_Aires",
        b"month 12",
        b"Send time",
    ],
    "other": [b"udptime echo 0123456789abcdef", b"\r\n", b"x" * 1472],
}
ALL_SEEDS = [seed for seeds in SEEDS.values() for seed in seeds]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """
    One to four random mutations of C{data}.
    """
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(10)
        position = rng.randrange(len(buffer) + 1)
        if choice == 0 and buffer:
            buffer[position % len(buffer)] ^= 1 << rng.randrange(8)
        elif choice == 1 and buffer:
            buffer[position % len(buffer)] = rng.randrange(256)
        elif choice == 2 and buffer:
            buffer[position % len(buffer)] = rng.choice([0x00, 0x7F, 0x80, 0xFF])
        elif choice == 3:
            del buffer[position:]
        elif choice == 4:
            buffer[position:position] = rng.randbytes(rng.randrange(1, 65))
        elif choice == 5:
            buffer += bytes(rng.choice([1, 3, 4, 16, 20, 24, 28]))
        elif choice == 6 and len(buffer) >= 52:
            # An extension field length: small, odd, huge, or past the end.
            offset = 48 + 4 * rng.randrange((len(buffer) - 48) // 4)
            value = rng.choice([0, 4, 15, 16, 17, 28, 0xFFFC, 0xFFFF, len(buffer)])
            buffer[offset + 2 : offset + 4] = struct.pack("!H", value)
        elif choice == 7 and buffer:
            # LI, version and mode: every combination appears.
            buffer[0] = rng.randrange(256)
        elif choice == 8:
            start = rng.randrange(len(buffer) + 1)
            buffer[position:position] = buffer[start : start + rng.randrange(1, 49)]
        elif buffer:
            start = rng.randrange(len(buffer))
            end = min(len(buffer), start + rng.randrange(1, 17))
            del buffer[start:end]
    return bytes(buffer[:MAX_PAYLOAD])


def fuzzDatagrams(rng: random.Random, count: int) -> Iterator[bytes]:
    """
    C{count} datagrams: mostly mutations of valid requests, some random
    bytes of any length up to the largest UDP payload.
    """
    for _ in range(count):
        kind = rng.randrange(20)
        if kind == 0:
            yield rng.randbytes(rng.randrange(MAX_PAYLOAD + 1))
        elif kind < 4:
            yield rng.randbytes(rng.randrange(600))
        else:
            yield mutate(rng.choice(ALL_SEEDS), rng)


def reportingSeed(test: Callable[[_Case], None]) -> Callable[[_Case], None]:
    """
    Make a failure of the mutation test C{test} say the seed that repeats it.
    """

    @functools.wraps(test)
    def run(self: _Case) -> None:
        try:
            test(self)
        except Exception as error:
            raise AssertionError(f"UDPTIME_FUZZ_SEED={SEED}: {error!r}") from error

    return run


SERVERS: dict[str, Callable[[], UDPServerProtocol]] = {
    "text": TextTimeServer,
    "ntp": NTPServer,
    "time": TimeServer,
    "daytime": DaytimeServer,
    "echo": EchoServer,
}


def running(
    service: str, **limits: float
) -> tuple[UDPServerProtocol, RecordingTransport]:
    """
    The protocol of C{service} with its twistd policy (per-source limits
    off unless given), started on a recording transport.
    """
    server = SERVERS[service]()
    server.policy = SERVICES[service].policy(**{"rate": 0, **limits})  # type: ignore[arg-type]
    server.clock = lambda: NOW
    transport = RecordingTransport(port=5000)
    server.makeConnection(transport)  # type: ignore[arg-type]
    return server, transport


sizes = st.integers(0, MAX_PAYLOAD)
datagrams = st.one_of(
    st.binary(max_size=100),
    st.builds(lambda n, r: r.randbytes(n), sizes, st.randoms(use_true_random=False)),
    st.builds(mutate, st.sampled_from(ALL_SEEDS), st.randoms(use_true_random=False)),
)
hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.ip_addresses(v=6).map(lambda a: f"{a}%eth0"),
    st.text(max_size=40),
)
addresses = st.tuples(hosts, st.integers(0, 65535))


class ProtocolFuzzTests(SynchronousTestCase):
    """
    Every protocol, with its policy, survives anything from anywhere.
    """

    def check(self, service: str, data: bytes, addr: tuple[str, int]) -> None:
        for limits in [{}, {"rate": 1.0, "burst": 1}]:
            server, transport = running(service, **limits)
            server.datagramReceived(data, addr)
            deliver(server, data, addr, NOW)
            counters = server.counters
            self.assertEqual(counters.internalErrors, 0)
            self.assertEqual(counters.received, 2)
            for reply, to in transport.written:
                self.assertEqual(to, addr)
                if service in ("ntp", "echo"):
                    self.assertLessEqual(len(reply), len(data))
                if service == "echo":
                    self.assertEqual(reply, data)

    @FUZZ
    @given(data=datagrams, addr=addresses)
    def test_text(self, data: bytes, addr: tuple[str, int]) -> None:
        self.check("text", data, addr)

    @FUZZ
    @given(data=datagrams, addr=addresses)
    def test_ntp(self, data: bytes, addr: tuple[str, int]) -> None:
        self.check("ntp", data, addr)

    @FUZZ
    @given(data=datagrams, addr=addresses)
    def test_time(self, data: bytes, addr: tuple[str, int]) -> None:
        self.check("time", data, addr)

    @FUZZ
    @given(data=datagrams, addr=addresses)
    def test_daytime(self, data: bytes, addr: tuple[str, int]) -> None:
        self.check("daytime", data, addr)

    @FUZZ
    @given(data=datagrams, addr=addresses)
    def test_echo(self, data: bytes, addr: tuple[str, int]) -> None:
        self.check("echo", data, addr)

    @reportingSeed
    def test_mutations(self) -> None:
        """
        Mutated valid requests, to every protocol, without limits and with
        limits that refuse most of them (so that NTP's Kiss-o'-Death path
        sees them too).
        """
        rng = random.Random(SEED)
        servers = [
            (service, running(service, **limits))
            for service in SERVERS
            for limits in [{}, {"rate": 50.0, "burst": 5}]
        ]
        refusals: list[bytes] = []
        for _, (server, _) in servers:
            refused = server.refused

            def recordRefusal(
                data: bytes, *rest: object, refused=refused
            ) -> bytes | None:
                refusals.append(data)
                return refused(data, *rest)  # type: ignore[arg-type]

            server.refused = recordRefusal  # type: ignore[method-assign]
        for i, data in enumerate(fuzzDatagrams(rng, MUTATIONS)):
            addr = (f"192.0.2.{i % 7}", 1024 + i % 3)
            for service, (server, transport) in servers:
                deliver(server, data, addr, NOW + i * 0.001)
                if service == "ntp":
                    for reply, _ in transport.written:
                        self.assertEqual(len(reply), 48)
                transport.written.clear()
        for service, (server, _) in servers:
            self.assertEqual(server.counters.internalErrors, 0, (service, SEED))
            self.assertEqual(server.counters.received, MUTATIONS)
        self.assertGreater(len(refusals), 0)


class CodecFuzzTests(SynchronousTestCase):
    """
    The codecs, server and client side, raise only their documented errors.
    """

    @reportingSeed
    def test_serverCodecs(self) -> None:
        rng = random.Random(SEED)
        for data in fuzzDatagrams(rng, MUTATIONS):
            with contextlib.suppress(ntp.NTPCodecError):
                ntp.parseRequest(data, rng.choice([None, 123, 40000]))
            kod = ntp.buildKissOfDeath(data, sourcePort=40000)
            if kod is not None:
                self.assertEqual(len(kod), 48)
                self.assertLessEqual(len(kod), len(data))
            with contextlib.suppress(text.TextRequestError, text.RequestTooLarge):
                text.parseRequest(data)
            reply = echo.buildReply(data)
            self.assertIn(reply, (None, data))

    @reportingSeed
    def test_clientCodecs(self) -> None:
        codecs = [
            ntp.NTPClientCodec(),
            ntp.NTPClientCodec(version=3, mode=ntp.Mode.SYMMETRIC_ACTIVE),
            rfc868.TimeClientCodec(),
            daytime.DaytimeClientCodec(),
            echo.EchoClientCodec(),
            TextClientCodec("iso Europe/Paris"),
            TextClientCodec("ctime"),
        ]
        rng = random.Random(SEED)
        replies = [
            ntpPacket(0x24, transmit=0x1111),
            ntpPacket(0x1C, stratum=2),
            b"\x00\x00\x00\x01",
            b"21 NOV 2026 20:53:39 UTC\r\n",
            b"Sat, 21 Nov 2026 20:53:39 +0000\r\n",
            b"61000 26-11-21 20:53:39 00 0 0 50.0 UTC(NIST) *\r\n",
            b"2026-11-21T20:53:39.123456+01:00\n",
            b"1795000000.123456\n",
            b"Sat Nov 21 20:53:39 2026\n",
            b"error: no\n",
        ]
        for _ in range(MUTATIONS // 4):
            data = (
                mutate(rng.choice(replies), rng)
                if rng.randrange(4)
                else rng.randbytes(rng.randrange(600))
            )
            origin = struct.unpack("!Q", data[24:32])[0] if len(data) >= 32 else 0
            for codec in codecs:
                state = codec.buildRequest(NOW)[1]
                if isinstance(codec, ntp.NTPClientCodec):
                    state = origin
                with contextlib.suppress(ReplyMismatch, QueryError):
                    codec.parseReply(data, state, NOW, NOW + 0.01)


class RunningServerFuzzTests(SynchronousTestCase):
    @reportingSeed
    def test_fuzzRunningServer(self) -> None:
        """
        Tens of thousands of random and mutated datagrams to every service of
        a running server (per-source limits off, so that the codecs see them
        all): no error in its log, and every service still answers right.
        """
        ports: dict[str, int] = {}
        for service in SERVERS:
            port = freePort()
            while port in ports.values():
                port = freePort()
            ports[service] = port
        server = TwistdServer(
            [
                "--port", str(ports["text"]),
                "--ntp-port", str(ports["ntp"]),
                "--time-port", str(ports["time"]),
                "--daytime-port", str(ports["daytime"]),
                "--echo-port", str(ports["echo"]),
                "--local-stratum", "2",
                "--timezone", "UTC",
                "--rate", "0",
                "--summary-interval", "1",
            ]
        )  # fmt: skip
        self.addCleanup(server.cleanup)
        server.start(listeners=len(ports))
        rng = random.Random(SEED)
        count = max(4000, MUTATIONS // 2)
        sockets = []
        for i in range(8):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.addCleanup(sock.close)
            sock.bind((f"127.0.40.{i + 1}", 0))
            sock.setblocking(False)
            sockets.append(sock)
        sent = dict.fromkeys(ports, 0)
        pending = 0
        for i, data in enumerate(fuzzDatagrams(rng, count * len(ports))):
            service = list(ports)[i % len(ports)]
            sock = sockets[i % len(sockets)]
            try:
                sock.sendto(data, ("127.0.0.1", ports[service]))
            except BlockingIOError:
                continue
            sent[service] += 1
            pending += len(data) + 512
            if pending > 100_000:
                # Let the server catch up (a full receive buffer would drop
                # datagrams before the server sees them), and drain replies.
                select.select(sockets, [], [], 0.005)
                for ready in sockets:
                    _discard(ready)
                pending = 0

        def received(service: str) -> int:
            found = re.findall(
                rf"udptime {service}: .*totals received=(\d+)", server.log()
            )
            return int(found[-1]) if found else 0

        deadline = time.monotonic() + 20
        while any(received(s) < 0.9 * sent[s] for s in ports):
            self.assertLess(time.monotonic(), deadline, (sent, server.log()[-2000:]))
            time.sleep(0.1)  # polling the log, bounded by the deadline

        self.assertRegex(
            udpQuery(b"iso", "127.0.0.1", ports["text"]),
            rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00\n$",
        )
        reply = ntp.NTPPacket.fromBytes(
            udpQuery(ntpPacket(0x23, transmit=0xABCDEF), "127.0.0.1", ports["ntp"])
        )
        self.assertEqual(
            (reply.mode, reply.stratum, reply.originTimestamp), (4, 2, 0xABCDEF)
        )
        self.assertEqual(len(udpQuery(b"", "127.0.0.1", ports["time"])), 4)
        self.assertRegex(
            udpQuery(b"", "127.0.0.1", ports["daytime"]),
            rb"^\d\d [A-Z]{3} \d{4} \d\d:\d\d:\d\d UTC\r\n$",
        )
        self.assertEqual(
            udpQuery(b"still here", "127.0.0.1", ports["echo"]), b"still here"
        )
        self.assertEqual(server.stop(), 0)
        log = server.log()
        for bad in ["Traceback", "Unhandled", "internalErrors", "failed on a"]:
            self.assertNotIn(bad, log, SEED)


def _discard(sock: socket.socket) -> None:
    while True:
        try:
            sock.recvfrom(65535)
        except BlockingIOError:
            return
