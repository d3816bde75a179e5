"""
Chains of Roughtime servers from the C{udptime} command: C{--roughtime},
C{--roughtime-list} and C{--roughtime-report} on its command line, then
L{udptime.cli.Client} asking real servers on loopback in process (the
console script against real C{twistd} servers is in
L{tests.test_roughtime_twistd}).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sys
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.roughtimesupport import publicBytes, seededKey
from tests.test_roughtimeclient import startServer
from udptime import cli
from udptime.cli import EXIT_MALFEASANCE, Client, UsageError, parseArguments
from udptime.roughtime import DEFAULT_CLIENT_VERSIONS
from udptime.roughtimechain import ServerEntry, verifyReport

HONEST = seededKey(31)
AHEAD = seededKey(32)
OTHER = seededKey(33)


def keyText(key: Any) -> str:
    return base64.b64encode(publicBytes(key)).decode("ascii")


def writeServerList(path: str, servers: list[tuple[str, Any, int]]) -> None:
    """
    Write a server list of C{(name, key, port)} on 127.0.0.1, in RFC
    10049's format.
    """
    entries = [
        {
            "name": name,
            "version": 1,
            "publicKeyType": "ed25519",
            "publicKey": keyText(key),
            "addresses": [{"protocol": "udp", "address": f"127.0.0.1:{port}"}],
        }
        for name, key, port in servers
    ]
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"servers": entries}, f)


def temporaryDirectory(test: SynchronousTestCase) -> str:
    directory = tempfile.mkdtemp(prefix="udptime-chain-")
    test.addCleanup(shutil.rmtree, directory, True)
    return directory


class ArgumentTests(SynchronousTestCase):
    """
    The chain's options on C{udptime}'s command line.
    """

    def test_servers(self) -> None:
        """
        Each C{--roughtime KEY@ADDRESS} is a server of the chain, on port
        2002 unless the address gives one, named by its address; the chain
        speaks Roughtime and needs no HOST.
        """
        options = parseArguments(
            [
                *("--roughtime", f"{keyText(HONEST)}@127.0.0.1:2003"),
                *("--roughtime", f"{keyText(AHEAD)}@[::1]"),
                *("--roughtime", f"{keyText(OTHER)}@time.example.net"),
            ]
        )
        self.assertEqual(options.protocol, "roughtime")
        self.assertIsNone(options.codec)
        self.assertEqual(
            options.chain,
            [
                ServerEntry(
                    "127.0.0.1:2003",
                    publicBytes(HONEST),
                    DEFAULT_CLIENT_VERSIONS,
                    (("127.0.0.1", 2003),),
                ),
                ServerEntry(
                    "[::1]:2002",
                    publicBytes(AHEAD),
                    DEFAULT_CLIENT_VERSIONS,
                    (("::1", 2002),),
                ),
                ServerEntry(
                    "time.example.net:2002",
                    publicBytes(OTHER),
                    DEFAULT_CLIENT_VERSIONS,
                    (("time.example.net", 2002),),
                ),
            ],
        )

    def test_order(self) -> None:
        """
        HOST, with C{-P roughtime} and its C{--public-key}, comes first, then
        the servers of C{--roughtime-list}, then those of C{--roughtime}.
        """
        path = os.path.join(temporaryDirectory(self), "servers.json")
        writeServerList(path, [("listed", AHEAD, 4000)])
        options = parseArguments(
            [
                *("--roughtime", f"{keyText(OTHER)}@192.0.2.1"),
                *("-P", "roughtime", "--public-key", keyText(HONEST)),
                *("[::1]", "-p", "5000", "--roughtime-list", path),
            ]
        )
        self.assertEqual(
            [server.name for server in options.chain],
            ["[::1]:5000", "listed", "192.0.2.1:2002"],
        )
        self.assertEqual(options.chain[0].publicKey, publicBytes(HONEST))
        self.assertEqual(options.chain[1].addresses, (("127.0.0.1", 4000),))

    def test_skipped(self) -> None:
        """
        The server list's entries that cannot be used are left out, and the
        reasons kept for the client to say.
        """
        path = os.path.join(temporaryDirectory(self), "servers.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "servers": [
                        {
                            "name": "usable",
                            "version": 1,
                            "publicKeyType": "ed25519",
                            "publicKey": keyText(HONEST),
                            "addresses": [
                                {"protocol": "udp", "address": "127.0.0.1:1"}
                            ],
                        },
                        {"name": "tcp-only", "publicKeyType": "rsa"},
                    ]
                },
                f,
            )
        options = parseArguments(["--roughtime-list", path])
        self.assertEqual([server.name for server in options.chain], ["usable"])
        self.assertEqual(
            options.roughtimeSkipped, ["tcp-only: the key type is not ed25519"]
        )

    def test_errors(self) -> None:
        """
        A chain that cannot be asked is a usage error that says why.
        """
        directory = temporaryDirectory(self)
        missing = os.path.join(directory, "missing.json")
        notJSON = os.path.join(directory, "garbage.json")
        with open(notJSON, "w") as f:
            f.write("{")
        empty = os.path.join(directory, "empty.json")
        with open(empty, "w") as f:
            f.write('{"servers": []}')
        server = f"{keyText(HONEST)}@127.0.0.1"
        cases = [
            (["--roughtime", "127.0.0.1"], "expected KEY@HOST[:PORT]"),
            (["--roughtime", "AAAA@127.0.0.1"], "is 32 bytes"),
            (["--roughtime", f"{keyText(HONEST)}@::1"], "goes in brackets"),
            (["--roughtime", f"{keyText(HONEST)}@h:70000"], "expected host:port"),
            (["--roughtime", f"{keyText(HONEST)}@"], "expected host:port"),
            (["--roughtime", server, "-P", "ntp"], "do not go with --protocol ntp"),
            (["--roughtime", server, "-c", "2"], "--count does not go with a chain"),
            (["--roughtime", server, "--interval", "1"], "--interval does not go"),
            (["--roughtime", server, "-i"], "--interactive does not go"),
            (["--roughtime", server, "--nts"], "--nts does not go"),
            (["h", "iso", "--roughtime", server], "a request does not go"),
            (["h", "--roughtime", server], "HOST joins the chain with its"),
            (["--roughtime", server, "-p", "5"], "--port are HOST's"),
            (
                ["--roughtime", server, "--public-key", keyText(AHEAD)],
                "--public-key and --port are HOST's",
            ),
            (["h", "--roughtime-report", "r.json"], "--roughtime-report goes with"),
            (["--roughtime-list", missing], f"cannot read {missing}: No such file"),
            (["--roughtime-list", notJSON], f"{notJSON}: not JSON"),
            (["--roughtime-list", empty], f"{empty}: no usable server"),
            ([], "the following arguments are required: host"),
        ]
        for argv, message in cases:
            with self.subTest(argv=argv):
                error = self.assertRaises(UsageError, parseArguments, argv)
                self.assertIn(message, str(error))

    def test_mainUsageError(self) -> None:
        """
        A server list that cannot be read is one line on standard error and
        exit status 2, before anything is sent.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        missing = os.path.join(temporaryDirectory(self), "missing.json")
        exc = self.assertRaises(SystemExit, cli.main, ["--roughtime-list", missing])
        self.assertEqual(exc.code, 2)
        self.assertEqual(
            stderr.getvalue(),
            f"udptime: error: --roughtime-list: cannot read {missing}:"
            " No such file or directory\n",
        )


