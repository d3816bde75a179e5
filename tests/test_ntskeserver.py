"""
udptime's NTS-KE server and client over real TLS on loopback, with
certificates made for the test run (L{tests.certificates}): key exchanges
that work, and each way one can fail, on both sides, with the server's
counters.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from typing import Any

from twisted.internet import reactor as globalReactor
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    wrapClientTLS,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.certificates import CertificateFiles, makeCertificates
from tests.eventually import eventually
from tests.fuzzing import EXAMPLES
from tests.keservice import startKEService
from tests.tcp import freeTCPPort
from udptime.ntsclient import (
    KEResult,
    NTSKEBadResponse,
    NTSKECertificateError,
    NTSKEConnectionError,
    NTSKEServerError,
    NTSKETimeout,
    NTSKETLSError,
    ntsKeyExchange,
    trustRootFromFile,
)
from udptime.ntscookie import CookieKeys
from udptime.ntske import (
    ALPN_PROTOCOL,
    ErrorCode,
    KEResponseParser,
    Record,
    RecordType,
    buildErrorResponse,
    buildRequest,
)
from udptime.ntskeserver import (
    NTSKEConfigurationError,
    loadServerTLS,
    ntsKEService,
)
from udptime.policy import SourceLimiter

reactor: Any = globalReactor
FUZZ_CONNECTIONS = EXAMPLES // 10


def temporaryDirectory(case: SynchronousTestCase) -> str:
    directory = tempfile.mkdtemp(prefix="udptime-ntske-")
    case.addCleanup(shutil.rmtree, directory, True)
    return directory


class _Collector(Protocol):
    """
    Sends C{data} once connected (after the handshake, under TLS) and
    collects what comes back until the connection closes.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        if self.data:
            self.transport.write(self.data)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(self.received)


async def connect(
    port: int,
    data: bytes,
    files: CertificateFiles | None = None,
    protocols: list[bytes] | None = None,
    **options: Any,
) -> _Collector:
    """
    Connect to C{port} on 127.0.0.1 (with TLS when C{files} is given) and
    send C{data}; the connection's collector.
    """
    collector = _Collector(data)
    endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    if files is not None:
        creator = ssl.optionsForClientTLS(
            "127.0.0.1",
            trustRoot=trustRootFromFile(files.ca),
            acceptableProtocols=[ALPN_PROTOCOL] if protocols is None else protocols,
            extraCertificateOptions=options,
        )
        endpoint = wrapClientTLS(creator, endpoint)
    await endpoint.connect(Factory.forProtocol(lambda: collector))
    return collector


async def exchangeBytes(
    port: int,
    data: bytes,
    files: CertificateFiles | None = None,
    protocols: list[bytes] | None = None,
    **options: Any,
) -> bytes:
    """
    L{connect}, and all that comes back before the connection closes.
    """
    collector = await connect(port, data, files, protocols, **options)
    return await collector.done


