"""
Tests for NTS on the NTP service: L{udptime.server.NTPServer} with
L{udptime.ntsserver.NTSAuthentication}, driven through its reply path with a
recording transport and an injected clock, as the port drives it.
"""

from __future__ import annotations

import random

from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from hypothesis import given
from hypothesis import strategies as st
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.fuzzing import FUZZ
from tests.support import RecordingTransport, deliver
from tests.test_ntp_server import SteppingClock, request
from udptime.clock import ClockSource, KernelClock, Leap
from udptime.ntp import HEADER_SIZE, NTPPacket
from udptime.nts import (
    AUTHENTICATOR,
    COOKIE_PLACEHOLDER,
    NTS_COOKIE,
    UNIQUE_IDENTIFIER,
    NotOurReply,
    NTSNakReply,
    ReplyNotAuthenticated,
    authenticatorField,
    buildClientRequest,
    extensionField,
    parseFields,
    readReply,
)
from udptime.ntscookie import COOKIE_SIZE, CookieKeys, SessionKeys
from udptime.ntsserver import NTS_KEY_ROTATION_DEFAULT, NTSAuthentication
from udptime.policy import Policy
from udptime.server import NTPServer
from udptime.services import SERVICES
from udptime.tap import Options

CLIENT = ("192.0.2.7", 40123)
NOW = 1_800_000_000.0
UNSYNCED = KernelClock(synchronised=False, leap=Leap.NONE, maxError=16.0, estError=16.0)


class Client:
    """
    One NTS client's keys and cookies, made with the server keys directly
    (as a key exchange would give them).
    """

    def __init__(self, keys: CookieKeys, seed: int = 7) -> None:
        self.random = random.Random(seed)
        self.session = SessionKeys(self.random.randbytes(32), self.random.randbytes(32))
        self.keys = keys
        self.c2s = AESSIV(self.session.c2s)
        self.s2c = AESSIV(self.session.s2c)
        self.uid = self.random.randbytes(32)

    def request(self, placeholders: int = 0, cookie: bytes | None = None) -> bytes:
        return buildClientRequest(
            request(),
            self.keys.seal(self.session) if cookie is None else cookie,
            placeholders,
            self.c2s,
            self.uid,
            self.random.randbytes(16),
        )


def server(
    nts: bool = True, policy: Policy | None = None
) -> tuple[NTPServer, RecordingTransport, CookieKeys]:
    keys = CookieKeys.generate(NOW)
    protocol = NTPServer(
        clock=SteppingClock(NOW, 0.25),
        clockSource=ClockSource(2, kernel=lambda: UNSYNCED, precision=-20),
        nts=NTSAuthentication(keys) if nts else None,
        policy=policy,
    )
    transport = RecordingTransport()
    protocol.makeConnection(transport)  # type: ignore[arg-type]
    return protocol, transport, keys


def ntsCounters(protocol: NTPServer) -> dict[str, int]:
    assert protocol.nts is not None
    return protocol.nts.counters.snapshot()


