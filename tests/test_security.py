"""
Attacks on a real C{twistd udptime} process over loopback sockets: floods
from one source, floods from many forged sources, amplification, loops,
allow/deny lists and the NTP Kiss-o'-Death.

Each test sends from its own loopback address (127.0.0.0/8 is all
loopback on Linux), so that the per-source limits of one test do not touch
another's.  Floods are bounded in count and time.

Set C{UDPTIME_SECURITY_REPORT=1} to print what the tests measured.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support import (
    TwistdServer,
    freePort,
    missing,
    startOnFreePorts,
    udpQuery,
    waitFor,
)
from udptime import ntp, policy, roughtime, services
from udptime.roughtimekeys import writeNewKey

SERVICES = tuple(services.SERVICES)
PORT_OPTIONS = {
    name: f"--{service.portOption}" for name, service in services.SERVICES.items()
}
HEADERS = 28
"""Bytes of IPv4 and UDP headers around every datagram."""

BURST = policy.DEFAULT_BURST
RATE = policy.DEFAULT_RATE
SECURITY_PAGE = Path(__file__).resolve().parent.parent / "docs" / "security.rst"

ISO = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00\n$")
DAYTIME = re.compile(rb"^\d\d [A-Z]{3} \d{4} \d\d:\d\d:\d\d UTC\r\n$")


def report(what: str, **values: object) -> None:
    """
    Print a measurement when C{UDPTIME_SECURITY_REPORT} is set.
    """
    if os.environ.get("UDPTIME_SECURITY_REPORT"):
        fields = " ".join(f"{k}={v}" for k, v in values.items())
        sys.stderr.write(f"\n[security] {what}: {fields}\n")


def ntpRequest(transmit: int, version: int = 4, extension: bool = False) -> bytes:
    """
    An NTP client request (mode 3) with transmit timestamp C{transmit},
    and a 28-byte extension field of an unknown type if C{extension}.
    """
    packet = ntp.NTPPacket(
        leap=0, version=version, mode=3, poll=6, transmitTimestamp=transmit
    ).toBytes()
    if extension:
        packet += struct.pack("!HH", 0x7F01, 28) + bytes(24)
    return packet


def startServer(
    *extra: str, services: Iterable[str] = SERVICES
) -> tuple[TwistdServer, dict[str, int]]:
    """
    A twistd process serving C{services}, each on its own free port, with
    summaries every second.
    """
    names = list(services)

    def arguments(ports: list[int]) -> list[str]:
        arguments = ["--timezone", "UTC", "--summary-interval", "1"]
        for service, port in zip(names, ports, strict=True):
            arguments += [PORT_OPTIONS[service], str(port)]
        if "text" not in names:
            arguments += ["--port", "0"]
        if "ntp" in names or "roughtime" in names:
            arguments += ["--local-stratum", "2"]
        return [*arguments, *extra]

    def prepare(server: TwistdServer) -> None:
        if "roughtime" in names:
            key = os.path.join(server.directory, "roughtime.key")
            writeNewKey(key)
            server.arguments += ["--roughtime-key", key]

    server, ports = startOnFreePorts(
        len(names), arguments, listeners=len(names), prepare=prepare
    )
    return server, dict(zip(names, ports, strict=True))


def source(host: str, port: int = 0) -> socket.socket:
    """
    A non-blocking UDP socket bound to C{(host, port)}.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def sourceOnPort(port: int, last: int) -> socket.socket:
    """
    A non-blocking UDP socket bound to source port C{port} on an address
    127.14.X.C{last}, X picked at random among those where the port is free
    (another run of the suite on the same machine may hold that port on
    some address at the same moment).
    """
    for _ in range(50):
        try:
            return source(f"127.14.{random.randrange(1, 255)}.{last}", port)
        except OSError as failure:
            if failure.errno != errno.EADDRINUSE:
                raise
    raise AssertionError(f"port {port} is taken on 50 addresses in 127.14.0.0/16")


