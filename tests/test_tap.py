"""
The core options of C{twistd udptime} (L{udptime.tap.Options}: C{--port},
C{--interface}, C{--timezone}, C{--verbose}) and the service tree
L{udptime.tap.makeService} builds from them.
"""

from __future__ import annotations

import io
import signal
import sys
from collections.abc import Callable
from datetime import UTC

from twisted.application.service import IServiceCollection
from twisted.application.twist._options import TwistOptions
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from udptime import __version__, text
from udptime.ancillary import kernelTimestampsAvailable
from udptime.server import TextTimeServer
from udptime.service import UDPListenService
from udptime.tap import Options, UDPTimeService, makeService
from udptime.text import DEFAULT_PORT


def parse(*arguments: str) -> Options:
    options = Options()
    options.parseOptions(list(arguments))
    return options


class CoreOptionsTests(SynchronousTestCase):
    """
    L{Options} for the text service.
    """

    def test_defaults(self) -> None:
        """
        The text service on port 5000 (an int, not a string), on every
        address, in the host's zone, quiet.
        """
        options = parse()
        self.assertEqual(DEFAULT_PORT, 5000)
        self.assertEqual(options["port"], 5000)
        self.assertIsInstance(options["port"], int)
        self.assertEqual(options["interface"], "::")
        self.assertIsNone(options["timezone"])
        self.assertFalse(options["verbose"])
        self.assertEqual(options.enabledPorts().get("text"), 5000)

    def test_values(self) -> None:
        """
        Each option, long and short.
        """
        options = parse("--port", "5001", "--interface", "127.0.0.1")
        self.assertEqual((options["port"], options["interface"]), (5001, "127.0.0.1"))
        options = parse("-p", "65535", "-i", "0:0:0:0:0:0:0:1", "-v")
        self.assertEqual((options["port"], options["interface"]), (65535, "::1"))
        self.assertTrue(options["verbose"])
        self.assertIs(parse("--timezone", "UTC")["timezone"], UTC)
        self.assertEqual(
            str(parse("--timezone", "Europe/Paris")["timezone"]), "Europe/Paris"
        )

    def test_mappedInterface(self) -> None:
        """
        An IPv4-mapped interface address is its IPv4 address.
        """
        self.assertEqual(
            parse("--interface", "::ffff:127.0.0.1")["interface"], "127.0.0.1"
        )

    def test_badPort(self) -> None:
        """
        A port that is not a number from 1 to 65535 is a usage error; 0
        turns the text service off, and with every service off there is
        nothing to run.
        """
        for port in ("x", "-1", "65536", "5000.5", ""):
            with self.subTest(port=port):
                error = self.assertRaises(usage.UsageError, parse, "--port", port)
                self.assertEqual(
                    str(error), f"--port: {port!r} is not a port number from 0 to 65535"
                )
        error = self.assertRaises(usage.UsageError, parse, "--port", "0")
        self.assertIn("every service is off", str(error))

    def assertRefused(self, option: str, values: list[str], message: str) -> None:
        """
        Each of C{values} given to C{option} is a usage error that says
        C{message}.
        """
        for value in values:
            with self.subTest(value=value):
                error = self.assertRaises(usage.UsageError, parse, option, value)
                self.assertIn(message, str(error))

    def test_badInterface(self) -> None:
        """
        An interface must be an IP address, not a name.
        """
        self.assertRefused(
            "--interface",
            ["localhost", "1.2.3.4.5", "", "::1::", "256.0.0.1"],
            "is not an IPv4 or IPv6 address",
        )

    def test_scopedInterface(self) -> None:
        """
        Scoped IPv6 addresses are refused, saying so.
        """
        error = self.assertRaises(usage.UsageError, parse, "--interface", "fe80::1%lo")
        self.assertIn("scoped IPv6 addresses (with %) are not supported", str(error))

    def test_summaryInterval(self) -> None:
        """
        Summaries are off (0) or at least a second apart: a tiny interval
        would keep a CPU busy logging.
        """
        self.assertEqual(parse("--summary-interval", "0")["summary-interval"], 0.0)
        self.assertEqual(parse("--summary-interval", "1")["summary-interval"], 1.0)
        self.assertRefused(
            "--summary-interval",
            ["1e-9", "0.5", "-1", "x", "nan"],
            "is not 0, or a number of seconds >= 1",
        )

    def test_kernelTimestampsFlags(self) -> None:
        """
        Kernel timestamps are the default; only NTP uses them, so their
        flags are harmless without its port.  C{--no-kernel-timestamps}
        turns them off; both flags at once are refused.
        """
        self.assertEqual(parse().kernelTimestamps(), kernelTimestampsAvailable())
        self.assertEqual(
            parse("--kernel-timestamps").kernelTimestamps(),
            kernelTimestampsAvailable(),
        )
        self.assertFalse(parse("--no-kernel-timestamps").kernelTimestamps())
        self.assertFalse(
            parse("--ntp-port", "1123", "--no-kernel-timestamps").kernelTimestamps()
        )
        error = self.assertRaises(
            usage.UsageError, parse, "--kernel-timestamps", "--no-kernel-timestamps"
        )
        self.assertIn("not both", str(error))
        help = Options().getUsage(width=200)
        self.assertRegex(help, "--kernel-timestamps +The default")

    def test_version(self) -> None:
        """
        C{--version} prints udptime's version, and exits with status 0.
        """
        output = io.StringIO()
        self.patch(sys, "stdout", output)
        error = self.assertRaises(SystemExit, parse, "--version")
        self.assertEqual(error.code, 0)
        self.assertEqual(output.getvalue(), f"udptime {__version__}\n")

    def test_badTimezone(self) -> None:
        """
        An unknown or malformed zone name is a usage error.
        """
        self.assertRefused(
            "--timezone",
            ["Mars/Olympus", "../../etc/passwd", "/etc/passwd", "", "Europe"],
            "unknown time zone",
        )

    def test_unknownOption(self) -> None:
        """
        An unknown option is a usage error.
        """
        self.assertRaises(usage.UsageError, parse, "--no-such-option")

    def test_arguments(self) -> None:
        """
        udptime takes options only: an argument is a usage error naming it.
        """
        error = self.assertRaises(usage.UsageError, parse, "now")
        self.assertEqual(
            str(error), "unexpected argument 'now': udptime takes options only"
        )

    def test_underTwistd(self) -> None:
        """
        Run by twistd (as its subcommand), a usage error exits with one line
        for standard error, instead of reaching twistd, which would print
        its whole usage text on standard output before the reason.
        """
        config = ServerOptions()
        error = self.assertRaises(
            SystemExit, config.parseOptions, ["udptime", "--burst", "0"]
        )
        self.assertEqual(
            error.code,
            "twistd udptime: --burst: '0' is not a whole number >= 1"
            " (twistd udptime --help lists the options)",
        )
        config = ServerOptions()
        config.parseOptions(["udptime", "--burst", "2"])
        self.assertEqual(config.subOptions["burst"], 2)
        error = self.assertRaises(
            SystemExit, TwistOptions().parseOptions, ["udptime", "--burst", "0"]
        )
        self.assertEqual(
            error.code,
            "twist udptime: --burst: '0' is not a whole number >= 1"
            " (twist udptime --help lists the options)",
        )


