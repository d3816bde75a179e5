"""
Roughtime end to end: C{twistd udptime --roughtime-port N --roughtime-key
FILE} asked by roughly's client and by C{udptime -P roughtime}, and
C{udptime -P roughtime} asking roughly's server; the service's options and
its admission policy.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.roughlypeer import RoughlyServer, blockingQuery, roughlyPath
from tests.roughtimesupport import newKeyFile
from tests.support import TwistdServer, freePort, udptimePath
from tests.test_security import summaryTotals
from udptime import roughtime as rt
from udptime.roughtimekeys import parsePublicKey, publicKeyText
from udptime.tap import Options


def startTwistd(
    test: SynchronousTestCase, *extra: str
) -> tuple[TwistdServer, int, str]:
    """
    C{twistd udptime} serving Roughtime alone on a free port of 127.0.0.1,
    with a new key and a local stratum (the kernel here says its clock is
    not synchronised); stopped when the test ends.

    @return: the server, its port and its public key in base64.
    """
    path, key = newKeyFile(test)
    port = freePort()
    server = TwistdServer(
        [
            "--port=0",
            f"--roughtime-port={port}",
            f"--roughtime-key={path}",
            "--local-stratum=2",
            "--interface=127.0.0.1",
            *extra,
        ]
    )
    test.addCleanup(server.cleanup)
    server.start()
    return server, port, publicKeyText(key)


def udptime(
    *arguments: str, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """
    Run the C{udptime} command in C{cwd} (bounded in time).
    """
    return subprocess.run(
        [udptimePath(), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


class TwistdTests(SynchronousTestCase):
    """
    A real C{twistd udptime} serving Roughtime.
    """

    def test_roughlyAccepts(self) -> None:
        """
        roughly's client accepts udptime's answers (it exits 0 either way:
        its output says), and the server logs its public key.
        """
        server, port, publicKey = startTwistd(self)
        done = subprocess.run(
            [
                roughlyPath(),
                "query",
                "--timeout",
                "2",
                "127.0.0.1",
                str(port),
                publicKey,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertIn("Current time: ", done.stdout, done.stdout + done.stderr)
        said = done.stdout.split("Current time: ")[1].split()
        midpoint, radius = int(said[0]), int(said[2])
        self.assertLessEqual(abs(midpoint - time.time()), radius + 5)
        self.assertIn(f"roughtime: long-term public key {publicKey}", server.log())
        server.stop()
        totals = summaryTotals(server.log(), "roughtime")
        self.assertEqual((totals["received"], totals["answered"]), (1, 1))
        self.assertIn("roughtime: 1 responses signed in 1 batches", server.log())

    def test_udptimeClient(self) -> None:
        """
        C{udptime -P roughtime --public-key KEY} verifies the server's
        answer; a request naming another server's key (SRV) is dropped, so
        the query fails for want of an answer.
        """
        server, port, publicKey = startTwistd(self)
        done = udptime(
            "-P", "roughtime", "--public-key", publicKey, "-p", str(port), "127.0.0.1"
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(f"127.0.0.1:{port}  ", done.stdout)
        self.assertIn("UTC ± 3 s", done.stdout)
        self.assertIn("RFC 10049", done.stdout)
        other = publicKeyText(newKeyFile(self)[1])
        done = udptime(
            "-P", "roughtime", "--public-key", other, "-p", str(port), "127.0.0.1"
        )
        self.assertEqual(done.returncode, 1)
        self.assertIn("no reply from", done.stderr)
        self.assertEqual(done.stderr.count("\n"), 1, done.stderr)
        server.stop()
        totals = summaryTotals(server.log(), "roughtime")
        self.assertEqual((totals["answered"], totals["dropped"]), (1, 3))

    def test_json(self) -> None:
        """
        With C{--json}, a result's details say what the response says, as
        JSON values.
        """
        _, port, publicKey = startTwistd(self)
        done = udptime(
            "-P",
            "roughtime",
            "--public-key",
            publicKey,
            "-p",
            str(port),
            "--json",
            "127.0.0.1",
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        result = json.loads(done.stdout)
        details = result["details"]
        self.assertEqual((result["protocol"], details["radius"]), ("roughtime", 3))
        self.assertEqual(details["version"], "RFC 10049")
        self.assertLessEqual(details["minTime"], details["midpoint"])
        self.assertLessEqual(details["midpoint"], details["maxTime"])
        self.assertEqual(result["serverTime"], details["midpoint"])

    def test_policy(self) -> None:
        """
        The service's admission policy applies: a denied source gets no
        answer, counted as denied; a request too short is dropped, counted.
        """
        server, port, publicKey = startTwistd(self, "--deny=roughtime=127.0.0.1")
        key = parsePublicKey(publicKey)
        self.assertRaises(TimeoutError, blockingQuery, port, key, timeout=0.5)
        server.stop()
        totals = summaryTotals(server.log(), "roughtime")
        self.assertEqual(totals["denied"], 1)
        self.assertEqual(totals.get("answered", 0), 0)

    def test_shortDropped(self) -> None:
        """
        A request shorter than 1024 bytes is dropped, and counted.
        """
        server, port, publicKey = startTwistd(self)
        request = rt.buildRequest(parsePublicKey(publicKey)).packet
        self.assertRaises(TimeoutError, send, port, request[:1000])
        server.stop()
        self.assertEqual(summaryTotals(server.log(), "roughtime")["dropped"], 1)


def send(port: int, datagram: bytes, timeout: float = 0.5) -> bytes:
    """
    Send C{datagram} to 127.0.0.1:C{port}; the first reply.

    @raise TimeoutError: none in C{timeout} seconds.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(datagram, ("127.0.0.1", port))
        return sock.recv(65535)


