"""
NTS against chronyd (Debian's chrony is built with NTS; see
C{tests/install-peers.sh}), on loopback, with certificates made for the run:

  - chronyd as NTS server (NTS-KE and NTP, C{local stratum 1}, C{-x}):
    udptime's client gets authenticated time from it, and refuses it when a
    proxy flips one bit of chronyd's authenticator (the negative control);
  - chronyd as client (C{chronyd -Q ... nts}) of udptime's NTS-KE server:
    its key exchange succeeds, as the cookies it saves on exit show (they
    open with udptime's server keys to the keys chronyd exported), and,
    with the NTP half served by the codec-built responder of
    L{tests.ntsresponder}, it accepts the authenticated time.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from typing import Any

from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol, ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.certificates import makeCertificates
from tests.eventually import eventually
from tests.keservice import startKEService
from tests.ntsresponder import NTSResponder
from tests.support import requirePeer
from tests.tcp import freeTCPPort
from tests.test_ntp_interop import ReferenceServer
from udptime.nts import NTS_COOKIE, parseFields
from udptime.ntsclient import NTSAuthenticationError, ntsKeyExchange, ntsQuery
from udptime.ntscookie import CookieKeys

reactor: Any = globalReactor

CHRONYD_NTS_SERVER_CONFIG = """\
port {port}
ntsport {kePort}
bindaddress 127.0.0.1
local stratum 1
allow 127.0.0.1
ntsserverkey {key}
ntsservercert {certificate}
ntsdumpdir {directory}
pidfile {directory}/chronyd.pid
driftfile {directory}/chronyd.drift
cmdport 0
"""


def temporaryDirectory(case: TestCase) -> str:
    """
    A directory chronyd can read after it drops to C{_chrony}.
    """
    directory = tempfile.mkdtemp(prefix="udptime-nts-chronyd-")
    os.chmod(directory, 0o755)
    case.addCleanup(shutil.rmtree, directory, True)
    return directory


def readable(directory: str) -> None:
    """
    Make the files in C{directory} readable by chronyd's own user: they are
    test files, made for this run.
    """
    for name in os.listdir(directory):
        os.chmod(os.path.join(directory, name), 0o644)


class ChronydNTSServer(ReferenceServer):
    """
    chronyd as NTS server on loopback ports (NTP and NTS-KE), never
    touching the clock; it is ready when it answers NTP.
    """

    def __init__(self) -> None:
        super().__init__()
        self.files = makeCertificates(self.directory)
        self.kePort = freeTCPPort()
        with open(self.config, "w") as f:
            f.write(
                CHRONYD_NTS_SERVER_CONFIG.format(
                    port=self.port,
                    kePort=self.kePort,
                    key=self.files.key,
                    certificate=self.files.certificate,
                    directory=self.directory,
                )
            )
        readable(self.directory)


class FlippingProxy(DatagramProtocol):
    """
    A UDP proxy between one client and an NTP server that flips one bit of
    each reply's last byte (inside the NTS authenticator) when C{flip} is
    set.

    @ivar replies: replies relayed.
    """

    def __init__(self, server: tuple[str, int], flip: bool) -> None:
        self.server = server
        self.flip = flip
        self.client: Any = None
        self.replies = 0

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        transport: Any = self.transport
        if addr == self.server:
            if self.client is None:
                return
            if self.flip:
                data = data[:-1] + bytes([data[-1] ^ 0x01])
            self.replies += 1
            transport.write(data, self.client)
        else:
            self.client = addr
            transport.write(data, self.server)


class RequestRecorder(DatagramProtocol):
    """
    Keeps the NTP requests it receives, and answers none.

    @ivar requests: the datagrams received.
    """

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.requests.append(data)


class ChronydRun(ProcessProtocol):
    """
    A C{chronyd -Q} process: its output, and its end.

    @ivar ended: fires with the exit status and the output.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[tuple[int, str]] = Deferred()
        self.process: Any = None

    def makeConnection(self, process: Any) -> None:
        self.process = process
        ProcessProtocol.makeConnection(self, process)

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        status = getattr(reason.value, "exitCode", None)
        self.ended.callback(
            (-1 if status is None else status, self.output.decode("utf-8", "replace"))
        )

    def stop(self, process: Any) -> Deferred[tuple[int, str]] | None:
        """
        Stop the process, by its id, if it still runs (clean-up).
        """
        if self.ended.called:
            return None
        process.signalProcess("KILL")
        return self.ended


