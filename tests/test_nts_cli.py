"""
C{udptime --nts HOST}: the command line of udptime's NTS client, parsed,
and run against C{twistd udptime} and against chronyd as NTS server.
"""

from __future__ import annotations

import json
import subprocess

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.certificates import makeCertificates
from tests.support import udptimePath
from tests.test_nts_interop import ChronydNTSServer
from tests.test_nts_twistd import NTSServer, totals
from udptime.cli import UsageError, parseArguments


def udptime(*arguments: str) -> subprocess.CompletedProcess[str]:
    """
    Run the C{udptime} command with C{arguments}, bounded in time.
    """
    return subprocess.run(
        [udptimePath(), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def udptimeNTS(
    host: str, kePort: int, ca: str, *arguments: str
) -> subprocess.CompletedProcess[str]:
    """
    Run C{udptime --nts HOST} against the NTS-KE port C{kePort}, trusting
    the CA of C{ca}, with more C{arguments}.
    """
    return udptime(
        "--nts", host, "--nts-ke-port", str(kePort), "--nts-ca", ca, *arguments
    )


def assertAuthenticated(
    case: TestCase, kePort: int, ca: str, ntpPort: int, count: int, stratum: int
) -> None:
    """
    C{udptime --nts 127.0.0.1 --count COUNT} prints C{count} lines, each
    from C{ntpPort}, at C{stratum}, authenticated, and nothing on standard
    error.
    """
    done = udptimeNTS("127.0.0.1", kePort, ca, "--count", str(count), "--interval", "0")
    case.assertEqual((done.returncode, done.stderr), (0, ""))
    lines = done.stdout.splitlines()
    case.assertEqual(len(lines), count, done.stdout)
    for line in lines:
        case.assertTrue(line.startswith(f"127.0.0.1:{ntpPort}  "), line)
        case.assertIn(f"stratum {stratum}", line)
        case.assertTrue(line.endswith("NTS-authenticated"), line)


class ParseTests(SynchronousTestCase):
    """
    The NTS options of C{udptime}.
    """

    def test_nts(self) -> None:
        """
        C{--nts} speaks NTP; the NTS-KE port and the CA file are options.
        """
        options = parseArguments(
            ["--nts", "time.example", "--nts-ke-port", "4461", "--nts-ca", "ca.pem"]
        )
        self.assertEqual(
            (options.nts, options.protocol, options.nts_ke_port, options.nts_ca),
            (True, "ntp", 4461, "ca.pem"),
        )
        self.assertFalse(parseArguments(["time.example"]).nts)

    def test_refused(self) -> None:
        """
        Options that do not go with C{--nts}, or NTS options without it, say
        so in one line.
        """
        for arguments, reason in [
            (["h", "--nts-ca", "ca.pem"], "--nts-ca goes with --nts"),
            (["h", "--nts-ke-port", "1"], "--nts-ke-port goes with --nts"),
            (["h", "--nts", "-P", "time"], "--nts speaks NTP"),
            (["h", "--nts", "-p", "123"], "--nts asks the NTP server and port"),
            (["h", "--nts", "-i"], "--interactive does not go with --nts"),
            (["h", "--nts", "--nts-ke-port", "0"], "argument --nts-ke-port"),
        ]:
            with self.subTest(arguments=arguments):
                error = self.assertRaises(UsageError, parseArguments, arguments)
                self.assertTrue(str(error).startswith(reason), str(error))


class AgainstUdptimeTests(TestCase):
    """
    C{udptime --nts} against C{twistd udptime}.
    """

    def test_authenticated(self) -> None:
        """
        Two queries after one key exchange: one line each, from the NTP
        port the exchange named, saying they were authenticated; the server
        counts two authenticated requests.
        """
        server = NTSServer(self)
        assertAuthenticated(
            self, server.kePort, server.files.ca, server.ntpPort, 2, stratum=2
        )
        self.assertEqual(totals(server.stop(), "nts").get("authenticated"), 2)

    def test_json(self) -> None:
        """
        With C{--json}, the result says it came by NTS, with the cookies
        in hand.
        """
        server = NTSServer(self)
        done = udptimeNTS("localhost", server.kePort, server.files.ca, "--json")
        self.assertEqual(done.returncode, 0, done.stderr)
        result = json.loads(done.stdout)
        self.assertEqual((result["protocol"], result["port"]), ("nts", server.ntpPort))
        self.assertEqual(
            (result["details"]["nts"], result["details"]["cookies"]), (True, 8)
        )

    def test_untrusted(self) -> None:
        """
        Negative control: trusting another CA, the key exchange fails and
        the command says the certificate is not trusted; nothing is asked
        of the NTP port.
        """
        server = NTSServer(self)
        other = makeCertificates(server.directory, prefix="other-")
        done = udptimeNTS("127.0.0.1", server.kePort, other.ca, "--json")
        self.assertEqual(done.returncode, 1)
        failure = json.loads(done.stdout)
        self.assertEqual(failure["error"], "nts-ke")
        self.assertIn(
            f"the certificate of 127.0.0.1:{server.kePort} is not trusted",
            failure["message"],
        )
        self.assertEqual(totals(server.stop(), "ntp"), {})

    def test_noKeyExchange(self) -> None:
        """
        No NTS-KE service on the port: the command says it cannot connect.
        """
        server = NTSServer(self)
        server.stop()
        done = udptimeNTS("127.0.0.1", server.kePort, server.files.ca)
        self.assertEqual(done.returncode, 1)
        self.assertTrue(
            done.stderr.startswith(
                f"udptime: cannot connect to 127.0.0.1:{server.kePort}:"
            ),
            done.stderr,
        )


class AgainstChronydTests(TestCase):
    """
    C{udptime --nts} against chronyd as NTS server.
    """

    def setUp(self) -> None:
        self.chronyd = ChronydNTSServer()
        self.addCleanup(self.chronyd.cleanup)
        self.chronyd.start()

    def test_authenticated(self) -> None:
        """
        chronyd's key exchange names its NTP port; three authenticated
        queries follow.
        """
        chronyd = self.chronyd
        assertAuthenticated(
            self, chronyd.kePort, chronyd.files.ca, chronyd.port, 3, stratum=1
        )

    def test_untrusted(self) -> None:
        """
        Negative control: chronyd's certificate is refused under another
        CA.
        """
        chronyd = self.chronyd
        other = makeCertificates(chronyd.directory, prefix="other-")
        done = udptimeNTS("127.0.0.1", chronyd.kePort, other.ca)
        self.assertEqual(done.returncode, 1)
        self.assertIn("is not trusted", done.stderr)