LIAR_TAC = """
import time

from twisted.application import service
from twisted.internet import reactor

from udptime.clock import ClockSource
from udptime.roughtimekeys import OnlineKey, loadLongTermKey
from udptime.roughtimeserver import RoughtimeResponder, RoughtimeServer
from udptime.service import UDPListenService

application = service.Application("liar")
responder = RoughtimeResponder(
    OnlineKey(loadLongTermKey({key!r})), ClockSource(localStratum=2).state
)
server = RoughtimeServer(responder, clock=lambda: time.time() + 3600)
UDPListenService(
    reactor, server, {port}, "127.0.0.1", serviceName="roughtime"
).setServiceParent(application)
"""
"""A Roughtime server whose clock is an hour ahead, for C{twistd -y}."""


def startLiar(test: SynchronousTestCase, work: str) -> tuple[int, str]:
    """
    A C{twistd} serving Roughtime on 127.0.0.1 with a clock an hour ahead
    (L{LIAR_TAC}, written in C{work}), stopped when C{test} ends.

    @return: its port and its public key in base64.
    """
    keyPath, key = newKeyFile(test)
    port = freePort()
    tac = os.path.join(work, "liar.tac")
    with open(tac, "w", encoding="utf-8") as f:
        f.write(LIAR_TAC.format(key=keyPath, port=port))
    liar = TwistdServer([], twistdArguments=["-y", tac], plugin=None)
    test.addCleanup(liar.cleanup)
    liar.start()
    return port, publicKeyText(key)


def roughtimeTool(*arguments: str, cwd: str) -> subprocess.CompletedProcess[str]:
    """
    Run C{udptime-roughtime} in C{cwd} (bounded in time).
    """
    tool = os.path.join(os.path.dirname(udptimePath()), "udptime-roughtime")
    return subprocess.run(
        [tool, *arguments], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def serverList(path: str, servers: list[tuple[str, str, int]]) -> None:
    """
    Write a server list of C{(name, public key, port)} on 127.0.0.1.
    """
    entries = [
        {
            "name": name,
            "version": 1,
            "publicKeyType": "ed25519",
            "publicKey": key,
            "addresses": [{"protocol": "udp", "address": f"127.0.0.1:{port}"}],
        }
        for name, key, port in servers
    ]
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"servers": entries}, f)


