"""
The RFC 868 Time, RFC 867 Daytime and RFC 862 Echo services end to end: the
twistd options, and a real twistd process queried by rdate, plain sockets
and udptime's client.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import (
    missing,
    noReply,
    requirePeer,
    startOnFreePorts,
    udpQuery,
)
from udptime import daytime, echo, rfc868
from udptime.client import query
from udptime.clock import ntpSecondsToUnix
from udptime.policy import ADMIT, LOOPED
from udptime.reading import QueryResult
from udptime.server import DaytimeServer, EchoServer, TimeServer
from udptime.tap import Options, makeService

RDATE_LINE = re.compile(
    r"^\w{3} (\w{3}) +(\d{1,2}) (\d\d):(\d\d):(\d\d) UTC (\d{4})$", re.MULTILINE
)
MONTHS = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun",
    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
)  # fmt: skip


def parseOptions(*arguments: str) -> Options:
    """
    Parse C{twistd udptime} arguments.
    """
    options = Options()
    options.parseOptions(list(arguments))
    return options


class OptionsTests(SynchronousTestCase):
    """
    C{--time-port}, C{--daytime-port} and C{--echo-port}.
    """

    def test_offByDefault(self) -> None:
        """
        The three services are off unless given a port.
        """
        self.assertEqual(parseOptions().enabledPorts(), {"text": 5000})

    def test_enabledPorts(self) -> None:
        """
        Each service given a port is enabled on it; 0 is off.
        """
        options = parseOptions(
            "--port=0",
            "--time-port=11037",
            "--daytime-port",
            "11013",
            "--echo-port=11007",
        )
        self.assertEqual(
            options.enabledPorts(), {"time": 11037, "daytime": 11013, "echo": 11007}
        )
        options = parseOptions("--time-port=37", "--daytime-port=0")
        self.assertEqual(options.enabledPorts(), {"text": 5000, "time": 37})

    def test_badValues(self) -> None:
        """
        A port that is not a number from 0 to 65535 is a usage error.
        """
        for option in ("--time-port", "--daytime-port", "--echo-port"):
            for value in ("x", "-1", "65536", "3.7", ""):
                with self.subTest(option=option, value=value):
                    self.assertRaises(
                        usage.UsageError, parseOptions, f"{option}={value}"
                    )

    def test_samePort(self) -> None:
        """
        Two services on the same port is a usage error naming both.
        """
        for arguments in (
            ("--time-port=11037", "--daytime-port=11037"),
            ("--echo-port=5000",),
            ("--port=0", "--daytime-port=13", "--echo-port=13"),
        ):
            with self.subTest(arguments=arguments):
                error = self.assertRaises(usage.UsageError, parseOptions, *arguments)
                self.assertIn("both use port", str(error))

    def test_onlyStandardServices(self) -> None:
        """
        With the text service off, one standard service is enough.
        """
        self.assertEqual(
            parseOptions("--port=0", "--echo-port=7").enabledPorts(), {"echo": 7}
        )
        self.assertRaises(usage.UsageError, parseOptions, "--port=0")

    def test_makeService(self) -> None:
        """
        L{makeService} has one child per service, named after it, on its
        port and the shared interface.
        """
        top = makeService(
            parseOptions(
                "--port=0",
                "--interface=127.0.0.1",
                "--time-port=11037",
                "--daytime-port=11013",
                "--echo-port=11007",
            )
        )
        for name, kind, port in (
            ("time", TimeServer, 11037),
            ("daytime", DaytimeServer, 11013),
            ("echo", EchoServer, 11007),
        ):
            with self.subTest(name=name):
                child = top.getServiceNamed(name)  # type: ignore[attr-defined]
                self.assertIsInstance(child.protocol, kind)
                self.assertEqual(
                    (child.portNumber, child.interface), (port, "127.0.0.1")
                )
        self.assertRaises(KeyError, top.getServiceNamed, "text")  # type: ignore[attr-defined]

    def test_servicesRefuseEachOther(self) -> None:
        """
        The services L{makeService} builds refuse datagrams from one
        another's ports (NTP excepted), so that they cannot answer each
        other in a loop.
        """
        top = makeService(
            parseOptions(
                "--port=11000",
                "--time-port=11037",
                "--echo-port=11007",
                "--ntp-port=11123",
            )
        )
        ports = [11000, 11037, 11007, 11123]
        for name in ("text", "time", "echo", "ntp"):
            policy = top.getServiceNamed(name).protocol.policy  # type: ignore[attr-defined]
            verdicts = [policy.admit(("192.0.2.1", port), 0.0) for port in ports]
            with self.subTest(name=name):
                if name == "ntp":
                    self.assertEqual(verdicts, [ADMIT] * 4)
                else:
                    self.assertEqual(verdicts, [LOOPED] * 4)


class TwistdTests(TestCase):
    """
    A real C{twistd -n udptime} with the three services on, text service
    off, queried over IPv4 and IPv6.
    """

    def setUp(self) -> None:
        names = ("time", "daytime", "echo")
        self.server, ports = startOnFreePorts(
            len(names),
            lambda ports: [
                "--port=0",
                *(
                    f"--{name}-port={port}"
                    for name, port in zip(names, ports, strict=True)
                ),
            ],
            listeners=len(names),
        )
        self.addCleanup(self.server.cleanup)
        self.ports = dict(zip(names, ports, strict=True))

    def assertNearNow(self, serverTime: float, before: float) -> None:
        """
        C{serverTime}, read by a client with one-second resolution, is the
        local clock's time between C{before} and now.
        """
        self.assertLessEqual(before // 1 - 1, serverTime)
        self.assertLessEqual(serverTime, time.time() + 1)

    def test_time(self) -> None:
        """
        rdate reads RFC 868 over UDP on IPv4 and IPv6, and a plain empty
        datagram gets 4 bytes of the current time.
        """
        rdate = requirePeer("rdate")
        port = str(self.ports["time"])
        for family, host in (("-4", "127.0.0.1"), ("-6", "::1")):
            with self.subTest(host=host):
                before = time.time()
                output = subprocess.run(
                    [rdate, "-p", "-v", "-u", family, "-o", port, host],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    env={**os.environ, "TZ": "UTC"},
                    check=True,
                ).stdout
                match = RDATE_LINE.search(output)
                assert match is not None, output
                month, day, hour, minute, second, year = match.groups()
                shown = calendar.timegm(
                    (
                        int(year),
                        MONTHS.index(month) + 1,
                        int(day),
                        int(hour),
                        int(minute),
                        int(second),
                        0,
                        0,
                        0,
                    )
                )
                self.assertNearNow(shown, before)
        for host in ("127.0.0.1", "::1"):
            with self.subTest(host=host):
                before = time.time()
                reply = udpQuery(b"", host, self.ports["time"])
                self.assertEqual(len(reply), 4)
                seconds = int.from_bytes(reply, "big")
                self.assertNearNow(ntpSecondsToUnix(seconds, before), before)

    def test_daytimeAndEcho(self) -> None:
        """
        A plain socket reads the daytime line, and gets its datagram echoed;
        an oversized datagram is not echoed.
        """
        for host in ("127.0.0.1", "::1"):
            with self.subTest(host=host):
                before = time.time()
                reply = udpQuery(b"", host, self.ports["daytime"])
                self.assertRegex(
                    reply, rb"^\d\d [A-Z]{3} \d{4} \d\d:\d\d:\d\d UTC\r\n\Z"
                )
                shown = daytime.parseLine(daytime.readLine(reply))
                assert shown is not None
                self.assertNearNow(shown, before)
                payload = os.urandom(echo.MAX_ECHO)
                self.assertEqual(udpQuery(payload, host, self.ports["echo"]), payload)
                self.assertTrue(
                    noReply(payload + b"x", host, self.ports["echo"], wait=0.2)
                )

    async def test_client(self) -> None:
        """
        udptime's client queries each service with its codec.
        """
        codecs = (
            rfc868.TimeClientCodec(),
            daytime.DaytimeClientCodec(),
            echo.EchoClientCodec(),
        )
        for host in ("127.0.0.1", "::1"):
            for codec in codecs:
                before = time.time()
                result: QueryResult = await query(
                    reactor,  # type: ignore[arg-type]
                    host,
                    codec,
                    port=self.ports[codec.name],
                    timeout=2.0,
                )
                self.assertEqual((result.protocol, result.host), (codec.name, host))
                if codec.name == "echo":
                    self.assertIsNone(result.serverTime)
                else:
                    assert result.serverTime is not None
                    self.assertNearNow(result.serverTime, before)
                    assert result.offset is not None
                    self.assertLess(abs(result.offset), 2)

    def test_commandLine(self) -> None:
        """
        C{udptime --protocol NAME --port PORT HOST} speaks each protocol and
        exits 0.
        """
        script = os.path.join(os.path.dirname(sys.executable), "udptime")
        if not os.access(script, os.X_OK):
            missing("the udptime console script is not installed")
        for name, host in (("time", "127.0.0.1"), ("daytime", "::1"), ("echo", "::1")):
            with self.subTest(protocol=name):
                before = time.time()
                completed = subprocess.run(
                    [script, "--json", "-P", name, "-p", str(self.ports[name]), host],
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
                self.assertEqual(completed.returncode, 0, completed.stderr)
                result = json.loads(completed.stdout)
                self.assertEqual(
                    (result["protocol"], result["server"], result["port"]),
                    (name, host, self.ports[name]),
                )
                if name == "echo":
                    self.assertIsNone(result["offset"])
                else:
                    self.assertNearNow(result["serverTime"], before)
                    self.assertEqual(result["details"]["resolution"], 1.0)

    def test_interactiveEcho(self) -> None:
        """
        C{udptime --interactive --protocol echo} is the echo client of the
        classic exercises: each line comes back as it was sent.
        """
        script = os.path.join(os.path.dirname(sys.executable), "udptime")
        if not os.access(script, os.X_OK):
            missing("the udptime console script is not installed")
        completed = subprocess.run(
            [script, "-i", "-P", "echo", "-p", str(self.ports["echo"]), "127.0.0.1"],
            input="Hello, World!\nsecond line \u00e9\nquit\nnot sent\n",
            capture_output=True,
            text=True,
            timeout=20,
        )
        self.assertEqual((completed.returncode, completed.stderr), (0, ""))
        self.assertEqual(
            completed.stdout.splitlines(), ["Hello, World!", "second line \u00e9"]
        )