def startChronydClient(
    case: TestCase,
    trusted: str,
    ntpPort: int,
    kePort: int,
    timeout: int,
    dumps: str,
) -> ChronydRun:
    """
    Start C{chronyd -Q} (never touching the clock) as an NTS client of the
    NTS-KE server on 127.0.0.1 port C{kePort} and the NTP server on
    C{ntpPort}, trusting the CA certificates of C{trusted}, as a child of
    the reactor; it saves its NTS state in C{dumps}, and is killed after
    the test of C{case} if it still runs.
    """
    chronyd = requirePeer("chronyd", "chronyd is the reference NTS client")
    user = ["-u", "root"] if os.geteuid() == 0 else []
    run = ChronydRun()
    process = reactor.spawnProcess(
        run,
        chronyd,
        [
            chronyd,
            "-Q",
            "-x",
            *user,
            "-t",
            str(timeout),
            f"server 127.0.0.1 port {ntpPort} nts ntsport {kePort} iburst maxsamples 1",
            f"ntstrustedcerts {trusted}",
            f"ntsdumpdir {dumps}",
            f"pidfile {dumps}/chronyd.pid",
        ],
        env=dict(os.environ),
    )
    case.addCleanup(run.stop, process)
    return run


class ChronydServerTests(TestCase):
    """
    udptime's NTS client against chronyd's NTS server.
    """

    def setUp(self) -> None:
        self.chronyd = ChronydNTSServer()
        self.addCleanup(self.chronyd.cleanup)
        self.chronyd.start()

    def test_authenticatedTime(self) -> None:
        """
        A key exchange with chronyd (its NTP port comes in an NTPv4 Port
        Negotiation record), then three authenticated queries, each
        replacing the cookie it used.
        """

        async def exercise() -> None:
            chronyd = self.chronyd
            ke = await ntsKeyExchange(
                reactor, "127.0.0.1", chronyd.kePort, caFile=chronyd.files.ca
            )
            self.assertEqual(
                (ke.server, ke.port, ke.aead), ("127.0.0.1", chronyd.port, 15)
            )
            self.assertEqual(len(ke.cookies), 8)
            results = await ntsQuery(reactor, ke, count=3, timeout=2.0)
            for result in results:
                self.assertTrue(result.details["nts"])
                self.assertEqual(result.details["stratum"], 1)
                self.assertTrue(result.details["synchronised"])
                self.assertEqual(result.details["cookies"], 8)
                self.assertLess(abs(result.offset or 1.0), 0.5)

        return Deferred.fromCoroutine(exercise())

    def test_tamperedAuthenticatorRefused(self) -> None:
        """
        Through a proxy that relays chronyd's replies unchanged, queries
        succeed; through one that flips a bit of the authenticator, every
        reply fails authentication and the query fails saying so.
        """

        async def exercise() -> None:
            chronyd = self.chronyd
            ke = await ntsKeyExchange(
                reactor, "127.0.0.1", chronyd.kePort, caFile=chronyd.files.ca
            )
            for flip in (False, True):
                proxy = FlippingProxy(("127.0.0.1", chronyd.port), flip)
                port = reactor.listenUDP(0, proxy, interface="127.0.0.1")
                self.addCleanup(port.stopListening)
                through = dataclasses.replace(ke, port=port.getHost().port)
                if not flip:
                    await ntsQuery(reactor, through, timeout=2.0)
                    continue
                with self.assertRaises(NTSAuthenticationError) as caught:
                    await ntsQuery(reactor, through, timeout=0.5, retries=2)
                self.assertEqual(proxy.replies, 2)
                self.assertIn("2 replies failed authentication", str(caught.exception))

        return Deferred.fromCoroutine(exercise())