class ChainTests(TestCase):
    """
    L{Client} asking a chain of real servers on loopback.
    """

    timeout = 60

    def setUp(self) -> None:
        self.directory = temporaryDirectory(self)
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()

    def run_(self, *argv: str) -> defer.Deferred[int]:
        options = parseArguments(list(argv))
        client = Client(reactor, options, self.stdout, self.stderr)  # type: ignore[arg-type]
        return defer.Deferred.fromCoroutine(client.run())

    @defer.inlineCallbacks
    def test_malfeasance(self) -> Any:
        """
        Two servers of a server list, the second 1000 s ahead: each
        response is a line naming its server, the pair that cannot both be
        right is said, the report is written and proves it, and the exit
        status is 3.
        """
        _, honestPort = startServer(self, HONEST)
        _, aheadPort = startServer(self, AHEAD, offset=1000.0)
        path = os.path.join(self.directory, "servers.json")
        writeServerList(
            path, [("honest", HONEST, honestPort), ("ahead", AHEAD, aheadPort)]
        )
        report = os.path.join(self.directory, "report.json")
        status = yield self.run_("--roughtime-list", path, "--roughtime-report", report)
        self.assertEqual(status, EXIT_MALFEASANCE, self.stderr.getvalue())
        lines = self.stdout.getvalue().splitlines()
        self.assertEqual(len(lines), 6, lines)
        for line, name, port in zip(
            lines, ["honest", "ahead"] * 2, [honestPort, aheadPort] * 2, strict=False
        ):
            self.assertTrue(line.startswith(f"127.0.0.1:{port}  "), line)
            self.assertTrue(line.endswith(f"  ({name})"), line)
            self.assertIn("RFC 10049", line)
        self.assertEqual(
            lines[4],
            "Inconsistent: ahead (response 1) answered a time later than honest"
            " (response 2) allowed",
        )
        self.assertEqual(lines[5], f"Malfeasance report written to {report}")
        self.assertEqual(self.stderr.getvalue(), "")
        with open(report, "rb") as f:
            verdict = verifyReport(f.read())
        self.assertEqual(verdict.violations, ((1, 2),))
        self.assertEqual(
            [link.publicKey for link in verdict.links],
            [publicBytes(HONEST), publicBytes(AHEAD)] * 2,
        )

    @defer.inlineCallbacks
    def test_consistentJSON(self) -> Any:
        """
        With C{--json}: one object per response, then one for the chain;
        consistent answers write no report, and the exit status is 0.
        """
        _, firstPort = startServer(self, HONEST)
        _, secondPort = startServer(self, OTHER)
        cwd = os.getcwd()
        os.chdir(self.directory)
        self.addCleanup(os.chdir, cwd)
        status = yield self.run_(
            *("-P", "roughtime", "--public-key", keyText(HONEST)),
            *("127.0.0.1", "-p", str(firstPort), "--json"),
            *("--roughtime", f"{keyText(OTHER)}@127.0.0.1:{secondPort}"),
        )
        self.assertEqual(status, 0, self.stderr.getvalue())
        objects = [json.loads(line) for line in self.stdout.getvalue().splitlines()]
        self.assertEqual(len(objects), 5)
        self.assertEqual([o["port"] for o in objects[:4]], [firstPort, secondPort] * 2)
        self.assertEqual({o["protocol"] for o in objects[:4]}, {"roughtime"})
        names = [f"127.0.0.1:{firstPort}", f"127.0.0.1:{secondPort}"] * 2
        self.assertEqual(
            objects[4],
            {"chain": "consistent", "servers": names, "violations": [], "report": None},
        )
        self.assertEqual(os.listdir(self.directory), [])

    @defer.inlineCallbacks
    def test_silentServer(self) -> Any:
        """
        A server that gives no valid response ends the chain: one line on
        standard error naming it, exit status 1, no report.
        """
        _, port = startServer(self, HONEST)
        # OTHER's key names another server: this one drops the requests.
        status = yield self.run_(
            *("--roughtime", f"{keyText(HONEST)}@127.0.0.1:{port}"),
            *("--roughtime", f"{keyText(OTHER)}@127.0.0.1:{port}"),
            *("--timeout", "0.2", "--retries", "1"),
        )
        self.assertEqual(status, 1)
        self.assertEqual(
            self.stderr.getvalue(),
            f"udptime: no measurement: 127.0.0.1:{port}: no response from"
            f" 127.0.0.1:{port} after 1 try\n",
        )
        self.assertEqual(self.stdout.getvalue(), "")

    @defer.inlineCallbacks
    def test_silentServerJSON(self) -> Any:
        """
        With C{--json} the failure is one object naming the server.
        """
        _, port = startServer(self, HONEST)
        status = yield self.run_(
            *("--roughtime", f"{keyText(OTHER)}@127.0.0.1:{port}"),
            *("--timeout", "0.2", "--retries", "1", "--json"),
        )
        self.assertEqual(status, 1)
        failure = json.loads(self.stdout.getvalue())
        self.assertEqual(
            (failure["error"], failure["server"], failure["port"]),
            ("timeout", "127.0.0.1", port),
        )
        self.assertEqual(failure["protocol"], "roughtime")

    @defer.inlineCallbacks
    def test_reportUnwritable(self) -> Any:
        """
        A report that cannot be written: the inconsistency is measured but
        the chain fails, with one line saying why.
        """
        _, honestPort = startServer(self, HONEST)
        _, aheadPort = startServer(self, AHEAD, offset=1000.0)
        report = os.path.join(self.directory, "missing", "report.json")
        status = yield self.run_(
            *("--roughtime", f"{keyText(HONEST)}@127.0.0.1:{honestPort}"),
            *("--roughtime", f"{keyText(AHEAD)}@127.0.0.1:{aheadPort}"),
            *("--roughtime-report", report),
        )
        self.assertEqual(status, 1)
        self.assertEqual(
            self.stderr.getvalue(),
            f"udptime: cannot write the malfeasance report {report}:"
            " No such file or directory\n",
        )