class ChainTests(SynchronousTestCase):
    """
    C{udptime-roughtime chain} across real servers: twistd udptime and
    roughly's server agree; a server an hour ahead is caught, and the
    malfeasance report written verifies.
    """

    def setUp(self) -> None:
        self.work = tempfile.mkdtemp(prefix="udptime-chain-")
        self.addCleanup(shutil.rmtree, self.work, True)

    def test_consistent(self) -> None:
        _, port, key = startTwistd(self)
        roughlyPath()
        roughly = RoughlyServer().start()
        self.addCleanup(roughly.stop)
        roughlyKey = base64.b64encode(roughly.publicKey).decode("ascii")
        path = os.path.join(self.work, "servers.json")
        serverList(
            path, [("udptime", key, port), ("roughly", roughlyKey, roughly.port)]
        )
        done = roughtimeTool("chain", path, cwd=self.work)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("The responses are consistent.", done.stdout)
        self.assertEqual(done.stdout.count("udptime: "), 2)
        self.assertEqual(done.stdout.count("roughly: "), 2)

    def test_liarCaught(self) -> None:
        _, port, key = startTwistd(self)
        liarPort, liarKey = startLiar(self, self.work)
        path = os.path.join(self.work, "servers.json")
        serverList(
            path,
            [("honest", key, port), ("liar", liarKey, liarPort)],
        )
        done = roughtimeTool("chain", path, cwd=self.work)
        self.assertEqual(done.returncode, 3, done.stdout + done.stderr)
        self.assertIn("Inconsistent: liar", done.stdout)
        report = os.path.join(self.work, "roughtime-malfeasance.json")
        verified = roughtimeTool("verify-report", report, cwd=self.work)
        self.assertEqual(verified.returncode, 0, verified.stdout + verified.stderr)


