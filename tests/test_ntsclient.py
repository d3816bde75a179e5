"""
udptime's NTS client end to end on loopback: a key exchange with udptime's
NTS-KE server, then authenticated NTP queries to a small NTS responder
built from the codecs (L{udptime.ntp} and L{udptime.nts}, as the NTP
server uses them), with fresh cookies kept across queries; and each way an
NTS query fails.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.certificates import makeCertificates
from tests.keservice import startKEService
from tests.ntsresponder import NTSResponder
from udptime.ntsclient import (
    KEResult,
    NTSAuthenticationError,
    NTSClientCodec,
    NTSNakReceived,
    NTSNoCookies,
    ntsKeyExchange,
    ntsQuery,
)
from udptime.ntscookie import CookieKeys
from udptime.reading import QueryTimeout

reactor: Any = globalReactor


class NTSQueryTests(TestCase):
    """
    L{ntsKeyExchange} then L{ntsQuery}.
    """

    def setUp(self) -> None:
        directory = tempfile.mkdtemp(prefix="udptime-nts-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.files = makeCertificates(directory)
        self.keys = CookieKeys.generate(time.time())

    def respond(
        self,
        keys: CookieKeys | None = None,
        mangle: Callable[[bytes], bytes] | None = None,
    ) -> tuple[NTSResponder, int]:
        responder = NTSResponder(keys or self.keys, mangle)
        port = reactor.listenUDP(0, responder, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return responder, port.getHost().port

    async def keyExchange(self, ntpPort: int) -> KEResult:
        _, port = await startKEService(
            self.keys, self.files, self.addCleanup, ntpPort=ntpPort
        )
        return await ntsKeyExchange(reactor, "127.0.0.1", port, caFile=self.files.ca)

    def test_queries(self) -> None:
        """
        Authenticated queries, each with its own cookie; the replies' fresh
        cookies keep 8 in hand.
        """

        async def exercise() -> None:
            responder, port = self.respond()
            ke = await self.keyExchange(port)
            self.assertEqual((ke.server, ke.port), ("127.0.0.1", port))
            codec = NTSClientCodec(ke)
            results = await ntsQuery(reactor, ke, count=3, timeout=2.0, codec=codec)
            self.assertEqual(len(results), 3)
            for result in results:
                self.assertEqual(result.protocol, "nts")
                self.assertTrue(result.details["nts"])
                self.assertEqual(result.details["cookies"], 8)
                self.assertEqual(result.details["stratum"], 1)
                self.assertLess(abs(result.offset or 0.0), 1.0)
            self.assertEqual(len(codec.cookies), 8)
            self.assertEqual(len(set(responder.cookies)), 3)
            self.assertTrue(set(responder.cookies[:1]) <= set(ke.cookies))
            self.assertFalse(set(codec.cookies) & set(ke.cookies[:3]))

        return Deferred.fromCoroutine(exercise())

    def test_nak(self) -> None:
        """
        A server that cannot open the cookies answers with a NAK: the query
        fails with L{NTSNakReceived}.
        """

        async def exercise() -> None:
            _, port = self.respond(keys=CookieKeys.generate(time.time()))
            ke = await self.keyExchange(port)
            with self.assertRaises(NTSNakReceived) as caught:
                await ntsQuery(reactor, ke, timeout=2.0)
            self.assertIn("NTS NAK", str(caught.exception))

        return Deferred.fromCoroutine(exercise())

    def test_authenticationFails(self) -> None:
        """
        Replies whose authenticator was changed are ignored; the query
        times out and says how many failed authentication.
        """

        def mangle(reply: bytes) -> bytes:
            return reply[:-1] + bytes([reply[-1] ^ 1])

        async def exercise() -> None:
            responder, port = self.respond(mangle=mangle)
            ke = await self.keyExchange(port)
            with self.assertRaises(NTSAuthenticationError) as caught:
                await ntsQuery(reactor, ke, timeout=0.3, retries=2)
            self.assertIn("2 replies failed authentication", str(caught.exception))
            self.assertIsInstance(caught.exception, QueryTimeout)
            self.assertEqual(responder.answered, 2)

        return Deferred.fromCoroutine(exercise())

    def test_noReply(self) -> None:
        """
        No reply at all is a plain timeout.
        """

        async def exercise() -> None:
            _, port = self.respond(mangle=lambda reply: b"")
            ke = await self.keyExchange(port)
            with self.assertRaises(QueryTimeout) as caught:
                await ntsQuery(reactor, ke, timeout=0.2, retries=1)
            self.assertNotIsInstance(caught.exception, NTSAuthenticationError)

        return Deferred.fromCoroutine(exercise())

    def test_noCookies(self) -> None:
        """
        Without cookies no request is sent: a new key exchange is needed.
        """

        async def exercise() -> None:
            responder, port = self.respond()
            ke = await self.keyExchange(port)
            empty = KEResult(
                ke.server, ke.port, ke.aead, ke.c2s, ke.s2c, (), ke.keServer
            )
            with self.assertRaises(NTSNoCookies):
                await ntsQuery(reactor, empty)
            self.assertEqual(responder.answered, 0)

        return Deferred.fromCoroutine(exercise())