class KEServerTests(TestCase):
    """
    The server and the client together.
    """

    def setUp(self) -> None:
        self.directory = temporaryDirectory(self)
        self.files = makeCertificates(self.directory)
        self.keys = CookieKeys.generate(reactor.seconds())

    def serve(self, **settings: Any) -> Any:
        return startKEService(self.keys, self.files, self.addCleanup, **settings)

    def exchange(
        self, port: int, host: str = "127.0.0.1", **kw: Any
    ) -> Deferred[KEResult]:
        kw.setdefault("caFile", self.files.ca)
        return ntsKeyExchange(reactor, host, port, **kw)

    async def failure(
        self, deferred: Deferred[Any], kind: type[Exception]
    ) -> Exception:
        try:
            await deferred
        except kind as e:
            return e
        raise AssertionError(f"{kind.__name__} not raised")

    def test_keyExchange(self) -> None:
        """
        A key exchange gives 8 cookies that open, with the server's keys,
        to the session keys the client exported, and this server's address
        and port 123 for NTP.
        """

        async def exercise() -> None:
            service, port = await self.serve()
            result = await self.exchange(port)
            self.assertEqual(
                (result.server, result.port, result.aead), ("127.0.0.1", 123, 15)
            )
            self.assertEqual(len(result.cookies), 8)
            self.assertEqual(len(set(result.cookies)), 8)
            for cookie in result.cookies:
                keys = self.keys.open(cookie)
                self.assertEqual((keys.c2s, keys.s2c), (result.c2s, result.s2c))
            self.assertNotEqual(result.c2s, result.s2c)
            self.assertEqual(service.counters.sessions, 1)
            self.assertEqual(service.counters.connections, 1)

        return Deferred.fromCoroutine(exercise())

    def test_negotiation(self) -> None:
        """
        The server names the NTP server and port it was given.
        """

        async def exercise() -> None:
            _, port = await self.serve(ntpServer="ntp.example.net", ntpPort=4123)
            result = await self.exchange(port)
            self.assertEqual((result.server, result.port), ("ntp.example.net", 4123))

        return Deferred.fromCoroutine(exercise())

    def test_ipv6AndName(self) -> None:
        """
        On every address (dual-stack), over IPv6 and by name, the
        certificate's IP address and DNS name are checked.
        """

        async def exercise() -> None:
            _, port = await self.serve(interface="")
            result = await self.exchange(port, "::1")
            self.assertEqual(result.server, "::1")
            result = await self.exchange(port, "localhost")
            self.assertIn(result.server, ("127.0.0.1", "::1"))

        return Deferred.fromCoroutine(exercise())

    def test_leafOnlyCertificate(self) -> None:
        """
        A certificate file without the chain serves too (the client trusts
        the CA that signed it).
        """
        self.files = CertificateFiles(
            self.files.ca, self.files.leaf, self.files.key, self.files.leaf
        )

        async def exercise() -> None:
            _, port = await self.serve()
            await self.exchange(port)

        return Deferred.fromCoroutine(exercise())

    def test_untrusted(self) -> None:
        """
        A certificate from a CA the client does not trust fails as a
        certificate error; the server counts a failed handshake.
        """
        other = makeCertificates(self.directory, prefix="other-")

        async def exercise() -> None:
            service, port = await self.serve()
            error = await self.failure(
                self.exchange(port, caFile=other.ca), NTSKECertificateError
            )
            self.assertIn("not trusted", str(error))
            await self.failure(self.exchange(port, caFile=None), NTSKECertificateError)
            await eventually(
                lambda: service.counters.handshakeFailures == 2, "the server's count"
            )
            self.assertEqual(service.counters.sessions, 0)

        return Deferred.fromCoroutine(exercise())

    def test_wrongName(self) -> None:
        """
        A certificate for another name fails as a certificate error.
        """

        async def exercise() -> None:
            service, port = await self.serve()
            error = await self.failure(
                self.exchange(port, serverName="ntp.example.net"),
                NTSKECertificateError,
            )
            self.assertIn("not for 'ntp.example.net'", str(error))
            self.assertEqual(service.counters.sessions, 0)

        return Deferred.fromCoroutine(exercise())

    def test_connectionRefused(self) -> None:
        """
        No server: a connection error.
        """

        async def exercise() -> None:
            error = await self.failure(
                self.exchange(freeTCPPort()), NTSKEConnectionError
            )
            self.assertIn("cannot connect", str(error))

        return Deferred.fromCoroutine(exercise())

    def test_badRequests(self) -> None:
        """
        Bad requests are answered with their error codes, a request with no
        common AEAD algorithm with an empty AEAD record, and counted.
        """

        async def exercise() -> None:
            service, port = await self.serve()
            answer = await exchangeBytes(
                port, b"\x80\x04\x00\x02\x00\x0f\x80\x00\x00\x00", self.files
            )
            self.assertEqual(answer, buildErrorResponse(ErrorCode.BAD_REQUEST))
            unknown = Record(0x1234, b"", True).toBytes() + buildRequest()
            answer = await exchangeBytes(port, unknown, self.files)
            self.assertEqual(
                answer, buildErrorResponse(ErrorCode.UNRECOGNIZED_CRITICAL_RECORD)
            )
            answer = await exchangeBytes(port, buildRequest([30]), self.files)
            self.assertRaises(NTSKEBadResponse, KEResponseParser([30]).feed, answer)
            self.assertIn(
                Record(RecordType.AEAD_ALGORITHM, b"", True).toBytes(), answer
            )
            self.assertEqual(service.counters.errorsSent, 2)
            self.assertEqual(service.counters.unsupported, 1)
            self.assertEqual(service.counters.internalErrors, 0)

        return Deferred.fromCoroutine(exercise())

    def test_internalError(self) -> None:
        """
        A failure while answering (a bug) is answered with error 2, counted
        and logged with its traceback.
        """

        class BrokenKeys:
            def seal(self, keys: object) -> bytes:
                raise RuntimeError("broken keys")

        async def exercise() -> None:
            service, port = await self.serve()
            service.listener.server.keys = BrokenKeys()  # type: ignore[assignment]
            error = await self.failure(self.exchange(port), NTSKEServerError)
            self.assertEqual(error.code, ErrorCode.INTERNAL_SERVER_ERROR)  # type: ignore[attr-defined]
            self.assertEqual(service.counters.internalErrors, 1)
            self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

        return Deferred.fromCoroutine(exercise())

    def test_noCommonAEADForClient(self) -> None:
        """
        The client fails clearly when the server supports none of the
        algorithms it offers.
        """

        async def exercise() -> None:
            _, port = await self.serve()
            error = await self.failure(
                self.exchange(port, aeads=[30]), NTSKEBadResponse
            )
            self.assertIn("none of the AEAD algorithms", str(error))

        return Deferred.fromCoroutine(exercise())

    def test_handshakeRefusals(self) -> None:
        """
        Not TLS, TLS 1.2, and TLS without ALPN C{ntske/1} are closed without
        a response, and counted as failed handshakes.
        """

        async def exercise() -> None:
            service, port = await self.serve()
            self.assertEqual(await exchangeBytes(port, b"GET / HTTP/1.0\r\n\r\n"), b"")
            self.assertEqual(
                await exchangeBytes(
                    port,
                    buildRequest(),
                    self.files,
                    lowerMaximumSecurityTo=ssl.TLSVersion.TLSv1_2,
                ),
                b"",
            )
            self.assertEqual(
                await exchangeBytes(port, buildRequest(), self.files, [b"http/1.1"]),
                b"",
            )
            await eventually(
                lambda: service.counters.handshakeFailures == 3, "the server's count"
            )
            self.assertEqual(service.counters.sessions, 0)

        return Deferred.fromCoroutine(exercise())

    def test_deadline(self) -> None:
        """
        A connection that sends nothing is closed at the deadline, and
        counted.
        """

        async def exercise() -> None:
            service, port = await self.serve(timeout=0.2)
            self.assertEqual(await exchangeBytes(port, b""), b"")
            self.assertEqual(service.counters.timedOut, 1)
            self.assertEqual(service.counters.handshakeFailures, 0)

        return Deferred.fromCoroutine(exercise())

    def test_rateLimit(self) -> None:
        """
        A client over its rate is closed at once, before TLS, and counted;
        the client sees the connection close during the handshake.
        """

        async def exercise() -> None:
            service, port = await self.serve(limiter=SourceLimiter(0.001, 1))
            await self.exchange(port)
            error = await self.failure(self.exchange(port), NTSKETLSError)
            self.assertIn("closed the connection during the TLS handshake", str(error))
            self.assertEqual(service.counters.refusedRate, 1)
            self.assertEqual(service.counters.connections, 1)

        return Deferred.fromCoroutine(exercise())

    def test_capacity(self) -> None:
        """
        Past the session cap, connections are closed at once, and counted.
        """

        async def exercise() -> None:
            service, port = await self.serve(maxConnections=1, timeout=0.5)
            holder = await connect(port, b"")
            await eventually(lambda: service.listener.server.active == 1, "a session")
            await self.failure(self.exchange(port), NTSKETLSError)
            self.assertEqual(service.counters.refusedCapacity, 1)
            await holder.done
            await eventually(lambda: service.listener.server.active == 0, "the end")
            await self.exchange(port)

        return Deferred.fromCoroutine(exercise())

    def test_clientTimeout(self) -> None:
        """
        A server that never answers: the client times out.
        """

        async def exercise() -> None:
            endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
            listening = await endpoint.listen(Factory.forProtocol(Protocol))
            self.addCleanup(listening.stopListening)
            error = await self.failure(
                self.exchange(listening.getHost().port, timeout=0.3), NTSKETimeout
            )
            self.assertIn("no NTS-KE answer", str(error))

        return Deferred.fromCoroutine(exercise())

    def test_serverErrorRecord(self) -> None:
        """
        A server that answers with an Error record fails the exchange with
        that code.
        """

        class ErrorServer(Protocol):
            def dataReceived(self, data: bytes) -> None:
                self.transport.write(
                    buildErrorResponse(ErrorCode.INTERNAL_SERVER_ERROR)
                )  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]

        async def exercise() -> None:
            options = loadServerTLS(self.files.certificate, self.files.key)
            endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
            listening = await endpoint.listen(
                TLSMemoryBIOFactory(options, False, Factory.forProtocol(ErrorServer))
            )
            self.addCleanup(listening.stopListening)
            error = await self.failure(
                self.exchange(listening.getHost().port), NTSKEServerError
            )
            self.assertEqual(error.code, 2)  # type: ignore[attr-defined]
            self.assertIn("internal server error", str(error))

        return Deferred.fromCoroutine(exercise())

    def test_certificateReload(self) -> None:
        """
        New certificate files are served once read again; files that
        cannot be used leave the old ones in service.
        """

        async def exercise() -> None:
            service, port = await self.serve()
            self.assertFalse(service.reloadIfChanged())
            renewed = makeCertificates(self.directory, prefix="renewed-")
            shutil.copy(renewed.certificate, self.files.certificate)
            self.assertFalse(service.reloadIfChanged())  # the old key: refused
            await self.exchange(port)
            shutil.copy(renewed.key, self.files.key)
            self.assertTrue(service.reloadIfChanged())
            await self.exchange(port, caFile=renewed.ca)
            await self.failure(self.exchange(port), NTSKECertificateError)

        return Deferred.fromCoroutine(exercise())

    def test_garbage(self) -> None:
        """
        Garbage, in plain TCP and inside TLS, never breaks the server: each
        connection is closed and counted, and a key exchange still works.
        """
        generator = random.Random(int.from_bytes(os.urandom(4), "big"))

        async def exercise() -> None:
            service, port = await self.serve(limiter=SourceLimiter(1000.0, 100_000))
            for index in range(FUZZ_CONNECTIONS):
                garbage = generator.randbytes(generator.randrange(1, 600))
                if index % 2:
                    # Most garbage inside TLS is a bad request; some of it
                    # starts like a request and is cut short.
                    garbage = generator.choice([b"", buildRequest()[:6]]) + garbage
                await exchangeBytes(port, garbage, self.files if index % 2 else None)
            counters = service.counters
            await eventually(lambda: service.listener.server.active == 0, "the end")
            self.assertEqual(counters.internalErrors, 0)
            self.assertEqual(counters.sessions, 0)
            self.assertEqual(
                counters.connections,
                counters.errorsSent
                + counters.handshakeFailures
                + counters.incomplete
                + counters.timedOut,
            )
            await self.exchange(port)

        return Deferred.fromCoroutine(exercise())