class CommandChainTests(SynchronousTestCase):
    """
    Chains from the C{udptime} command across real servers: C{twistd
    udptime}, a C{twistd} an hour ahead, and roughly's server.
    """

    def setUp(self) -> None:
        self.work = tempfile.mkdtemp(prefix="udptime-chain-")
        self.addCleanup(shutil.rmtree, self.work, True)

    def test_liarCaught(self) -> None:
        """
        HOST (C{-P roughtime --public-key}) and a server list holding a
        server an hour ahead: the command says which answers cannot both be
        true, writes the report where C{--roughtime-report} says and exits
        3; C{udptime-roughtime verify-report} proves it.
        """
        _, port, key = startTwistd(self)
        liarPort, liarKey = startLiar(self, self.work)
        path = os.path.join(self.work, "servers.json")
        serverList(path, [("liar", liarKey, liarPort)])
        report = os.path.join(self.work, "proof.json")
        done = udptime(
            *("-P", "roughtime", "--public-key", key, "-p", str(port), "127.0.0.1"),
            *("--roughtime-list", path, "--roughtime-report", report),
            cwd=self.work,
        )
        self.assertEqual(done.returncode, 3, done.stdout + done.stderr)
        self.assertEqual(done.stderr, "")
        lines = done.stdout.splitlines()
        self.assertTrue(lines[0].startswith(f"127.0.0.1:{port}  "), lines)
        self.assertTrue(lines[1].endswith("  (liar)"), lines)
        self.assertIn(
            f"Inconsistent: liar (response 1) answered a time later than"
            f" 127.0.0.1:{port} (response 2) allowed",
            lines,
        )
        self.assertEqual(lines[-1], f"Malfeasance report written to {report}")
        verified = roughtimeTool("verify-report", report, cwd=self.work)
        self.assertEqual(verified.returncode, 0, verified.stdout + verified.stderr)
        self.assertIn("Proven: response 1", verified.stdout)

    def test_consistentWithRoughly(self) -> None:
        """
        C{--roughtime} twice, udptime's server and roughly's: four
        responses, consistent, exit status 0 and no report.
        """
        _, port, key = startTwistd(self)
        roughlyPath()
        roughly = RoughlyServer().start()
        self.addCleanup(roughly.stop)
        roughlyKey = base64.b64encode(roughly.publicKey).decode("ascii")
        done = udptime(
            *("--roughtime", f"{key}@127.0.0.1:{port}"),
            *("--roughtime", f"{roughlyKey}@127.0.0.1:{roughly.port}"),
            cwd=self.work,
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        lines = done.stdout.splitlines()
        self.assertEqual(len(lines), 5, lines)
        self.assertEqual(lines[-1], "The responses are consistent.")
        self.assertEqual(
            [line.split()[0] for line in lines[:4]],
            [f"127.0.0.1:{port}", f"127.0.0.1:{roughly.port}"] * 2,
        )
        self.assertEqual(os.listdir(self.work), [])

    def test_badInput(self) -> None:
        """
        A server list that is not one, or a server without its key: one
        line on standard error, exit status 2, nothing sent.
        """
        path = os.path.join(self.work, "servers.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write("[]")
        for arguments, message in (
            (("--roughtime-list", path), f"{path}: not a server list"),
            (("--roughtime", "127.0.0.1:2002"), "expected KEY@HOST[:PORT]"),
        ):
            done = udptime(*arguments, cwd=self.work)
            self.assertEqual(done.returncode, 2, done.stderr)
            self.assertEqual(done.stdout, "")
            self.assertEqual(done.stderr.count("\n"), 1, done.stderr)
            self.assertTrue(done.stderr.startswith("udptime: error: "), done.stderr)
            self.assertIn(message, done.stderr)


class RoughlyServerTests(SynchronousTestCase):
    """
    C{udptime -P roughtime} against C{roughly server run}.
    """

    def startRoughly(self) -> RoughlyServer:
        roughlyPath()
        server = RoughlyServer().start()
        self.addCleanup(server.stop)
        return server

    def test_query(self) -> None:
        """
        udptime's client verifies roughly's answer.
        """
        server = self.startRoughly()
        key = base64.b64encode(server.publicKey).decode("ascii")
        done = udptime(
            "-P", "roughtime", "--public-key", key, "-p", str(server.port), "127.0.0.1"
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("UTC ±", done.stdout)

    def test_wrongKey(self) -> None:
        """
        Asked with another key, roughly drops the request (its SRV names
        another server): the query fails for want of an answer.
        """
        server = self.startRoughly()
        other = publicKeyText(newKeyFile(self)[1])
        done = udptime(
            "-P",
            "roughtime",
            "--public-key",
            other,
            "-p",
            str(server.port),
            "127.0.0.1",
        )
        self.assertEqual(done.returncode, 1)
        self.assertIn("no reply from", done.stderr)


class OptionTests(SynchronousTestCase):
    """
    C{--roughtime-port} and C{--roughtime-key}: a bad command line is one
    clear usage error.
    """

    def parse(self, *arguments: str) -> Options:
        options = Options()
        options.parseOptions(list(arguments))
        return options

    def assertUsage(self, message: str, *arguments: str) -> None:
        error = self.assertRaises(usage.UsageError, self.parse, *arguments)
        self.assertIn(message, str(error))

    def test_errors(self) -> None:
        path, _ = newKeyFile(self)
        missing = path + ".missing"
        garbage = path + ".garbage"
        with open(garbage, "w") as f:
            f.write("not a key\n")
        self.assertUsage("--roughtime-port needs --roughtime-key", "--roughtime-port=1")
        self.assertUsage(
            "--roughtime-key is for Roughtime", f"--roughtime-key={garbage}"
        )
        self.assertUsage(
            f"--roughtime-key: cannot read {missing}: No such file",
            "--roughtime-port=1",
            f"--roughtime-key={missing}",
        )
        self.assertUsage(
            "--roughtime-key: " + garbage,
            "--roughtime-port=1",
            f"--roughtime-key={garbage}",
        )

    def test_keyRead(self) -> None:
        """
        The key file is read as the options are parsed; C{--local-stratum}
        goes with Roughtime as with NTP.
        """
        path, key = newKeyFile(self)
        options = self.parse(
            "--roughtime-port=1", f"--roughtime-key={path}", "--local-stratum=3"
        )
        read: Any = options["roughtime-long-term-key"]
        self.assertEqual(publicKeyText(read), publicKeyText(key))