def drain(sock: socket.socket, replies: list[bytes], wait: float) -> None:
    """
    Wait up to C{wait} seconds for C{sock} to be readable, then read every
    datagram waiting on it into C{replies}.
    """
    readable, _, _ = select.select([sock], [], [], wait)
    while readable:
        try:
            data, _ = sock.recvfrom(65535)
        except BlockingIOError:
            return
        replies.append(data)


def flood(
    sock: socket.socket,
    payloads: Iterable[bytes],
    destination: tuple[str, int],
    batch: int = 100,
    pause: float = 0.0,
    quiet: float = 0.3,
) -> tuple[list[bytes], float, int]:
    """
    Send every payload to C{destination}, reading replies between batches
    of C{batch} (waiting up to C{pause} seconds for them), then until none
    came for C{quiet} seconds.

    @return: the replies, the seconds from the first send to the end, and
        the bytes sent (payloads only).
    """
    replies: list[bytes] = []
    sent = 0
    start = time.monotonic()
    for count, payload in enumerate(payloads, 1):
        sock.sendto(payload, destination)
        sent += len(payload)
        if count % batch == 0:
            drain(sock, replies, pause)
    seen = -1
    while seen != len(replies):
        seen = len(replies)
        drain(sock, replies, quiet)
    return replies, time.monotonic() - start, sent


def summaryTotals(log: str, service: str) -> dict[str, int]:
    """
    The counters and gauges of the last summary line C{service} logged.
    """
    lines = re.findall(rf"udptime {service}: .*; totals .*", log)
    if not lines:
        return {}
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])}


def countedTotals(server: TwistdServer, service: str, answered: int) -> dict[str, int]:
    """
    The totals of the first summary of C{service} that counts at least
    C{answered} answers (waiting for it, bounded).
    """

    def totals() -> dict[str, int] | None:
        found = summaryTotals(server.log(), service)
        return found if found.get("answered", 0) >= answered else None

    return waitFor(totals, f"{answered} {service} answers counted", timeout=60.0)


def awaitReply(sock: socket.socket, timeout: float = 30.0) -> list[bytes]:
    """
    The replies that reach C{sock}: waiting up to C{timeout} seconds for
    the first (a loaded machine may take long), then for any more until
    none came for a fifth of a second.
    """
    replies: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not replies and time.monotonic() < deadline:
        drain(sock, replies, 0.1)
    seen = -1
    while seen != len(replies):
        seen = len(replies)
        drain(sock, replies, 0.2)
    return replies


def documentedFactors() -> dict[str, float]:
    """
    The worst-case amplification factor of each service, as the manual's
    security page states it.
    """
    found = {}
    for line in SECURITY_PAGE.read_text(encoding="utf-8").splitlines():
        match = re.match(
            rf"^({'|'.join(SERVICES)})\s{{2,}}.*?\s{{2,}}(\d+\.\d\d)\s{{2,}}", line
        )
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


WORST_REQUESTS: dict[str, list[bytes]] = {
    # The smallest requests, and the ones with the longest error replies.
    "text": [
        b"",
        b"x",
        b"\xff",
        b"month",
        b"month 0",
        b"month \x7f",
        b"month " + b"\x01" * 9,
        b"month " + b"\x01" * 32,
        b"month " + b"\x7f" * 33,
        b"month " + "\U000e0001".encode() * 33,
        b"iso " + b"\x01" * 33,
        b"unix a b",
    ],
    "ntp": [ntpRequest(1), ntpRequest(2, version=3), ntpRequest(3, extension=True)],
    "time": [b"", b"x"],
    "daytime": [b"", b"x"],
    "echo": [b"", b"x", b"x" * 1472],
    # The smallest request answered: 1036 bytes, naming no server.
    "roughtime": [roughtime.buildRequest(None).packet],
}