class ChronydClientTests(TestCase):
    """
    chronyd as the client of udptime's NTS-KE server.
    """

    def setUp(self) -> None:
        self.chronyd = requirePeer("chronyd", "chronyd is the reference NTS client")
        self.directory = temporaryDirectory(self)
        self.files = makeCertificates(self.directory)
        readable(self.directory)
        self.dumps = os.path.join(self.directory, "dump")
        os.mkdir(self.dumps)
        os.chmod(self.dumps, 0o777)
        self.keys = CookieKeys.generate(time.time())

    def serve(self, ntpPort: int) -> Any:
        return startKEService(self.keys, self.files, self.addCleanup, ntpPort=ntpPort)

    def chronydQuery(self, kePort: int, ntpPort: int, timeout: int) -> ChronydRun:
        """
        Start C{chronyd -Q} with NTS against the servers, as a child of the
        reactor (which serves them).
        """
        return startChronydClient(
            self, self.files.ca, ntpPort, kePort, timeout, self.dumps
        )

    def test_keyExchange(self) -> None:
        """
        chronyd's key exchange with udptime's server succeeds: on exit it
        saves the NTP address and port udptime named, AEAD 15, its two keys,
        and the cookies, which open with udptime's server keys to those
        keys.
        """

        async def exercise() -> None:
            # chronyd takes its cookies from the key exchange when it
            # prepares its first NTP request, and saves those left when it
            # stops: wait for that request (unanswered), then stop it.
            recorder = RequestRecorder()
            udp = reactor.listenUDP(0, recorder, interface="127.0.0.1")
            self.addCleanup(udp.stopListening)
            ntpPort = udp.getHost().port
            service, kePort = await self.serve(ntpPort)
            run = self.chronydQuery(kePort, ntpPort, timeout=30)
            await eventually(lambda: recorder.requests, "chronyd's NTS request")
            run.process.signalProcess("TERM")
            await run.ended
            self.assertEqual(service.counters.sessions, 1)
            sent = [
                recorder.requests[0][start:end]
                for fieldType, start, end in parseFields(recorder.requests[0])
                if fieldType == NTS_COOKIE
            ]
            with open(os.path.join(self.dumps, "127.0.0.1.nts")) as f:
                lines = f.read().split()
            # NNC0, name, time, address, port, context id, AEAD, S2C, C2S,
            # then the cookies chronyd did not use.
            self.assertEqual(lines[0], "NNC0")
            self.assertEqual(lines[3:5], ["127.0.0.1", str(ntpPort)])
            self.assertEqual(lines[6], "15")
            s2c, c2s = bytes.fromhex(lines[7]), bytes.fromhex(lines[8])
            cookies = [bytes.fromhex(text) for text in lines[9:]]
            self.assertEqual(len(cookies), 7)
            self.assertEqual(len(sent), 1)
            cookies += sent
            for cookie in cookies:
                keys = self.keys.open(cookie)
                self.assertEqual((keys.c2s, keys.s2c), (c2s, s2c))

        return Deferred.fromCoroutine(exercise())

    def test_authenticatedTime(self) -> None:
        """
        With the NTP half answered by the codecs (as the NTP server will),
        chronyd accepts the authenticated time.
        """

        async def exercise() -> None:
            responder = NTSResponder(self.keys)
            udp = reactor.listenUDP(0, responder, interface="127.0.0.1")
            self.addCleanup(udp.stopListening)
            ntpPort = udp.getHost().port
            service, kePort = await self.serve(ntpPort)
            run = self.chronydQuery(kePort, ntpPort, timeout=10)
            status, output = await run.ended
            self.assertEqual(status, 0, output)
            self.assertIn("System clock wrong by", output)
            self.assertEqual(service.counters.sessions, 1)
            self.assertGreater(responder.answered, 0)
            self.assertTrue(set(responder.cookies))

        return Deferred.fromCoroutine(exercise())