class NTSRequestTests(SynchronousTestCase):
    """
    NTS requests get authenticated replies, NAKs, or nothing, as RFC 8915
    section 5 says, and are counted.
    """

    def test_authenticatedReply(self) -> None:
        """
        A valid NTS request gets a reply that echoes its unique identifier,
        authenticates with the S2C key, carries the NTP reply header of a
        plain request (the origin is the request's transmit timestamp) and
        one fresh cookie that opens to the client's keys; it is counted
        answered and authenticated.
        """
        protocol, transport, keys = server()
        client = Client(keys)
        data = client.request()
        deliver(protocol, data, CLIENT, NOW + 1)
        [(reply, addr)] = transport.written
        self.assertEqual(addr, CLIENT)
        cookies, ignored = readReply(reply, client.uid, client.s2c)
        self.assertEqual((len(cookies), ignored), (1, 0))
        self.assertEqual(keys.open(cookies[0]), client.session)
        header = NTPPacket.fromBytes(reply)
        self.assertEqual((header.mode, header.stratum), (4, 2))
        sent = NTPPacket.fromBytes(data)
        self.assertEqual(header.originTimestamp, sent.transmitTimestamp)
        self.assertLessEqual(len(reply), len(data))
        self.assertEqual(protocol.counters.answered, 1)
        self.assertEqual(
            ntsCounters(protocol),
            {
                "authenticated": 1,
                "naks": 0,
                "badAuthenticators": 0,
                "malformed": 0,
                "rateKisses": 0,
                "rateDrops": 0,
            },
        )

    def test_replyHeaderIsPlainReply(self) -> None:
        """
        The header of an NTS request's reply is byte for byte the reply a
        server without NTS gives the request's header alone, with the same
        clock and random bits.
        """
        headers = []
        for nts in (True, False):
            protocol, transport, keys = server(nts)
            data = Client(keys).request()
            random.seed(12345)
            deliver(protocol, data if nts else data[:HEADER_SIZE], CLIENT, NOW + 1)
            [(reply, _)] = transport.written
            headers.append(reply[:HEADER_SIZE])
        self.assertEqual(headers[0], headers[1])

    def test_placeholders(self) -> None:
        """
        Each placeholder of the cookie's length brings one more cookie, and
        the reply is no longer than the request.
        """
        protocol, transport, keys = server()
        client = Client(keys)
        data = client.request(placeholders=7)
        deliver(protocol, data, CLIENT, NOW + 1)
        [(reply, _)] = transport.written
        cookies, _ = readReply(reply, client.uid, client.s2c)
        self.assertEqual(len(cookies), 8)
        self.assertTrue(all(len(cookie) == COOKIE_SIZE for cookie in cookies))
        self.assertLessEqual(len(reply), len(data))

    def test_unknownKeyNak(self) -> None:
        """
        A request whose cookie was sealed with keys the server does not hold
        gets an NTS NAK: a Kiss-o'-Death NTSN that echoes the unique
        identifier, with no authenticator and none of the server's time.
        It is counted dropped, kissed and as a NAK.
        """
        protocol, transport, _ = server()
        client = Client(CookieKeys.generate(NOW))
        data = client.request()
        deliver(protocol, data, CLIENT, NOW + 1)
        [(reply, _)] = transport.written
        self.assertRaises(NTSNakReply, readReply, reply, client.uid, client.s2c)
        header = NTPPacket.fromBytes(reply)
        self.assertEqual((header.leap, header.stratum, header.refid), (3, 0, b"NTSN"))
        self.assertEqual(header.receiveTimestamp, header.originTimestamp)
        self.assertEqual([t for t, _, _ in parseFields(reply)], [UNIQUE_IDENTIFIER])
        self.assertLessEqual(len(reply), len(data))
        counts = protocol.counters.snapshot()
        self.assertEqual(
            (counts["dropped"], counts["kissed"], counts["answered"]), (1, 1, 0)
        )
        self.assertEqual(ntsCounters(protocol)["naks"], 1)

    def test_badAuthenticatorDropped(self) -> None:
        """
        A request whose cookie opens but whose authenticator does not verify
        (one bit flipped in it) gets no reply: dropped and counted.
        """
        protocol, transport, keys = server()
        data = bytearray(Client(keys).request())
        data[-1] ^= 1
        deliver(protocol, bytes(data), CLIENT, NOW + 1)
        self.assertEqual(transport.written, [])
        self.assertEqual(protocol.counters.dropped, 1)
        self.assertEqual(ntsCounters(protocol)["badAuthenticators"], 1)

    def test_tamperedHeaderDropped(self) -> None:
        """
        The authenticator covers the header: a request whose poll byte was
        changed on the way gets no reply.
        """
        protocol, transport, keys = server()
        data = bytearray(Client(keys).request())
        data[2] ^= 1
        deliver(protocol, bytes(data), CLIENT, NOW + 1)
        self.assertEqual(transport.written, [])
        self.assertEqual(ntsCounters(protocol)["badAuthenticators"], 1)

    def test_malformedDropped(self) -> None:
        """
        NTS fields without a unique identifier are not an NTS request: the
        request is dropped as malformed, and counted.
        """
        protocol, transport, keys = server()
        client = Client(keys)
        fields = extensionField(NTS_COOKIE, keys.seal(client.session))
        fields += extensionField(AUTHENTICATOR, bytes(40))
        deliver(protocol, request() + fields, CLIENT, NOW + 1)
        self.assertEqual(transport.written, [])
        self.assertEqual(protocol.counters.malformed, 1)
        self.assertEqual(ntsCounters(protocol)["malformed"], 1)

    def test_otherExtensionFields(self) -> None:
        """
        A request with extension fields that are not NTS gets the plain
        48-byte reply, as without NTS; nothing NTS is counted.
        """
        protocol, transport, _ = server()
        data = request() + extensionField(0x7777, bytes(28))
        deliver(protocol, data, CLIENT, NOW + 1)
        [(reply, _)] = transport.written
        self.assertEqual(len(reply), HEADER_SIZE)
        self.assertEqual(sum(ntsCounters(protocol).values()), 0)

    def test_cookiesOfOneServerOpenAtAnother(self) -> None:
        """
        Two servers with the same keys (two workers, or two hosts sharing a
        key file) accept each other's fresh cookies.
        """
        first, firstTransport, keys = server()
        second = NTPServer(
            clock=SteppingClock(NOW, 0.25),
            clockSource=ClockSource(2, kernel=lambda: UNSYNCED),
            nts=NTSAuthentication(keys),
        )
        secondTransport = RecordingTransport()
        second.makeConnection(secondTransport)  # type: ignore[arg-type]
        client = Client(keys)
        deliver(first, client.request(), CLIENT, NOW + 1)
        [(reply, _)] = firstTransport.written
        [cookie], _ = readReply(reply, client.uid, client.s2c)
        deliver(second, client.request(cookie=cookie), CLIENT, NOW + 2)
        [(again, _)] = secondTransport.written
        readReply(again, client.uid, client.s2c)
        self.assertEqual(ntsCounters(second)["authenticated"], 1)

    def test_placeholderOfOtherLengthNotCounted(self) -> None:
        """
        A placeholder shorter than the cookie brings no cookie (RFC 8915
        section 5.5: the reply must not grow past the request).
        """
        protocol, transport, keys = server()
        client = Client(keys)
        cookie = keys.seal(client.session)
        associated = (
            request()
            + extensionField(UNIQUE_IDENTIFIER, client.uid)
            + extensionField(NTS_COOKIE, cookie)
            + extensionField(COOKIE_PLACEHOLDER, bytes(16))
        )
        data = associated + authenticatorField(
            client.c2s, associated, b"", client.random.randbytes(16)
        )
        deliver(protocol, data, CLIENT, NOW + 1)
        [(reply, _)] = transport.written
        cookies, _ = readReply(reply, client.uid, client.s2c)
        self.assertEqual(len(cookies), 1)