class ZoneNamesTests(SynchronousTestCase):
    """
    When the zone database's names are read.
    """

    def test_readWhenBuilt(self) -> None:
        """
        L{makeService} reads them for a text service, before twistd (or a
        worker) gives up its user: not when the first request names a zone.
        """
        text._zoneNamesByFold.cache_clear()
        makeService(parse("--port", "0", "--time-port", "1037"))
        self.assertEqual(text._zoneNamesByFold.cache_info().currsize, 0)
        makeService(parse())
        self.assertEqual(text._zoneNamesByFold.cache_info().currsize, 1)


class StopSignalTests(SynchronousTestCase):
    """
    L{UDPTimeService}'s handling of the signals that stop it.
    """

    def test_ignoredOnceStopped(self) -> None:
        """
        Once the reactor runs, SIGTERM, SIGINT and SIGHUP stop it cleanly;
        once it has stopped they are ignored, so that a late one cannot kill
        the process as it exits.
        """
        numbers = UDPTimeService.stopSignals
        self.assertEqual(set(numbers), {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        for number in numbers:
            self.addCleanup(signal.signal, number, signal.getsignal(number))
        reactor = Clock()
        running: list[Callable[[], object]] = []
        triggers: list[tuple[str, str, Callable[[], object]]] = []
        reactor.callWhenRunning = running.append  # type: ignore[attr-defined]
        reactor.addSystemEventTrigger = (  # type: ignore[attr-defined]
            lambda phase, event, f: triggers.append((phase, event, f))
        )
        service = UDPTimeService(reactor)
        service.startService()
        for f in running:
            f()
        for number in numbers:
            self.assertEqual(signal.getsignal(number), service._terminate)
        [(phase, event, ignore)] = triggers
        self.assertEqual((phase, event), ("after", "shutdown"))
        ignore()
        for number in numbers:
            self.assertEqual(signal.getsignal(number), signal.SIG_IGN)


class MakeServiceTests(SynchronousTestCase):
    """
    L{makeService} for the text service (nothing is started).
    """

    def test_textService(self) -> None:
        """
        One listening service, named C{text}, serving L{TextTimeServer} on
        the port and interface given, with the zone and verbosity given.
        """
        top = makeService(
            parse("--port", "5002", "--interface", "::1", "--timezone", "UTC", "-v")
        )
        self.assertTrue(IServiceCollection.providedBy(top))
        service = top.getServiceNamed("text")
        self.assertIsInstance(service, UDPListenService)
        self.assertEqual((service.portNumber, service.interface), (5002, "::1"))
        protocol = service.protocol
        self.assertIsInstance(protocol, TextTimeServer)
        self.assertIs(protocol.defaultZone, UTC)
        self.assertTrue(protocol.verbose)
        self.assertIsNone(service.port)

    def test_defaultService(self) -> None:
        """
        By default the text service listens on port 5000 on every address.
        """
        service = makeService(parse()).getServiceNamed("text")
        self.assertEqual((service.portNumber, service.interface), (5000, "::"))
        self.assertIsNone(service.protocol.defaultZone)
        self.assertFalse(service.protocol.verbose)