class ConfigurationTests(SynchronousTestCase):
    """
    Certificates and keys that cannot be used are refused at once, with
    the file named.
    """

    def test_refused(self) -> None:
        """
        A missing file, a file that is not PEM, a key that is not the
        certificate's.
        """
        directory = temporaryDirectory(self)
        files = makeCertificates(directory)
        other = makeCertificates(directory, prefix="other-")
        cases = [
            (os.path.join(directory, "missing.pem"), files.key, "missing.pem"),
            (files.certificate, os.path.join(directory, "missing.pem"), "missing.pem"),
            (files.key, files.key, "certificate file"),
            (files.certificate, files.ca, "private key file"),
            (files.certificate, other.key, "is not the key of the certificate"),
        ]
        for certificate, key, text in cases:
            with self.subTest(certificate=certificate, key=key):
                with self.assertRaises(NTSKEConfigurationError) as caught:
                    loadServerTLS(certificate, key)
                self.assertIn(text, str(caught.exception))

    def test_negotiationSettings(self) -> None:
        """
        A server name or port that cannot be sent is refused.
        """
        directory = temporaryDirectory(self)
        files = makeCertificates(directory)
        keys = CookieKeys.generate(0.0)
        for setting in ({"ntpServer": "not a name"}, {"ntpPort": 0}):
            with self.subTest(setting=setting):
                self.assertRaises(
                    ValueError,
                    ntsKEService,
                    reactor,
                    0,
                    files.certificate,
                    files.key,
                    keys,
                    **setting,
                )