def limitedServer() -> tuple[NTPServer, RecordingTransport, CookieKeys]:
    """
    An NTP server with NTS and the twistd plugin's NTP policy, with a rate
    limit of one request per second, a burst of one and no leak: of the
    requests of one client at one time, the first is answered, the second
    picked for a Kiss-o'-Death, the others dropped.
    """
    return server(policy=SERVICES["ntp"].policy(rate=1.0, burst=1, leak=0.0))


class RateLimitedTests(SynchronousTestCase):
    """
    An NTS request the rate limits refuse gets an authenticated
    Kiss-o'-Death C{RATE} when it is authentic (as chrony's server sends),
    nothing otherwise; both are counted.
    """

    def assertForgedAfter(self, authentic: int, expected: dict[str, int]) -> None:
        """
        Send a limited server C{authentic} authentic requests of one client,
        then one more whose authenticator's last byte is flipped: the
        server answers C{authentic} of them (the first, and the KoD of the
        second when there is one), counts as many limited, and has the NTS
        counts C{expected}.
        """
        protocol, transport, keys = limitedServer()
        client = Client(keys)
        for _ in range(authentic):
            deliver(protocol, client.request(), CLIENT, NOW + 1)
        data = bytearray(client.request())
        data[-1] ^= 1
        deliver(protocol, bytes(data), CLIENT, NOW + 1)
        self.assertEqual(len(transport.written), authentic)
        self.assertEqual(protocol.counters.limited, authentic)
        nts = ntsCounters(protocol)
        self.assertEqual({name: nts[name] for name in expected}, expected)

    def test_authenticatedKiss(self) -> None:
        """
        An authentic NTS request picked for a KoD gets a KoD C{RATE} that
        an NTS client accepts: it echoes the unique identifier and carries
        an authenticator, with a fresh cookie, that verifies with the S2C
        key; like the plain KoD it reveals none of the server's time, and
        it is no longer than the request.  It is counted limited, kissed
        and as an NTS rate kiss, not as an authenticated answer.
        """
        protocol, transport, keys = limitedServer()
        client = Client(keys)
        deliver(protocol, client.request(), CLIENT, NOW + 1)
        data = client.request()
        deliver(protocol, data, CLIENT, NOW + 1)
        [_, (kiss, addr)] = transport.written
        self.assertEqual(addr, CLIENT)
        cookies, ignored = readReply(kiss, client.uid, client.s2c)
        self.assertEqual((len(cookies), ignored), (1, 0))
        self.assertEqual(keys.open(cookies[0]), client.session)
        header = NTPPacket.fromBytes(kiss)
        self.assertEqual(
            (header.leap, header.mode, header.stratum, header.refid),
            (3, 4, 0, b"RATE"),
        )
        transmit = NTPPacket.fromBytes(data).transmitTimestamp
        self.assertEqual(
            (header.originTimestamp, header.receiveTimestamp, header.transmitTimestamp),
            (transmit, transmit, transmit),
        )
        self.assertLessEqual(len(kiss), len(data))
        counts = protocol.counters.snapshot()
        self.assertEqual(
            (counts["answered"], counts["limited"], counts["kissed"]), (1, 1, 1)
        )
        nts = ntsCounters(protocol)
        self.assertEqual(
            (nts["authenticated"], nts["rateKisses"], nts["rateDrops"]), (1, 1, 0)
        )

    def test_placeholdersKeepTheKissWithinTheRequest(self) -> None:
        """
        A limited request with placeholders gets its cookies in the KoD,
        never growing it past the request.
        """
        protocol, transport, keys = limitedServer()
        client = Client(keys)
        deliver(protocol, client.request(), CLIENT, NOW + 1)
        data = client.request(placeholders=3)
        deliver(protocol, data, CLIENT, NOW + 1)
        [_, (kiss, _)] = transport.written
        cookies, _ = readReply(kiss, client.uid, client.s2c)
        self.assertEqual(len(cookies), 4)
        self.assertLessEqual(len(kiss), len(data))

    def test_unopenedCookieDropped(self) -> None:
        """
        A limited NTS request whose cookie cannot be opened gets nothing,
        not even the NAK it got unlimited; it is counted limited and as an
        NTS rate drop.
        """
        protocol, transport, _ = limitedServer()
        client = Client(CookieKeys.generate(NOW))
        deliver(protocol, client.request(), CLIENT, NOW + 1)
        deliver(protocol, client.request(), CLIENT, NOW + 1)
        [(nak, _)] = transport.written
        self.assertRaises(NTSNakReply, readReply, nak, client.uid, client.s2c)
        counts = protocol.counters.snapshot()
        self.assertEqual((counts["limited"], counts["kissed"]), (1, 1))
        nts = ntsCounters(protocol)
        self.assertEqual((nts["naks"], nts["rateKisses"], nts["rateDrops"]), (1, 0, 1))

    def test_badAuthenticatorDropped(self) -> None:
        """
        A limited NTS request whose authenticator does not verify gets
        nothing: counted a bad authenticator and an NTS rate drop.
        """
        self.assertForgedAfter(1, {"badAuthenticators": 1, "rateDrops": 1})

    def test_otherExtensionFieldsPlainKiss(self) -> None:
        """
        A limited request whose extension fields are not NTS gets the plain
        48-byte KoD, as without NTS.
        """
        protocol, transport, _ = limitedServer()
        data = request() + extensionField(0x7777, bytes(28))
        deliver(protocol, data, CLIENT, NOW + 1)
        deliver(protocol, data, CLIENT, NOW + 1)
        [_, (kiss, _)] = transport.written
        self.assertEqual(len(kiss), HEADER_SIZE)
        self.assertEqual(NTPPacket.fromBytes(kiss).refid, b"RATE")
        self.assertEqual(sum(ntsCounters(protocol).values()), 0)

    def test_droppedUnchecked(self) -> None:
        """
        Limited requests not picked for a KoD are dropped before NTS looks
        at them: a forged one is not even counted as a bad authenticator.
        """
        self.assertForgedAfter(2, {"rateKisses": 1, "badAuthenticators": 0})

    def test_withoutNTSPlainKiss(self) -> None:
        """
        A server without NTS answers a limited NTS request with the plain
        KoD, as it answers NTS requests as plain ones.
        """
        protocol, transport, keys = server(
            nts=False, policy=SERVICES["ntp"].policy(rate=1.0, burst=1, leak=0.0)
        )
        client = Client(keys)
        deliver(protocol, client.request(), CLIENT, NOW + 1)
        deliver(protocol, client.request(), CLIENT, NOW + 1)
        [_, (kiss, _)] = transport.written
        self.assertEqual(len(kiss), HEADER_SIZE)
        self.assertEqual(NTPPacket.fromBytes(kiss).refid, b"RATE")