class FloodTests(SynchronousTestCase):
    """
    One server with every service, attacked by floods from single sources.
    """

    def setUp(self) -> None:
        self.server, self.ports = startServer()
        self.addCleanup(self.server.cleanup)

    def test_floodFromOneSource(self) -> None:
        """
        Thousands of requests from one source get at most burst + rate * t
        replies, while a well-behaved client keeps getting answers, and the
        log says so in a few lines.
        """
        destination = ("127.0.0.1", self.ports["text"])
        result: dict[str, object] = {}
        flooder = source("127.0.10.1")
        self.addCleanup(flooder.close)

        def attack() -> None:
            result["flood"] = flood(
                flooder, (b"time" for _ in range(30_000)), destination, pause=0.005
            )

        thread = threading.Thread(target=attack)
        thread.start()
        queries = 0
        answers = []
        try:
            # One query every 0.1 s while the flood lasts, each with up to
            # five tries (a full socket buffer loses datagrams before the
            # server sees them).
            while thread.is_alive() and queries < 30:
                queries += 1
                for _ in range(5):
                    try:
                        reply = udpQuery(
                            b"iso", *destination, timeout=0.3, source=("127.0.10.2", 0)
                        )
                    except TimeoutError:
                        continue
                    answers.append(reply)
                    break
                thread.join(0.1)
        finally:
            thread.join(60)
        replies, elapsed, _ = result["flood"]  # type: ignore[misc]
        report(
            "text flood",
            sent=30_000,
            replies=len(replies),
            seconds=round(elapsed, 2),
            goodQueries=queries,
            goodAnswers=len(answers),
        )
        self.assertGreaterEqual(len(replies), BURST)
        self.assertLessEqual(len(replies), BURST + RATE * elapsed)
        self.assertGreaterEqual(queries, 3)
        # The polite client is never over its rate, so the server answers
        # every query it reads; on a busy host the kernel may drop some
        # datagrams, of the flood and of the polite client alike, before the
        # server reads them (each query has five tries).
        self.assertGreaterEqual(len(answers), queries // 2)
        for reply in answers + replies:
            self.assertRegex(reply, ISO)
        waitFor(
            what="a summary of the flood",
            check=lambda: (
                summaryTotals(self.server.log(), "text").get("limited", 0) >= 5_000
            ),
        )
        log = self.server.log()
        self.assertNotIn("Traceback", log)
        self.assertLess(len(log.splitlines()), 200)

    def test_ntpFloodKissOfDeath(self) -> None:
        """
        An NTP flood from one source gets at most burst + rate * t replies
        and at most one Kiss-o'-Death RATE per 8 seconds: LI 3, stratum 0,
        its origin, receive and transmit timestamps all the request's
        transmit timestamp.
        """
        destination = ("127.0.0.1", self.ports["ntp"])
        sock = source("127.0.11.1")
        self.addCleanup(sock.close)
        transmits = {0x1000_0000_0000_0000 + i for i in range(3000)}
        replies, elapsed, _ = flood(
            sock, (ntpRequest(t) for t in sorted(transmits)), destination
        )
        packets = [ntp.NTPPacket.fromBytes(reply) for reply in replies]
        kods = [p for p in packets if p.stratum == 0]
        served = [p for p in packets if p.stratum != 0]
        report(
            "ntp flood",
            sent=3000,
            served=len(served),
            kods=len(kods),
            seconds=round(elapsed, 2),
        )
        self.assertGreaterEqual(len(served), BURST)
        # What the server decided: beyond the burst and the rate, only the
        # requests it let through at random (the leak, a quarter of those
        # over the limit).
        totals = countedTotals(self.server, "ntp", len(served))
        report("ntp flood decisions", **totals)
        self.assertLessEqual(len(served), BURST + RATE * elapsed + totals["leaked"])
        leakedShare = totals["leaked"] / (totals["leaked"] + totals["limited"])
        self.assertTrue(0.15 <= leakedShare <= 0.35, leakedShare)
        self.assertGreaterEqual(len(kods), 1)
        self.assertLessEqual(len(kods), 1 + elapsed / policy.DEFAULT_KOD_INTERVAL)
        for reply, packet in zip(replies, packets, strict=True):
            self.assertEqual(len(reply), 48)
            self.assertIn(packet.originTimestamp, transmits)
            if packet.stratum == 0:
                self.assertEqual(
                    (packet.leap, packet.mode, packet.refid), (3, 4, b"RATE")
                )
                self.assertEqual(packet.receiveTimestamp, packet.originTimestamp)
                self.assertEqual(packet.transmitTimestamp, packet.originTimestamp)
            else:
                self.assertEqual((packet.leap, packet.mode), (0, 4))
        waitFor(
            what="the KoD counted",
            check=lambda: (
                summaryTotals(self.server.log(), "ntp").get("kissed") == len(kods)
            ),
        )

    def test_amplification(self) -> None:
        """
        For every service: no single request draws more bytes (with IPv4
        and UDP headers) than the manual's factor says, and a flood of the
        worst requests gets at most burst + rate * t replies, whose bytes
        stay within that factor of the flood's.
        """
        documented = documentedFactors()
        self.assertEqual(set(documented), set(SERVICES))
        for number, service in enumerate(SERVICES):
            destination = ("127.0.0.1", self.ports[service])
            worst = 0.0
            worstRequest = b""
            largest = 0
            for index, request in enumerate(WORST_REQUESTS[service]):
                sock = source(f"127.0.12.{number * 20 + index + 1}")
                try:
                    sock.sendto(request, destination)
                    replies = awaitReply(sock)
                finally:
                    sock.close()
                self.assertEqual(len(replies), 1, (service, request))
                factor = (HEADERS + len(replies[0])) / (HEADERS + len(request))
                largest = max(largest, len(replies[0]))
                if factor > worst:
                    worst, worstRequest = factor, request
            self.assertLessEqual(worst, documented[service], service)

            # What the server decided about a flood of the worst request,
            # from its counters: the answers it sent from the flood's start
            # to the time its summary is read (a bound that holds whatever
            # the machine's load, and whatever the client loses).
            before = countedTotals(self.server, service, len(WORST_REQUESTS[service]))
            sock = source(f"127.0.13.{number + 1}")
            self.addCleanup(sock.close)
            count = 2000
            started = time.monotonic()
            replies, elapsed, sent = flood(
                sock, (worstRequest for _ in range(count)), destination
            )
            repliedBytes = sum(HEADERS + len(r) for r in replies)
            if service == "ntp":
                replies = [r for r in replies if r[1] != 0]  # KoDs aside
            floodFactor = repliedBytes / (sent + HEADERS * count)
            after = countedTotals(
                self.server, service, before["answered"] + len(replies)
            )
            seconds = time.monotonic() - started
            answered = after["answered"] - before["answered"]
            # NTP answers a quarter of the requests over the limit anyway,
            # at random (the leak): as many as the server says it did.
            leaked = after.get("leaked", 0) - before.get("leaked", 0)
            report(
                f"{service} amplification",
                worstRequest=len(worstRequest),
                worstFactor=round(worst, 2),
                largestReply=largest,
                floodReplies=len(replies),
                floodAnswered=answered,
                floodLeaked=leaked,
                floodFactor=round(floodFactor, 4),
                seconds=round(elapsed, 2),
            )
            self.assertLessEqual(answered, BURST + RATE * seconds + leaked, service)
            self.assertLessEqual(floodFactor, documented[service], service)

    def test_loopPorts(self) -> None:
        """
        Datagrams from source ports 7 and 19 get no reply from the echo,
        daytime, time and text services; from any other port they do.
        """
        if os.geteuid() != 0:
            missing("binding source ports 7 and 19 needs root")
        for number, service in enumerate(["echo", "daytime", "time", "text"]):
            destination = ("127.0.0.1", self.ports[service])
            for port in [7, 19]:
                sock = sourceOnPort(port, number + 1)
                host = sock.getsockname()[0]
                try:
                    sock.sendto(b"loop?", destination)
                    replies: list[bytes] = []
                    drain(sock, replies, 0.3)
                finally:
                    sock.close()
                self.assertEqual(replies, [], (service, port))
            # From the address that just sent from port 19, another port
            # is answered.
            udpQuery(b"ok?", *destination, source=(host, 0))
        waitFor(
            what="the loops counted",
            check=lambda: all(
                summaryTotals(self.server.log(), s).get("looped") == 2
                for s in ["echo", "daytime", "time", "text"]
            ),
        )


class ForgedFloodTests(SynchronousTestCase):
    """
    A flood from 100 000 distinct source addresses, as from forged ones.
    """

    def test_forgedSources(self) -> None:
        """
        100 000 sources, each bound to its own address in 127.0.0.0/8, send
        one request each to a server whose table holds 20 000: the table
        stays at its bound, every new source evicting the oldest, every
        request read is answered, and the server's resident memory grows by
        less than 16 MB.

        What is asserted is what the server decided (its counters), not
        how many datagrams a busy host delivered: the kernel may drop some
        when the server falls behind.
        """
        server, ports = startServer("--max-clients", "20000", services=["time"])
        self.addCleanup(server.cleanup)
        destination = ("127.0.0.1", ports["time"])
        self.assertEqual(len(answered(b"", destination)), 4)
        before = residentMemory(server.pid)
        total = 100_000
        batch = 200
        start = time.monotonic()
        deadline = start + 300.0
        for first in range(0, total, batch):
            if time.monotonic() > deadline:
                self.fail(f"the flood took over 300 s; {first} of {total} sent")
            last = None
            for i in range(first, first + batch):
                address = 0x7F_40_00_00 + i
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((socket.inet_ntoa(struct.pack("!I", address)), 0))
                sock.sendto(b"", destination)
                if last is not None:
                    last.close()
                last = sock
            # The batch's last source waits a moment for its reply, so that
            # the server keeps up with the flood (bounded: a lost reply only
            # lets the next batch come sooner).
            assert last is not None
            last.settimeout(5.0)
            with contextlib.suppress(TimeoutError):
                last.recvfrom(16)  # or not: the next batch comes sooner
            last.close()
        elapsed = time.monotonic() - start
        after = residentMemory(server.pid)
        self.assertEqual(len(answered(b"", destination)), 4)
        self.assertEqual(server.stop(), 0)
        totals = summaryTotals(server.log(), "time")
        report(
            "forged flood",
            sources=total,
            received=totals.get("received"),
            answered=totals.get("answered"),
            clients=totals.get("clients"),
            evicted=totals.get("evicted"),
            rssBeforeKiB=before // 1024,
            rssGrowthKiB=(after - before) // 1024,
            seconds=round(elapsed, 2),
        )
        received = totals["received"]
        # Enough of the flood reached the server for the table to fill and
        # turn over more than twice.
        self.assertGreaterEqual(received, 20_000 + 50_000)
        self.assertEqual(totals["clients"], 20_000)
        # Every datagram read from a new source evicted the oldest entry
        # (the queries from 127.0.0.1 come from a source evicted between
        # them; a stray datagram from a source still in the table evicts
        # nothing).
        self.assertLessEqual(totals["evicted"], received - 20_000)
        self.assertGreaterEqual(totals["evicted"], received - 20_000 - received // 1000)
        # Each source sent one request: none was over its limit, so every
        # one read was answered (or its reply refused by the kernel).
        self.assertEqual(
            totals.get("answered", 0) + totals.get("sendFailed", 0), received
        )
        self.assertLess(after - before, 16 * 1024 * 1024)


def answered(payload: bytes, destination: tuple[str, int], tries: int = 10) -> bytes:
    """
    The reply to C{payload} from C{destination}, asked up to C{tries}
    times (a busy server, or host, may lose a datagram or take a while).

    @raise TimeoutError: no try was answered.
    """
    for _ in range(tries - 1):
        try:
            return udpQuery(payload, *destination, timeout=2.0, source=("127.0.0.1", 0))
        except TimeoutError:
            continue
    return udpQuery(payload, *destination, timeout=2.0, source=("127.0.0.1", 0))


def residentMemory(pid: int) -> int:
    """
    The resident memory of process C{pid}, in bytes.
    """
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class GlobalCapTests(SynchronousTestCase):
    def test_globalRate(self) -> None:
        """
        With --global-rate, floods from several sources together get at most
        that many replies per second (one second's worth at once), even with
        per-source limits off.
        """
        server, ports = startServer(
            "--global-rate", "10", "--rate", "0", services=["time", "daytime"]
        )
        self.addCleanup(server.cleanup)
        sockets = [source(f"127.0.15.{i + 1}") for i in range(4)]
        for sock in sockets:
            self.addCleanup(sock.close)
        replies: list[bytes] = []
        start = time.monotonic()
        for _ in range(100):
            for i, sock in enumerate(sockets):
                service = "time" if i % 2 else "daytime"
                sock.sendto(b"", ("127.0.0.1", ports[service]))
        for sock in sockets:
            drain(sock, replies, 0.3)

        # What the server decided, from its summaries (not what a loaded
        # host delivered in time): one second's worth answered at once,
        # and no more than the cap allows in the time until it is read.
        def answeredTogether() -> int:
            return sum(
                summaryTotals(server.log(), service).get("answered", 0)
                for service in ("time", "daytime")
            )

        waitFor(
            lambda: answeredTogether() >= max(10, len(replies)),
            "the server to count its answers",
            timeout=60.0,
        )
        answered = answeredTogether()
        elapsed = time.monotonic() - start
        report(
            "global cap",
            sent=400,
            replies=len(replies),
            answered=answered,
            seconds=round(elapsed, 2),
        )
        self.assertLessEqual(answered, 10 + 10 * elapsed)


class AccessListTests(SynchronousTestCase):
    """
    --allow and --deny, for every service and per service.
    """

    def test_allowDeny(self) -> None:
        server, ports = startServer(
            "--deny", "127.0.20.1",
            "--deny", "text=::1",
            "--allow", "echo=127.0.21.0/24",
            "--deny", "ntp=127.0.22.0/24",
            "--allow", "ntp=127.0.22.5",
            services=["text", "echo", "ntp"],
        )  # fmt: skip
        self.addCleanup(server.cleanup)
        cases = [
            ("text", "127.0.20.1", False),
            ("text", "::1", False),
            ("text", "127.0.20.2", True),
            ("echo", "127.0.21.7", True),
            ("echo", "127.0.20.2", False),
            ("echo", "127.0.20.1", False),
            ("ntp", "127.0.22.1", False),
            ("ntp", "127.0.22.5", True),
            ("ntp", "127.0.23.1", False),  # an --allow makes an allow list
            ("ntp", "127.0.20.1", False),
        ]
        for service, host, served in cases:
            payload = ntpRequest(7) if service == "ntp" else b"hello"
            target = "::1" if ":" in host else "127.0.0.1"
            try:
                udpQuery(payload, target, ports[service], 0.5, (host, 0))
            except TimeoutError:
                answered = False
            else:
                answered = True
            self.assertEqual(answered, served, (service, host))
        self.assertEqual(server.stop(), 0)
        log = server.log()
        self.assertEqual(summaryTotals(log, "text")["denied"], 2)
        self.assertEqual(summaryTotals(log, "echo")["denied"], 2)
        self.assertEqual(summaryTotals(log, "ntp")["denied"], 3)


def forgeUDP(
    source: tuple[str, int], destination: tuple[str, int], payload: bytes
) -> None:
    """
    Send one IPv4 UDP datagram with any source address and port, through a
    raw socket (root only).
    """
    udp = struct.pack("!HHHH", source[1], destination[1], 8 + len(payload), 0)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp) + len(payload),
        0,
        0,
        64,
        socket.IPPROTO_UDP,
        0,  # the kernel fills the checksum in
        socket.inet_aton(source[0]),
        socket.inet_aton(destination[0]),
    )
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.sendto(header + udp + payload, (destination[0], 0))


