"""
Tests for L{udptime.server.NTPServer} (driven through C{datagramReceived}
with a recording transport and an injected clock) and for the NTP options
of the twistd plugin.
"""

from __future__ import annotations

from collections.abc import Iterator

from twisted.logger import Logger
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.support import RecordingTransport, deliver
from udptime import ntp, tap
from udptime.clock import ClockSource, KernelClock, Leap, unixToNTP64
from udptime.ntp import NTPPacket
from udptime.policy import Policy
from udptime.server import NTPServer
from udptime.services import SERVICES

TRANSMIT = bytes.fromhex("8877665544332211")
CLIENT = ("192.0.2.7", 40123)
UNSYNCED = KernelClock(synchronised=False, leap=Leap.NONE, maxError=16.0, estError=16.0)


def request(version: int = 4, mode: int = 3, transmit: bytes = TRANSMIT) -> bytes:
    return bytes([(version << 3) | mode, 0, 6, 0]) + bytes(36) + transmit


class SteppingClock:
    """
    A wall clock whose readings advance by C{step} each time it is read.
    """

    def __init__(self, start: float, step: float) -> None:
        self.readings: Iterator[float] = (start + i * step for i in range(10**9))

    def __call__(self) -> float:
        return next(self.readings)


def server(
    localStratum: int | None = 10,
    kernel: KernelClock | None = UNSYNCED,
    clock: SteppingClock | None = None,
    policy: Policy | None = None,
) -> tuple[NTPServer, RecordingTransport]:
    protocol = NTPServer(
        clock=clock or SteppingClock(1_800_000_000.0, 0.25),
        clockSource=ClockSource(localStratum, kernel=lambda: kernel, precision=-32),
        policy=policy,
    )
    transport = RecordingTransport()
    protocol.makeConnection(transport)  # type: ignore[arg-type]
    return protocol, transport