class PlainRequestTests(SynchronousTestCase):
    """
    Plain NTP is the same with NTS on as without it.
    """

    def test_sameReplies(self) -> None:
        """
        Plain requests of every version, a symmetric active request and one
        with a non-NTS extension field get byte for byte the reply of a
        server without NTS (with the same clock and random bits).
        """
        requests = [request(version) for version in (1, 2, 3, 4)]
        requests += [request(4, 1), request() + extensionField(0x7777, bytes(28))]
        replies = []
        for nts in (False, True):
            protocol, transport, _ = server(nts)
            random.seed(12345)
            for received, data in enumerate(requests):
                deliver(protocol, data, CLIENT, NOW + received)
            replies.append([data for data, _ in transport.written])
        self.assertEqual(len(replies[0]), len(requests))
        self.assertEqual(replies[0], replies[1])


FIELD_TYPES = [UNIQUE_IDENTIFIER, NTS_COOKIE, COOKIE_PLACEHOLDER, AUTHENTICATOR, 9]


class FuzzTests(SynchronousTestCase):
    """
    Nothing sent to an NTP server with NTS raises out of it.
    """

    @FUZZ
    @given(
        fields=st.lists(
            st.tuples(
                st.sampled_from(
                    [
                        UNIQUE_IDENTIFIER,
                        NTS_COOKIE,
                        COOKIE_PLACEHOLDER,
                        AUTHENTICATOR,
                        9,
                    ]
                ),
                st.binary(max_size=120),
            ),
            max_size=5,
        ),
        tail=st.binary(max_size=8),
    )
    def test_fieldsNeverRaise(
        self, fields: list[tuple[int, bytes]], tail: bytes
    ) -> None:
        """
        Any sequence of NTS-typed extension fields, with or without stray
        bytes after them, is answered, NAKed or dropped: never an internal
        error.
        """
        protocol, _, _ = server()
        data = request() + b"".join(extensionField(t, b) for t, b in fields) + tail
        deliver(protocol, data, CLIENT, NOW + 1)
        self.assertEqual(protocol.counters.internalErrors, 0)

    @FUZZ
    @given(position=st.integers(min_value=0), bit=st.integers(0, 7))
    def test_flippedBitNeverAnswered(self, position: int, bit: int) -> None:
        """
        A valid request with any one bit flipped is never answered with an
        authenticated reply: it is dropped, or NAKed (a flip in the cookie),
        or, a flip in the header's mode or version, not served.
        """
        protocol, transport, keys = server()
        client = Client(keys)
        data = bytearray(client.request())
        data[position % len(data)] ^= 1 << bit
        deliver(protocol, bytes(data), CLIENT, NOW + 1)
        self.assertEqual(protocol.counters.internalErrors, 0)
        self.assertEqual(ntsCounters(protocol)["authenticated"], 0)
        for reply, _ in transport.written:
            self.assertRaises(
                (NTSNakReply, NotOurReply, ReplyNotAuthenticated),
                readReply,
                reply,
                client.uid,
                client.s2c,
            )

    @FUZZ
    @given(position=st.integers(min_value=0), bit=st.integers(0, 7))
    def test_flippedBitLimitedNeverAnswered(self, position: int, bit: int) -> None:
        """
        A limited request with any one bit flipped never gets a KoD longer
        than itself, nor one that authenticates.
        """
        protocol, transport, keys = limitedServer()
        client = Client(keys)
        deliver(protocol, client.request(), CLIENT, NOW + 1)
        data = bytearray(client.request())
        data[position % len(data)] ^= 1 << bit
        deliver(protocol, bytes(data), CLIENT, NOW + 1)
        self.assertEqual(protocol.counters.internalErrors, 0)
        self.assertEqual(ntsCounters(protocol)["rateKisses"], 0)
        for reply, _ in transport.written[1:]:
            self.assertLessEqual(len(reply), len(data))
            self.assertRaises(
                (NotOurReply, ReplyNotAuthenticated),
                readReply,
                reply,
                client.uid,
                client.s2c,
            )


