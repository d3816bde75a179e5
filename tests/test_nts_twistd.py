"""
NTS end to end: a real C{twistd -n udptime} process serving NTS-KE and NTS
on its NTP port, and real clients: C{chronyd -Q} (Debian's chrony, built
with NTS; see C{tests/install-peers.sh}) and udptime's own NTS client, with
certificates made for the run.

The negative controls: chronyd that trusts another CA never gets a
measurement, nor does chronyd behind a proxy that flips one bit of each of
udptime's replies (inside the authenticator), while the server counts the
replies it authenticated.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.certificates import CertificateFiles, makeCertificates
from tests.support import (
    TwistdServer,
    freePort,
    requirePeer,
    twistdPath,
    udpQuery,
    waitFor,
)
from tests.tcp import freeTCPPort
from tests.test_nts_interop import (
    FlippingProxy,
    readable,
    startChronydClient,
    temporaryDirectory,
)
from udptime.ntp import KissOfDeath
from udptime.ntsclient import (
    NTSClientCodec,
    NTSKECertificateError,
    ntsKeyExchange,
    ntsQuery,
)

reactor: Any = globalReactor


def totals(log: str, name: str) -> dict[str, int]:
    """
    The last totals a server's log summarised for the counters C{name}
    (C{ntp}, C{nts}, C{nts-ke}), by counter; nothing when none.
    """
    found: dict[str, int] = {}
    for match in re.finditer(
        rf"udptime {re.escape(name)}: [^;\n]*; totals ([^;\n]*)", log
    ):
        found = {
            key: int(value)
            for key, value in (item.split("=") for item in match.group(1).split())
        }
    return found


def workerLines(log: str, worker: int) -> str:
    """
    The lines of a supervisor's log relayed from worker C{worker}.
    """
    prefix = f"worker {worker}: "
    return "\n".join(line for line in log.splitlines() if prefix in line)


class NTSServer:
    """
    C{twistd -n udptime} on loopback with NTP and NTS-KE on free ports, a
    test CA and certificate readable by chronyd's user.

    @ivar files: the certificate files.
    @ivar ntpPort: the NTP port.
    @ivar kePort: the NTS-KE port.
    @ivar twistd: the server process.
    """

    def __init__(self, case: TestCase, *arguments: str, listeners: int = 2) -> None:
        self.directory = temporaryDirectory(case)
        self.files: CertificateFiles = makeCertificates(self.directory)
        readable(self.directory)
        self.ntpPort = freePort()
        self.kePort = freeTCPPort()
        self.twistd = TwistdServer(
            [
                "--port",
                "0",
                "--interface",
                "127.0.0.1",
                "--ntp-port",
                str(self.ntpPort),
                "--local-stratum",
                "2",
                "--nts-ke-port",
                str(self.kePort),
                "--nts-certificate",
                self.files.certificate,
                "--nts-private-key",
                self.files.key,
                *arguments,
            ]
        )
        case.addCleanup(self.twistd.cleanup)
        self.twistd.start(listeners)

    async def askChronyd(
        self, case: TestCase, timeout: int, trusted: str | None = None
    ) -> tuple[int, str]:
        """
        Run C{chronyd -Q} with NTS against this server, trusting the CA of
        C{trusted} (default: this server's); its exit status and output.
        """
        dumps = tempfile.mkdtemp(prefix="chronyd-", dir=self.directory)
        os.chmod(dumps, 0o777)
        run = startChronydClient(
            case,
            self.files.ca if trusted is None else trusted,
            self.ntpPort,
            self.kePort,
            timeout,
            dumps,
        )
        return await run.ended

    def stop(self) -> str:
        """
        Stop the server (its counters are summarised as it stops); its log.
        """
        self.twistd.stop()
        return self.twistd.log()


class ChronydClientTests(TestCase):
    """
    C{chronyd -Q} as the NTS client of C{twistd udptime}.
    """

    def setUp(self) -> None:
        requirePeer("chronyd", "chronyd is the reference NTS client")

    def test_authenticatedMeasurement(self) -> None:
        """
        chronyd makes a key exchange with udptime's NTS-KE service and
        accepts the time of its NTS-protected NTP replies; the server counts
        one key exchange and the requests it authenticated, and no NAK nor
        failure.
        """
        server = NTSServer(self)

        async def exercise() -> None:
            status, output = await server.askChronyd(self, 20)
            self.assertEqual(status, 0, output)
            self.assertIn("System clock wrong by", output)
            log = server.stop()
            ke = totals(log, "nts-ke")
            self.assertEqual((ke.get("sessions"), ke.get("errorsSent")), (1, None))
            nts = totals(log, "nts")
            self.assertGreaterEqual(nts.get("authenticated", 0), 1)
            self.assertEqual(
                [nts.get(c) for c in ("naks", "badAuthenticators", "malformed")],
                [None, None, None],
            )

        return Deferred.fromCoroutine(exercise())

    def test_otherCANotTrusted(self) -> None:
        """
        Negative control: chronyd that trusts another CA refuses udptime's
        certificate, makes no key exchange and takes no measurement.
        """
        server = NTSServer(self)

        async def exercise() -> None:
            other = makeCertificates(server.directory, prefix="other-")
            readable(server.directory)
            status, output = await server.askChronyd(self, 5, other.ca)
            self.assertNotEqual(status, 0, output)
            self.assertNotIn("System clock wrong by", output)
            log = server.stop()
            self.assertGreaterEqual(
                totals(log, "nts-ke").get("handshakeFailures", 0), 1
            )
            self.assertEqual(totals(log, "nts-ke").get("sessions"), None)
            self.assertEqual(totals(log, "nts"), {})

        return Deferred.fromCoroutine(exercise())

    def test_flippedBitRefused(self) -> None:
        """
        Negative control: the key exchange sends chronyd to a proxy in front
        of udptime's NTP port (C{--nts-ntp-port}) that flips one bit of the
        authenticator of every reply: udptime authenticates and answers
        chronyd's requests, and chronyd accepts none of the replies.
        """
        proxy = FlippingProxy(("127.0.0.1", 0), flip=True)
        port = reactor.listenUDP(0, proxy, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        server = NTSServer(self, "--nts-ntp-port", str(port.getHost().port))
        proxy.server = ("127.0.0.1", server.ntpPort)

        async def exercise() -> None:
            status, output = await server.askChronyd(self, 6)
            self.assertNotEqual(status, 0, output)
            self.assertNotIn("System clock wrong by", output)
            self.assertGreaterEqual(proxy.replies, 1)
            log = server.stop()
            self.assertEqual(totals(log, "nts-ke").get("sessions"), 1)
            self.assertGreaterEqual(totals(log, "nts").get("authenticated", 0), 1)

        return Deferred.fromCoroutine(exercise())


class UdptimeClientTests(TestCase):
    """
    udptime's NTS client against C{twistd udptime}.
    """

    def test_authenticatedQueries(self) -> None:
        """
        A key exchange, then three authenticated queries, each answered
        with fresh cookies that keep eight in hand.
        """
        server = NTSServer(self)

        async def exercise() -> None:
            ke = await ntsKeyExchange(
                reactor, "127.0.0.1", server.kePort, caFile=server.files.ca
            )
            self.assertEqual((ke.server, ke.port), ("127.0.0.1", server.ntpPort))
            for result in await ntsQuery(reactor, ke, count=3, timeout=2.0):
                self.assertTrue(result.details["nts"])
                self.assertEqual(result.details["cookies"], 8)
                self.assertEqual(result.details["stratum"], 2)
                self.assertLess(abs(result.offset or 1.0), 0.5)
            self.assertEqual(totals(server.stop(), "nts").get("authenticated"), 3)

        return Deferred.fromCoroutine(exercise())

    def test_untrustedCertificate(self) -> None:
        """
        A client that trusts another CA fails the key exchange saying the
        certificate is not trusted.
        """
        server = NTSServer(self)

        async def exercise() -> None:
            other = makeCertificates(server.directory, prefix="other-")
            with self.assertRaises(NTSKECertificateError):
                await ntsKeyExchange(
                    reactor, "127.0.0.1", server.kePort, caFile=other.ca
                )

        return Deferred.fromCoroutine(exercise())


class RateLimitTests(TestCase):
    """
    An NTS client over its rate at C{twistd udptime}.
    """

    def test_authenticatedKiss(self) -> None:
        """
        With a burst of one request and a rate of one per 100 seconds,
        udptime's NTS client gets its first query answered and its second
        refused with a Kiss-o'-Death C{RATE} that it accepts as authentic
        (an unauthenticated one it would ignore and time out), the fresh
        cookies inside it keeping eight in hand; the server counts one
        authenticated answer and one authenticated KoD.
        """
        server = NTSServer(self, "--rate", "0.01", "--burst", "1", "--leak", "0")

        async def exercise() -> None:
            ke = await ntsKeyExchange(
                reactor, "127.0.0.1", server.kePort, caFile=server.files.ca
            )
            codec = NTSClientCodec(ke)
            await ntsQuery(reactor, ke, codec=codec, timeout=2.0)
            with self.assertRaises(KissOfDeath) as caught:
                await ntsQuery(reactor, ke, codec=codec, timeout=2.0, retries=1)
            self.assertEqual(caught.exception.code, "RATE")
            self.assertEqual(len(codec.cookies), 8)
            log = server.stop()
            nts = totals(log, "nts")
            self.assertEqual(
                [nts.get(c) for c in ("authenticated", "rateKisses", "rateDrops")],
                [1, 1, None],
            )
            self.assertEqual(totals(log, "ntp").get("kissed"), 1)

        return Deferred.fromCoroutine(exercise())


class WorkersTests(TestCase):
    """
    C{--workers 2}: the supervisor serves the key exchanges and hands its
    keys to both workers.
    """

    def test_cookiesAcceptedByEveryWorker(self) -> None:
        """
        NTS queries from eight loopback addresses, which the supervisor
        spreads over its two workers by address, each with the cookie the
        reply to the one before brought (minted by whichever worker
        answered it): every one authenticates, and both workers
        authenticated some.
        """
        server = NTSServer(self, "--workers", "2", listeners=2)
        deadline = time.monotonic() + 30
        # Both workers' own listening lines.
        while server.twistd.log().count(": udptime ntp service listening on ") < 2:
            self.assertLess(time.monotonic(), deadline, server.twistd.log())
            time.sleep(0.05)  # polling a log file, bounded by the deadline

        async def exercise() -> None:
            ke = await ntsKeyExchange(
                reactor, "127.0.0.1", server.kePort, caFile=server.files.ca
            )
            codec = NTSClientCodec(ke)
            for last in range(1, 9):
                sentAt = time.time()
                data, state = codec.buildRequest(sentAt)
                reply = udpQuery(
                    data, "127.0.0.1", server.ntpPort, source=(f"127.0.0.{last}", 0)
                )
                reading = codec.parseReply(reply, state, sentAt, time.time())
                self.assertTrue(reading.details["nts"])
                # The freshest cookie, from the worker that answered, first.
                codec.cookies.rotate(1)
            log = server.stop()
            authenticated = [
                totals(workerLines(log, worker), "nts").get("authenticated", 0)
                for worker in (1, 2)
            ]
            self.assertEqual(sum(authenticated), 8, log)
            self.assertNotIn(0, authenticated, log)

        return Deferred.fromCoroutine(exercise())


class KeyFileTests(TestCase):
    """
    C{--nts-key-file}: the server keys shared by the servers of one NTS
    service.
    """

    def test_keyExchangeHostSendsClientsToNTPHost(self) -> None:
        """
        One udptime serves the key exchange and sends clients (NTPv4 Server
        and Port Negotiation) to another, NTP only, that reads the first
        one's key file and never rotates it: chronyd gets its cookies from
        the first and authenticated time from the second.  The key file is
        made by the first, readable by its owner alone.
        """
        requirePeer("chronyd", "chronyd is the reference NTS client")
        ntpPort = freePort()
        directory = temporaryDirectory(self)
        keyFile = os.path.join(directory, "nts-keys.json")
        keyHost = NTSServer(
            self,
            "--nts-key-file",
            keyFile,
            "--nts-ntp-server",
            "127.0.0.1",
            "--nts-ntp-port",
            str(ntpPort),
        )
        self.assertEqual(os.stat(keyFile).st_mode & 0o777, 0o600)
        ntpHost = TwistdServer(
            [
                "--port",
                "0",
                "--interface",
                "127.0.0.1",
                "--ntp-port",
                str(ntpPort),
                "--local-stratum",
                "2",
                "--nts-key-file",
                keyFile,
                "--nts-key-rotation",
                "0",
            ]
        )
        self.addCleanup(ntpHost.cleanup)
        ntpHost.start()

        async def exercise() -> None:
            status, output = await keyHost.askChronyd(self, 20)
            self.assertEqual(status, 0, output)
            self.assertIn("System clock wrong by", output)
            ntpHost.stop()
            self.assertGreaterEqual(
                totals(ntpHost.log(), "nts").get("authenticated", 0), 1
            )
            log = keyHost.stop()
            self.assertEqual(totals(log, "nts-ke").get("sessions"), 1)
            self.assertEqual(totals(log, "nts"), {})

        return Deferred.fromCoroutine(exercise())


class BadSetupTests(SynchronousTestCase):
    """
    NTS that cannot be set up as asked stops twistd before it serves: one
    line on standard error, status 1.
    """

    def twistd(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        with tempfile.TemporaryDirectory() as directory:
            return subprocess.run(
                [
                    twistdPath(),
                    "-n",
                    "--pidfile=",
                    "udptime",
                    "--port",
                    "0",
                    "--interface",
                    "127.0.0.1",
                    "--ntp-port",
                    str(freePort()),
                    *arguments,
                ],
                cwd=directory,
                capture_output=True,
                text=True,
                timeout=60,
            )

    def test_missingKeyFile(self) -> None:
        """
        A server that does not rotate its keys needs the key file to exist.
        """
        done = self.twistd(
            "--nts-key-file", "/nonexistent/keys", "--nts-key-rotation", "0"
        )
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertEqual(
            done.stderr,
            "twistd udptime: cannot use the NTS key file /nonexistent/keys:"
            " [Errno 2] No such file or directory: '/nonexistent/keys'\n",
        )

    def test_workersWithoutUDPServices(self) -> None:
        """
        A key-exchange-only server (every UDP port off) has nothing for
        workers to serve: C{--workers} is refused with one line naming it.
        """
        files = makeCertificates(temporaryDirectory(self))
        done = self.twistd(
            "--ntp-port",
            "0",
            "--nts-ke-port",
            str(freeTCPPort()),
            "--nts-certificate",
            files.certificate,
            "--nts-private-key",
            files.key,
            "--workers",
            "2",
        )
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertEqual(
            done.stderr,
            "twistd udptime: --workers runs the UDP services, and every one is"
            " off: the NTS-KE service runs in one process, without --workers"
            " (twistd udptime --help lists the options)\n",
        )

    def test_unusableCertificate(self) -> None:
        """
        A certificate file that cannot be read is named.
        """
        done = self.twistd(
            "--nts-ke-port",
            str(freeTCPPort()),
            "--nts-certificate",
            "/nonexistent/cert.pem",
            "--nts-private-key",
            "/nonexistent/key.pem",
        )
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertEqual(len(done.stderr.splitlines()), 1, done.stderr)
        self.assertIn("/nonexistent/cert.pem", done.stderr)
        self.assertTrue(done.stderr.startswith("twistd udptime: "), done.stderr)

    def test_keyExchangePortInUse(self) -> None:
        """
        An NTS-KE port another socket holds is named, as a UDP port in use
        is, with and without workers.
        """
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            directory = tempfile.mkdtemp(prefix="udptime-nts-")
            self.addCleanup(shutil.rmtree, directory, True)
            files = makeCertificates(directory)
            for workers in ([], ["--workers", "2"]):
                with self.subTest(workers=workers):
                    done = self.twistd(
                        "--nts-ke-port",
                        str(port),
                        "--nts-certificate",
                        files.certificate,
                        "--nts-private-key",
                        files.key,
                        *workers,
                    )
                    self.assertEqual(
                        (done.returncode, done.stderr),
                        (
                            1,
                            "twistd udptime: nts-ke service cannot listen on"
                            f" 127.0.0.1:{port} (TCP): Address already in use\n",
                        ),
                    )


class MetricsTests(TestCase):
    """
    The NTS counters of C{twistd udptime} on its C{/metrics} page.
    """

    def test_ntsCounters(self) -> None:
        """
        After one key exchange and two authenticated queries, C{/metrics}
        counts two authenticated NTS requests and one NTS-KE session
        (control: before them, none).
        """
        from tests.test_operations import scrape

        metricsPort = freeTCPPort()
        server = NTSServer(self, f"--metrics-port={metricsPort}")
        waitFor(
            lambda: "udptime metrics listening on 127.0.0.1:" in server.twistd.log(),
            "the metrics listener",
        )
        authenticated = (
            "udptime_nts_requests_total",
            frozenset({("outcome", "authenticated")}),
        )
        sessions = (
            "udptime_nts_ke_sessions_total",
            frozenset({("outcome", "sessions")}),
        )
        before = scrape(metricsPort)
        self.assertEqual(before.get(authenticated), 0.0)
        self.assertEqual(before.get(sessions), 0.0)

        async def exercise() -> None:
            ke = await ntsKeyExchange(
                reactor, "127.0.0.1", server.kePort, caFile=server.files.ca
            )
            self.assertEqual(len(await ntsQuery(reactor, ke, count=2, timeout=2.0)), 2)
            after = scrape(metricsPort)
            self.assertEqual(after.get(authenticated), 2.0)
            self.assertEqual(after.get(sessions), 1.0)

        return Deferred.fromCoroutine(exercise())

    def test_supervisorCounters(self) -> None:
        """
        With C{--workers 2} the supervisor's C{/metrics} counts the key
        exchanges it serves itself, beside the workers' totals.
        """
        from tests.test_operations import scrape

        metricsPort = freeTCPPort()
        server = NTSServer(
            self, "--workers", "2", f"--metrics-port={metricsPort}", listeners=2
        )
        waitFor(
            lambda: "udptime metrics listening on 127.0.0.1:" in server.twistd.log(),
            "the metrics listener",
        )
        sessions = (
            "udptime_nts_ke_sessions_total",
            frozenset({("outcome", "sessions")}),
        )
        self.assertEqual(scrape(metricsPort).get(sessions), 0.0)

        async def exercise() -> None:
            await ntsKeyExchange(
                reactor, "127.0.0.1", server.kePort, caFile=server.files.ca
            )
            self.assertEqual(scrape(metricsPort).get(sessions), 1.0)

        return Deferred.fromCoroutine(exercise())