class NTPServerTests(SynchronousTestCase):
    """
    L{NTPServer} answers NTP client requests with the codec and the clock
    state, and drops everything else.
    """

    def test_reply(self) -> None:
        """
        A client request gets a 48-byte server reply sent to its source:
        the receive timestamp is the time it arrived, the transmit
        timestamp a later reading of the clock, the origin its transmit
        timestamp, and the clock state as the clock source says.
        """
        protocol, transport = server(clock=SteppingClock(1_800_000_000.0, 0.25))
        # The first reading went to the clock source as the service started.
        protocol.datagramReceived(request(), CLIENT)
        [(data, addr)] = transport.written
        self.assertEqual(addr, CLIENT)
        packet = NTPPacket.fromBytes(data)
        self.assertEqual(len(data), 48)
        self.assertEqual((packet.leap, packet.version, packet.mode), (0, 4, 4))
        self.assertEqual((packet.stratum, packet.refid), (10, b"LOCL"))
        self.assertEqual(packet.originTimestamp, int.from_bytes(TRANSMIT))
        self.assertEqual(packet.receiveTimestamp, unixToNTP64(1_800_000_000.25))
        self.assertEqual(packet.transmitTimestamp, unixToNTP64(1_800_000_000.5))
        self.assertEqual(packet.referenceTimestamp, unixToNTP64(1_800_000_000.0))
        self.assertEqual(packet.precision, -32)
        self.assertEqual(protocol.counters.answered, 1)

    def test_receivedArgument(self) -> None:
        """
        A port that knows the kernel's receive time passes it in: it is the
        receive timestamp.
        """
        protocol, transport = server(clock=SteppingClock(1_800_000_000.0, 1.0))
        deliver(protocol, request(), CLIENT, 1_799_999_999.5)
        packet = NTPPacket.fromBytes(transport.written[0][0])
        self.assertEqual(packet.receiveTimestamp, unixToNTP64(1_799_999_999.5))
        self.assertEqual(packet.transmitTimestamp, unixToNTP64(1_800_000_001.0))

    def test_symmetric(self) -> None:
        """
        A symmetric active request from port 123 gets a symmetric passive
        reply.
        """
        protocol, transport = server()
        protocol.datagramReceived(request(3, 1), ("192.0.2.8", 123))
        self.assertEqual(transport.written[0][0][0], (3 << 3) | 2)

    def test_unsynchronised(self) -> None:
        """
        Without a local stratum, this unsynchronised kernel makes replies
        say so: LI 3, stratum 0.
        """
        protocol, transport = server(localStratum=None)
        protocol.datagramReceived(request(), CLIENT)
        packet = NTPPacket.fromBytes(transport.written[0][0])
        self.assertEqual((packet.leap, packet.stratum), (3, 0))

    def test_ipv6(self) -> None:
        """
        The reply goes to the address exactly as received.
        """
        protocol, transport = server()
        for addr in (("::ffff:127.0.0.1", 40000), ("::1", 40001)):
            protocol.datagramReceived(request(), addr)
        self.assertEqual(
            [addr for _, addr in transport.written],
            [("::ffff:127.0.0.1", 40000), ("::1", 40001)],
        )

    def test_dropped(self) -> None:
        """
        Malformed datagrams and packets the server does not answer are
        counted and dropped, never raised.
        """
        protocol, transport = server()
        for data in (b"", b"x" * 47, request() + b"\0"):
            protocol.datagramReceived(data, CLIENT)
        for data in (
            request(mode=7),
            request(mode=6),
            request(mode=4),
            request(version=5),
            request() + b"\0\0\0\1" + bytes(16),
        ):
            protocol.datagramReceived(data, CLIENT)
        self.assertEqual(transport.written, [])
        counters = protocol.counters
        self.assertEqual((counters.malformed, counters.dropped), (3, 5))
        self.assertEqual((counters.received, counters.internalErrors), (8, 0))

    def test_droppedLoggedBounded(self) -> None:
        """
        Dropped datagrams are logged at a bounded rate.
        """
        logged: list[dict[str, object]] = []
        self.patch(NTPServer, "log", Logger(observer=logged.append))
        protocol, _ = server(clock=SteppingClock(1_800_000_000.0, 0.0))
        for _ in range(200):
            protocol.datagramReceived(b"short", CLIENT)
        self.assertGreater(len(logged), 0)
        self.assertLess(len(logged), 20)
        self.assertIn("at least 48 bytes", str(logged[0]["reason"]))
        self.assertEqual(logged[0]["addr"], CLIENT)

    def test_refused(self) -> None:
        """
        L{NTPServer.refused} gives a KoD RATE for a client request and
        nothing for other datagrams.
        """
        protocol, _ = server()
        kiss = protocol.refused(request(), CLIENT, 1_800_000_000.0)
        assert kiss is not None
        packet = NTPPacket.fromBytes(kiss)
        self.assertEqual((packet.leap, packet.stratum, packet.refid), (3, 0, b"RATE"))
        self.assertEqual(kiss[24:48], TRANSMIT * 3)
        self.assertIsNone(protocol.refused(request(mode=7), CLIENT, 0.0))
        self.assertIsNone(protocol.refused(b"", CLIENT, 0.0))

    def test_kissWhenLimited(self) -> None:
        """
        With the twistd plugin's NTP policy, a client over its rate gets a
        KoD (at a bounded rate: one, as the clock stands still) instead of a
        reply; its other refused requests get nothing.
        """
        policy = SERVICES["ntp"].policy(rate=1.0, burst=2, leak=0.0)
        protocol, transport = server(
            clock=SteppingClock(1_800_000_000.0, 0.0), policy=policy
        )
        for _ in range(10):
            protocol.datagramReceived(request(), CLIENT)
        replies = [NTPPacket.fromBytes(data) for data, _ in transport.written]
        kisses = [p for p in replies if p.stratum == 0 and p.refid == b"RATE"]
        self.assertEqual(len(replies) - len(kisses), 2)
        self.assertEqual(len(kisses), protocol.counters.kissed)
        self.assertEqual(len(kisses), 1)
        self.assertEqual(protocol.counters.limited, 8)

    def test_followsClockState(self) -> None:
        """
        Plain and other requests alike are answered with the clock state of
        their receive time: the kernel is read once per cache interval of
        receive times, and again when they go back, and a change of the
        kernel's state shows in the next reply after the interval.
        """
        synced = KernelClock(
            synchronised=True, leap=Leap.NONE, maxError=0.0, estError=0.0
        )
        kernel = [UNSYNCED]
        reads: list[KernelClock] = []

        def readKernel() -> KernelClock:
            reads.append(kernel[0])
            return kernel[0]

        protocol = NTPServer(
            clock=SteppingClock(1_800_000_000.0, 0.0),
            clockSource=ClockSource(
                kernel=readKernel, precision=-32, cacheInterval=1.0
            ),
        )
        transport = RecordingTransport()
        protocol.makeConnection(transport)  # type: ignore[arg-type]
        self.assertEqual(len(reads), 1)

        def stratum(data: bytes, received: float) -> int:
            deliver(protocol, data, CLIENT, received)
            return NTPPacket.fromBytes(transport.written[-1][0]).stratum

        plain, symmetric = request(), request(mode=1)
        served = protocol.clockSource.kernelStratum
        self.assertEqual(stratum(plain, 1_800_000_000.5), 0)
        kernel[0] = synced
        self.assertEqual(stratum(plain, 1_800_000_000.9), 0)
        self.assertEqual(stratum(symmetric, 1_800_000_000.95), 0)
        self.assertEqual(len(reads), 1)
        self.assertEqual(stratum(plain, 1_800_000_001.0), served)
        self.assertEqual(len(reads), 2)
        kernel[0] = UNSYNCED
        self.assertEqual(stratum(plain, 1_800_000_001.5), served)
        self.assertEqual(stratum(plain, 1_799_999_999.0), 0)
        self.assertEqual(len(reads), 3)
        self.assertEqual(stratum(symmetric, 1_799_999_999.5), 0)
        self.assertEqual(len(reads), 3)

    def test_defaultClockSource(self) -> None:
        """
        By default the server follows the kernel and claims nothing more.
        """
        protocol = NTPServer()
        self.assertIsNone(protocol.clockSource.localStratum)
        self.assertEqual(protocol.minPoll, ntp.MIN_POLL)