class DefaultsTests(SynchronousTestCase):
    """
    The server's NTS defaults agree with the codecs'.
    """

    def test_rotation(self) -> None:
        """
        The plugin's default rotation is the key codec's (a week).
        """
        from udptime.ntscookie import DEFAULT_ROTATION

        self.assertEqual(NTS_KEY_ROTATION_DEFAULT, DEFAULT_ROTATION)


class OptionsTests(SynchronousTestCase):
    """
    The NTS options of C{twistd udptime}.
    """

    def parse(self, *arguments: str) -> Options:
        options = Options()
        options.parseOptions(list(arguments))
        return options

    def test_keyExchange(self) -> None:
        """
        The NTS-KE service takes a port, a certificate and a key; NTS is
        then on, also for a server that serves only the key exchange.
        """
        options = self.parse(
            "--port",
            "0",
            "--nts-ke-port",
            "4460",
            "--nts-certificate",
            "cert.pem",
            "--nts-private-key",
            "key.pem",
        )
        self.assertEqual(options["nts-ke-port"], 4460)
        self.assertTrue(options.ntsEnabled())
        self.assertEqual(options["nts-key-rotation"], NTS_KEY_ROTATION_DEFAULT)
        self.assertFalse(self.parse().ntsEnabled())

    def test_keyFileAlone(self) -> None:
        """
        An NTP server with a key file serves NTS without a key exchange of
        its own; a key file with neither NTP nor NTS-KE is refused.
        """
        self.assertTrue(
            self.parse(
                "--ntp-port", "123", "--nts-key-file", "keys", "--nts-key-rotation", "0"
            ).ntsEnabled()
        )
        error = self.assertRaises(
            usage.UsageError, self.parse, "--nts-key-file", "keys"
        )
        self.assertIn("--nts-key-file is for NTS", str(error))

    def test_refused(self) -> None:
        """
        Options that do not fit say which, in one line.
        """
        tls = ("--nts-certificate", "c", "--nts-private-key", "k")
        for arguments, reason in [
            (
                ("--nts-ke-port", "4460"),
                "--nts-ke-port needs --nts-certificate and --nts-private-key",
            ),
            (
                ("--nts-ke-port", "4460", "--nts-certificate", "c"),
                "--nts-ke-port needs --nts-certificate and --nts-private-key",
            ),
            (
                ("--nts-certificate", "c"),
                "--nts-certificate is for the NTS-KE service: give --nts-ke-port",
            ),
            (
                ("--nts-ntp-port", "123"),
                "--nts-ntp-port is for the NTS-KE service: give --nts-ke-port",
            ),
            (
                ("--nts-ke-port", "4460", *tls, "--nts-ntp-port", "0"),
                "--nts-ntp-port: '0' is not a port number from 1 to 65535",
            ),
            (
                ("--nts-ke-port", "4460", *tls, "--nts-key-rotation", "-1"),
                "--nts-key-rotation: '-1' is not 0, or a number of seconds > 0",
            ),
            (
                ("--nts-ke-port", "4460", *tls, "--nts-ntp-server", "no such host"),
                "--nts-ntp-server: 'no such host' is not a host name or address",
            ),
            (
                ("--nts-ke-port", "4460", *tls, "--nts-certificate", ""),
                "--nts-certificate: an empty file name",
            ),
        ]:
            with self.subTest(arguments=arguments):
                error = self.assertRaises(usage.UsageError, self.parse, *arguments)
                self.assertTrue(str(error).startswith(reason), str(error))