class EchoLoopTests(SynchronousTestCase):
    def test_twoEchoServices(self) -> None:
        """
        A datagram forged to one udptime echo service from another's address
        and port is echoed once, echoed back once, and then dropped: two
        echo services cannot ping-pong.
        """
        if os.geteuid() != 0:
            missing("forging a source address needs a raw socket (root)")
        first = TwistdServer(
            ["--port", "0", "--echo-port", str(freePort()), "--interface", "127.0.30.1",
             "--summary-interval", "1"]
        )  # fmt: skip
        second = TwistdServer(
            ["--port", "0", "--echo-port", str(freePort()), "--interface", "127.0.30.2",
             "--summary-interval", "1"]
        )  # fmt: skip
        self.addCleanup(first.cleanup)
        self.addCleanup(second.cleanup)
        first.start()
        second.start()
        firstAddr = ("127.0.30.1", int(first.arguments[3]))
        secondAddr = ("127.0.30.2", int(second.arguments[3]))
        forgeUDP(secondAddr, firstAddr, b"ping-pong?")
        waitFor(
            what="the loop to be caught",
            check=lambda: summaryTotals(first.log(), "echo").get("looped") == 1,
        )
        self.assertEqual(udpQuery(b"still there?", *firstAddr), b"still there?")
        self.assertEqual(first.stop(), 0)
        self.assertEqual(second.stop(), 0)
        firstTotals = summaryTotals(first.log(), "echo")
        secondTotals = summaryTotals(second.log(), "echo")
        report("echo loop", first=firstTotals, second=secondTotals)
        self.assertEqual((firstTotals["received"], firstTotals["answered"]), (3, 2))
        self.assertEqual((secondTotals["received"], secondTotals["answered"]), (1, 1))

    def test_servicesOfOneServer(self) -> None:
        """
        A datagram forged to one of a server's services from the port of
        another, on ports that are not the well-known ones, is dropped as a
        loop: a server's services never answer each other.  Per-client
        limits are off, so nothing else would stop such a loop.
        """
        if os.geteuid() != 0:
            missing("forging a source address needs a raw socket (root)")
        host = "127.0.30.3"
        numbers: set[int] = set()
        while len(numbers) < 3:
            numbers.add(freePort())
        ports = dict(zip(["text", "daytime", "echo"], sorted(numbers), strict=True))
        server = TwistdServer(
            ["--port", str(ports["text"]), "--daytime-port", str(ports["daytime"]),
             "--echo-port", str(ports["echo"]), "--interface", host, "--rate", "0",
             "--summary-interval", "1"]
        )  # fmt: skip
        self.addCleanup(server.cleanup)
        server.start(listeners=3)
        for source, target in [
            ("text", "echo"),
            ("echo", "daytime"),
            ("daytime", "text"),
        ]:
            forgeUDP((host, ports[source]), (host, ports[target]), b"loop?")
        waitFor(
            what="the three loops to be caught",
            check=lambda: all(
                summaryTotals(server.log(), name).get("looped") == 1 for name in ports
            ),
        )
        self.assertEqual(
            udpQuery(b"still there?", host, ports["echo"]), b"still there?"
        )
        self.assertEqual(server.stop(), 0)
        for name in ports:
            totals = summaryTotals(server.log(), name)
            report(f"{name} loop", **totals)
            answered = 1 if name == "echo" else 0
            self.assertEqual(
                tuple(totals.get(k, 0) for k in ["received", "looped", "answered"]),
                (1 + answered, 1, answered),
                name,
            )