class OptionsTests(SynchronousTestCase):
    """
    The NTP options of C{twistd udptime}.
    """

    def parse(self, *arguments: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(arguments))
        return options

    def test_ntpPort(self) -> None:
        """
        --ntp-port turns the NTP service on; it is off by default.
        """
        self.assertNotIn("ntp", self.parse().enabledPorts())
        options = self.parse("--ntp-port", "11123")
        self.assertEqual(options.enabledPorts()["ntp"], 11123)
        self.assertIsNone(options["local-stratum"])
        self.assertNotIn("ntp", self.parse("--ntp-port", "0").enabledPorts())

    def test_localStratum(self) -> None:
        """
        --local-stratum takes 1 to 15, --refid 1 to 4 printable ASCII
        characters.
        """
        options = self.parse(
            "--ntp-port", "11123", "--local-stratum", "10", "--refid", "GPS"
        )
        self.assertEqual((options["local-stratum"], options["refid"]), (10, b"GPS"))
        options = self.parse("--ntp-port", "11123", "--local-stratum", "1")
        self.assertEqual(options["refid"], b"LOCL")

    def test_bad(self) -> None:
        """
        Bad values are usage errors.
        """
        for arguments in [
            ("--ntp-port", "123", "--local-stratum", "0"),
            ("--ntp-port", "123", "--local-stratum", "16"),
            ("--ntp-port", "123", "--local-stratum", "ten"),
            ("--ntp-port", "123", "--local-stratum", "5", "--refid", ""),
            ("--ntp-port", "123", "--local-stratum", "5", "--refid", "LOCAL"),
            ("--ntp-port", "123", "--local-stratum", "5", "--refid", "A B"),
            ("--ntp-port", "123", "--local-stratum", "5", "--refid", "GPSé"),
            ("--ntp-port", "123", "--refid", "GPS"),
            (
                "--local-stratum",
                "10",
            ),
            ("--ntp-port", "70000"),
            ("--ntp-port", "5000"),
        ]:
            with self.subTest(arguments=arguments):
                self.assertRaises(usage.UsageError, self.parse, *arguments)

    def test_makeService(self) -> None:
        """
        The service tree has an NTP listener on its own port, sharing the
        interface, with the configured clock source.
        """
        options = self.parse(
            "--port",
            "0",
            "--ntp-port",
            "11123",
            "--local-stratum",
            "10",
            "--refid",
            "GPS",
            "--interface",
            "127.0.0.1",
        )
        top = tap.makeService(options)
        listener = top.getServiceNamed("ntp")  # type: ignore[attr-defined]
        self.assertEqual(
            (listener.portNumber, listener.interface), (11123, "127.0.0.1")
        )
        protocol = listener.protocol
        self.assertIsInstance(protocol, NTPServer)
        self.assertEqual(protocol.clockSource.localStratum, 10)
        self.assertEqual(protocol.clockSource.refid, b"GPS\0")
        self.assertIsNotNone(protocol.policy)
