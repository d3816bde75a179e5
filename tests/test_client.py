"""
The client library: L{udptime.client.query} on a fake reactor (timeouts,
retries, source checks, cancellation, clean-up, the result it assembles from
each codec's reading) and on real loopback sockets against
L{TextTimeServer}.
"""

from __future__ import annotations

import errno
import socket
from datetime import UTC
from typing import Any

from twisted.internet import error
from twisted.internet import reactor as globalReactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import freePort
from udptime import daytime, echo, ntp, rfc868, text
from udptime.client import query, sameAddress
from udptime.clock import unixToNTP64
from udptime.reading import (
    UNAUTHENTICATED,
    BadReply,
    LookupTimeout,
    QueryError,
    QueryResult,
    QueryTimeout,
    ServerRefused,
)
from udptime.server import TextTimeServer
from udptime.service import bindUDPSocket
from udptime.text import TextClientCodec

SERVER = ("127.0.0.1", 5000)


class FakePort:
    """
    A UDP port of L{FakeReactor}: records what is written.
    """

    def __init__(
        self, reactor: FakeReactor, protocol: DatagramProtocol, interface: str
    ) -> None:
        self.reactor = reactor
        self.protocol = protocol
        self.interface = interface
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.closed = False
        self.closing: Deferred[None] | None = None

    def write(self, datagram: bytes, addr: tuple[str, int]) -> None:
        if self.reactor.sendError is not None:
            raise self.reactor.sendError
        if addr[0] in self.reactor.unreachable:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        self.written.append((datagram, addr))

    def stopListening(self) -> Deferred[None] | None:
        self.closed = True
        if self.reactor.closeLater:
            self.closing = Deferred()
            return self.closing
        return None

    def receive(self, datagram: bytes, addr: tuple[str, int] = SERVER) -> None:
        """
        Deliver a datagram as the reactor would (nothing once closed).
        """
        if not self.closed:
            self.protocol.datagramReceived(datagram, addr)


class FakeResolver:
    """
    A name resolver whose answers the test gives.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, Any, str]] = []
        self.receivers: list[Any] = []

    def resolveHostName(
        self,
        receiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> None:
        self.calls.append((hostName, portNumber, addressTypes, transportSemantics))
        self.receivers.append(receiver)
        receiver.resolutionBegan(object())

    def answer(self, *addresses: Any) -> None:
        receiver = self.receivers.pop(0)
        for address in addresses:
            receiver.addressResolved(address)
        receiver.resolutionComplete()


class FakeReactor(Clock):
    """
    A L{Clock} with fake UDP ports and a fake name resolver.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakePort] = []
        self.nameResolver = FakeResolver()
        self.sendError: BaseException | None = None
        self.unreachable: set[str] = set()
        self.noSockets: set[str] = set()
        self.closeLater = False

    def listenUDP(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,
    ) -> FakePort:
        assert port == 0
        assert maxPacketSize >= 65507
        if interface in self.noSockets:
            raise error.CannotListenError(
                interface,
                port,
                OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol"),
            )
        fake = FakePort(self, protocol, interface)
        self.ports.append(fake)
        protocol.makeConnection(fake)  # type: ignore[arg-type]
        return fake


class SteppingClock:
    """
    A wall clock that reads C{start}, then advances by C{step} per read.
    """

    def __init__(self, start: float = 1000.0, step: float = 0.25) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> float:
        now = self.now
        self.now += self.step
        return now


def ask(
    testCase: SynchronousTestCase,
    host: str = "127.0.0.1",
    codec: Any = None,
    **kwargs: Any,
) -> tuple[FakeReactor, Deferred[QueryResult]]:
    reactor = FakeReactor()
    kwargs.setdefault("clock", SteppingClock())
    d = query(reactor, host, codec or TextClientCodec("unix", token=False), **kwargs)
    return reactor, d


class QueryTests(SynchronousTestCase):
    """
    L{query} on a fake reactor.
    """

    def assertClean(self, reactor: FakeReactor) -> None:
        """
        Every port is closed and no timer is left.
        """
        self.assertTrue(all(port.closed for port in reactor.ports))
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_answered(self) -> None:
        """
        The request goes from a port on every address to the server; its
        reply gives the result, timed by the injected wall clock.
        """
        reactor, d = ask(self, port=5000)
        [port] = reactor.ports
        self.assertEqual(port.interface, "0.0.0.0")
        self.assertEqual(port.written, [(b"unix", SERVER)])
        self.assertNoResult(d)
        port.receive(b"1001.000000\n")
        result = self.successResultOf(d)
        self.assertEqual(result.protocol, "text")
        self.assertEqual((result.host, result.port), SERVER)
        self.assertEqual(result.text, "1001.000000")
        self.assertEqual(result.reply, b"1001.000000\n")
        self.assertEqual(result.serverTime, 1001.0)
        # Sent at 1000.0, received at 1000.25.
        self.assertEqual(result.delay, 0.25)
        self.assertEqual(result.offset, 1001.0 - 1000.125)
        self.assertClean(reactor)

    def test_defaultPort(self) -> None:
        """
        Without a port the codec's default port is used.
        """
        reactor, d = ask(self)
        self.assertEqual(reactor.ports[0].written[0][1], ("127.0.0.1", 5000))
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def test_ipv6(self) -> None:
        """
        An IPv6 server is asked from an IPv6 port, and named in brackets.
        """
        reactor, d = ask(self, "::1", port=5001, retries=1)
        [port] = reactor.ports
        self.assertEqual(port.interface, "::")
        self.assertEqual(port.written, [(b"unix", ("::1", 5001))])
        reactor.advance(1)
        failure = self.failureResultOf(d, QueryTimeout)
        self.assertEqual(str(failure.value), "no reply from [::1]:5001 after 1 try")

    def test_retries(self) -> None:
        """
        Each try waits C{timeout} seconds on a new port, the old one closed;
        after the last the query fails with L{QueryTimeout}.
        """
        reactor, d = ask(self, timeout=2.0, retries=3)
        reactor.advance(1.9)
        self.assertEqual(len(reactor.ports), 1)
        reactor.advance(0.1)
        self.assertEqual(len(reactor.ports), 2)
        self.assertTrue(reactor.ports[0].closed)
        self.assertFalse(reactor.ports[1].closed)
        reactor.advance(2.0)
        self.assertEqual(len(reactor.ports), 3)
        self.assertNoResult(d)
        reactor.advance(2.0)
        failure = self.failureResultOf(d, QueryTimeout)
        self.assertEqual(
            str(failure.value), "no reply from 127.0.0.1:5000 after 3 tries"
        )
        self.assertEqual(len(reactor.ports), 3)
        for port in reactor.ports:
            self.assertEqual(port.written, [(b"unix", SERVER)])
        self.assertClean(reactor)

    def test_answerOnLaterTry(self) -> None:
        """
        A reply to the second try ends the query.
        """
        reactor, d = ask(self, retries=3)
        reactor.advance(1.0)
        reactor.ports[1].receive(b"5.000000\n")
        self.assertEqual(self.successResultOf(d).serverTime, 5.0)
        self.assertEqual(len(reactor.ports), 2)
        self.assertClean(reactor)

    def test_lateReplyToEarlierTry(self) -> None:
        """
        A reply reaching an earlier try's protocol is not taken for the
        reply to the current try.
        """
        reactor, d = ask(self, retries=2)
        first = reactor.ports[0]
        reactor.advance(1.0)
        first.protocol.datagramReceived(b"1.000000\n", SERVER)
        self.assertNoResult(d)
        reactor.ports[1].receive(b"2.000000\n")
        self.assertEqual(self.successResultOf(d).serverTime, 2.0)

    def test_otherSources(self) -> None:
        """
        Datagrams from another address or port are ignored.
        """
        reactor, d = ask(self)
        port = reactor.ports[0]
        for source in (
            ("127.0.0.2", 5000),
            ("127.0.0.1", 5001),
            ("::1", 5000),
            ("::ffff:127.0.0.2", 5000),
            ("not an address", 5000),
        ):
            port.receive(b"1.000000\n", source)
        self.assertNoResult(d)
        port.receive(b"7.000000\n", SERVER)
        self.assertEqual(self.successResultOf(d).serverTime, 7.0)

    def test_mappedSource(self) -> None:
        """
        An IPv4-mapped IPv6 address is the same as its IPv4 address.
        """
        reactor, d = ask(self)
        reactor.ports[0].receive(b"1.000000\n", ("::ffff:127.0.0.1", 5000))
        self.assertEqual(self.successResultOf(d).serverTime, 1.0)

        reactor, d = ask(self, "::ffff:127.0.0.1")
        self.assertEqual(reactor.ports[0].interface, "::")
        reactor.ports[0].receive(b"2.000000\n", ("::ffff:127.0.0.1", 5000))
        self.assertEqual(self.successResultOf(d).serverTime, 2.0)

    def test_sameAddress(self) -> None:
        """
        L{sameAddress} compares addresses, not their spelling.
        """
        self.assertTrue(sameAddress(("::1", 1), ("0:0::1", 1)))
        self.assertTrue(sameAddress(("127.0.0.1", 1), ("::ffff:7f00:1", 1)))
        self.assertFalse(sameAddress(("127.0.0.1", 1), ("127.0.0.1", 2)))
        self.assertFalse(sameAddress(("127.0.0.1", 1), ("::1", 1)))
        self.assertFalse(sameAddress(("localhost", 1), ("localhost", 1)))

    def test_mismatchReported(self) -> None:
        """
        When every try times out but the server sent datagrams the codec
        rejected, the failure says how many and why: the wrong port or
        protocol is likelier than lost replies.  Datagrams from elsewhere
        are not counted.
        """
        reactor, d = ask(self, timeout=1.0, retries=2)
        reactor.ports[0].receive(b"\x00\x00\x00\x01")
        reactor.ports[0].receive(b"stray\n", ("127.0.0.1", 9))
        reactor.advance(1.0)
        reactor.ports[1].receive(b"no newline")
        reactor.advance(1.0)
        failure = self.failureResultOf(d, QueryTimeout)
        self.assertEqual(
            str(failure.value),
            "no reply from 127.0.0.1:5000 after 2 tries (2 datagrams from it not"
            " text replies: the reply does not end with a line feed; wrong port"
            " or protocol?)",
        )

    def test_mismatchIgnored(self) -> None:
        """
        Datagrams the codec rejects with L{ReplyMismatch} are ignored and
        the query goes on waiting.
        """
        reactor, d = ask(self)
        port = reactor.ports[0]
        for junk in (b"\xff\xfe\n", b"no newline", b"two\nlines\n", b""):
            port.receive(junk)
        self.assertNoResult(d)
        port.receive(b"3.000000\n")
        self.assertEqual(self.successResultOf(d).serverTime, 3.0)

    def test_refused(self) -> None:
        """
        An C{error:} line fails the query at once with L{ServerRefused}.
        """
        reactor, d = ask(self, codec=TextClientCodec("month 13", token=False))
        reactor.ports[0].receive(
            b"error: month must be a number from 1 to 12, not '13'\n"
        )
        failure = self.failureResultOf(d, ServerRefused)
        self.assertEqual(
            str(failure.value),
            "error from 127.0.0.1:5000: month must be a number from 1 to 12, not '13'",
        )
        self.assertEqual(len(reactor.ports), 1)
        self.assertClean(reactor)

    def test_codecBug(self) -> None:
        """
        An unexpected exception from the codec fails the query with it.
        """

        class Broken(TextClientCodec):
            def parseReply(self, *args: Any) -> QueryResult:
                raise ZeroDivisionError()

        reactor, d = ask(self, codec=Broken())
        reactor.ports[0].receive(b"1.0\n")
        self.failureResultOf(d, ZeroDivisionError)
        self.assertClean(reactor)

    def test_cancel(self) -> None:
        """
        Cancelling the query closes its port and stops its timer.
        """
        reactor, d = ask(self)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertClean(reactor)
        reactor.advance(10)
        self.assertEqual(len(reactor.ports), 1)

    def test_cancelWhileResolving(self) -> None:
        """
        A query cancelled before its name is resolved sends nothing.
        """
        reactor, d = ask(self, "time.example")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        reactor.nameResolver.answer(IPv4Address("UDP", "127.0.0.1", 5000))
        self.assertEqual(reactor.ports, [])
        self.assertClean(reactor)

    def test_firesAfterClose(self) -> None:
        """
        The result is delivered once the port has finished closing.
        """
        reactor = FakeReactor()
        reactor.closeLater = True
        d = query(
            reactor, "127.0.0.1", TextClientCodec(token=False), clock=SteppingClock()
        )
        port = reactor.ports[0]
        port.receive(b"2018-03-13T12:54:58.123456+00:00\n")
        self.assertTrue(port.closed)
        self.assertNoResult(d)
        assert port.closing is not None
        port.closing.callback(None)
        self.assertEqual(self.successResultOf(d).serverTime, 1520945698.123456)

    def test_retryAfterClose(self) -> None:
        """
        The next try starts once the previous port has closed.
        """
        reactor = FakeReactor()
        reactor.closeLater = True
        d = query(
            reactor, "127.0.0.1", TextClientCodec(token=False), clock=SteppingClock()
        )
        reactor.advance(1.0)
        self.assertEqual(len(reactor.ports), 1)
        assert reactor.ports[0].closing is not None
        reactor.ports[0].closing.callback(None)
        self.assertEqual(len(reactor.ports), 2)
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def test_resolve(self) -> None:
        """
        A host name is resolved, for UDP, to IPv4 or IPv6 addresses; the
        first address is asked.
        """
        reactor, d = ask(self, "time.example", port=123)
        self.assertEqual(reactor.ports, [])
        [(name, portNumber, types, semantics)] = reactor.nameResolver.calls
        self.assertEqual((name, portNumber, semantics), ("time.example", 123, "UDP"))
        self.assertEqual(set(types), {IPv4Address, IPv6Address})
        reactor.nameResolver.answer(
            IPv6Address("UDP", "2001:db8::1", 123),
            IPv4Address("UDP", "192.0.2.1", 123),
        )
        [port] = reactor.ports
        self.assertEqual(port.interface, "::")
        self.assertEqual(port.written, [(b"unix", ("2001:db8::1", 123))])
        port.receive(b"1.5\n", ("2001:db8::1", 123))
        result = self.successResultOf(d)
        self.assertEqual((result.host, result.port), ("2001:db8::1", 123))

    def test_addressesInTurn(self) -> None:
        """
        A name's addresses are asked in turn, one per try, each from a
        socket of its family; only the current try's address is listened
        to.
        """
        reactor, d = ask(self, "time.example", port=123, retries=3)
        reactor.nameResolver.answer(
            IPv6Address("UDP", "2001:db8::1", 123),
            IPv4Address("UDP", "192.0.2.1", 123),
            IPv4Address("UDP", "192.0.2.1", 123),
        )
        reactor.advance(1.0)
        first, second = reactor.ports
        self.assertTrue(first.closed)
        self.assertEqual((first.interface, second.interface), ("::", "0.0.0.0"))
        self.assertEqual(first.written, [(b"unix", ("2001:db8::1", 123))])
        self.assertEqual(second.written, [(b"unix", ("192.0.2.1", 123))])
        second.receive(b"1.5\n", ("2001:db8::1", 123))
        self.assertNoResult(d)
        second.receive(b"2.5\n", ("192.0.2.1", 123))
        result = self.successResultOf(d)
        self.assertEqual((result.host, result.serverTime), ("192.0.2.1", 2.5))
        self.assertClean(reactor)

    def test_addressesTimeout(self) -> None:
        """
        Tries go round a name's addresses; when all go unanswered the
        failure names every address asked.
        """
        reactor, d = ask(self, "time.example", port=123, retries=3)
        reactor.nameResolver.answer(
            IPv6Address("UDP", "2001:db8::1", 123),
            IPv4Address("UDP", "192.0.2.1", 123),
        )
        reactor.advance(1.0)
        reactor.advance(1.0)
        reactor.advance(1.0)
        hosts = [port.written[0][1][0] for port in reactor.ports]
        self.assertEqual(hosts, ["2001:db8::1", "192.0.2.1", "2001:db8::1"])
        failure = self.failureResultOf(d, QueryTimeout)
        self.assertEqual(
            str(failure.value),
            "no reply from [2001:db8::1]:123, 192.0.2.1:123 after 3 tries",
        )
        self.assertClean(reactor)

    def test_unreachableAddressSkipped(self) -> None:
        """
        An address the request cannot be sent to (no route for its family)
        is dropped at once, and its try goes to the next address; the
        failed send does not use up a try.
        """
        reactor, d = ask(self, "time.example", port=123, retries=1)
        reactor.unreachable.add("2001:db8::1")
        reactor.nameResolver.answer(
            IPv6Address("UDP", "2001:db8::1", 123),
            IPv4Address("UDP", "192.0.2.1", 123),
        )
        first, second = reactor.ports
        self.assertTrue(first.closed)
        self.assertEqual(second.written, [(b"unix", ("192.0.2.1", 123))])
        reactor.advance(1.0)
        failure = self.failureResultOf(d, QueryTimeout)
        self.assertEqual(str(failure.value), "no reply from 192.0.2.1:123 after 1 try")
        self.assertClean(reactor)

    def test_everyAddressUnreachable(self) -> None:
        """
        When no address can be sent to, the query fails with the last
        address's reason, without waiting.
        """
        reactor, d = ask(self, "time.example", port=123)
        reactor.unreachable.update({"2001:db8::1", "192.0.2.1"})
        reactor.nameResolver.answer(
            IPv6Address("UDP", "2001:db8::1", 123),
            IPv4Address("UDP", "192.0.2.1", 123),
        )
        failure = self.failureResultOf(d, QueryError)
        self.assertEqual(
            str(failure.value),
            "cannot send to 192.0.2.1:123: Network is unreachable",
        )
        self.assertEqual(len(reactor.ports), 2)
        self.assertClean(reactor)

    def test_noSocketOfAFamily(self) -> None:
        """
        An address whose family has no socket here (IPv6 turned off) is
        dropped as an unreachable one is: its try goes to the next address;
        with none left, the query fails saying why.
        """
        reactor, d = ask(self, "time.example", port=123, retries=1)
        reactor.noSockets.add("::")
        reactor.nameResolver.answer(
            IPv6Address("UDP", "2001:db8::1", 123),
            IPv4Address("UDP", "192.0.2.1", 123),
        )
        [only] = reactor.ports
        self.assertEqual(only.written, [(b"unix", ("192.0.2.1", 123))])
        only.receive(b"1.5\n", ("192.0.2.1", 123))
        self.assertEqual(self.successResultOf(d).text, "1.5")
        self.assertClean(reactor)
        reactor = FakeReactor()
        reactor.noSockets.add("::")
        d = query(
            reactor,
            "::1",
            TextClientCodec("unix", token=False),
            port=123,
            clock=SteppingClock(),
        )
        failure = self.failureResultOf(d, QueryError)
        self.assertEqual(
            str(failure.value),
            "cannot open a UDP socket to ask [::1]:123:"
            " Address family not supported by protocol",
        )
        self.assertEqual(reactor.ports, [])

    def test_lookupTimesOut(self) -> None:
        """
        A name lookup that does not finish fails the query once every try
        would have gone unanswered; its late answer is ignored.
        """
        reactor, d = ask(self, "time.example", timeout=0.5, retries=2)
        reactor.advance(0.99)
        self.assertNoResult(d)
        reactor.advance(0.01)
        failure = self.failureResultOf(d, LookupTimeout)
        self.assertIsInstance(failure.value, QueryTimeout)
        self.assertEqual(
            str(failure.value), "cannot resolve host 'time.example': no answer in 1 s"
        )
        reactor.nameResolver.answer(IPv4Address("UDP", "192.0.2.1", 5000))
        self.assertEqual(reactor.ports, [])
        self.assertClean(reactor)

    def test_unresolvable(self) -> None:
        """
        A name with no address fails the query with L{QueryError}.
        """
        reactor, d = ask(self, "nowhere.invalid")
        reactor.nameResolver.answer()
        failure = self.failureResultOf(d, QueryError)
        self.assertEqual(str(failure.value), "cannot resolve host 'nowhere.invalid'")
        self.assertEqual(reactor.ports, [])

    def test_literalNotResolved(self) -> None:
        """
        IP addresses are used as they are, with no lookup.
        """
        for host in ("127.0.0.1", "::1", "::ffff:10.0.0.1", "2001:db8::5"):
            reactor, d = ask(self, host)
            self.assertEqual(reactor.nameResolver.calls, [])
            self.assertEqual(reactor.ports[0].written[0][1], (host, 5000))
            d.cancel()
            self.failureResultOf(d, CancelledError)

    def test_sendError(self) -> None:
        """
        A request the kernel will not send fails the query, naming why.
        """
        reactor = FakeReactor()
        reactor.sendError = OSError(errno.ENETUNREACH, "Network is unreachable")
        d = query(reactor, "2001:db8::1", TextClientCodec(token=False))
        failure = self.failureResultOf(d, QueryError)
        self.assertEqual(
            str(failure.value),
            "cannot send to [2001:db8::1]:5000: Network is unreachable",
        )
        self.assertClean(reactor)

    def test_badArguments(self) -> None:
        """
        A timeout that is not positive, fewer than one try or a bad port
        are programming errors.
        """
        reactor = FakeReactor()
        codec = TextClientCodec(token=False)
        for kwargs in (
            {"timeout": 0},
            {"timeout": -1.0},
            {"timeout": float("nan")},
            {"retries": 0},
            {"port": 0},
            {"port": 65536},
        ):
            with self.subTest(kwargs=kwargs):
                self.assertRaises(
                    ValueError, query, reactor, "127.0.0.1", codec, **kwargs
                )
        self.assertEqual(reactor.ports, [])


def ntpReply(
    request: bytes, receivedAt: float, transmitAt: float, precision: int = -20
) -> bytes:
    """
    A server's reply to the NTP request C{request}, with the given receive
    and transmit times.
    """
    return ntp.NTPPacket(
        leap=0,
        version=4,
        mode=ntp.Mode.SERVER,
        stratum=2,
        precision=precision,
        refid=b"\x7f\0\0\1",
        originTimestamp=ntp.NTPPacket.fromBytes(request).transmitTimestamp,
        receiveTimestamp=unixToNTP64(receivedAt),
        transmitTimestamp=unixToNTP64(transmitAt),
    ).toBytes()


class AssembledResultTests(SynchronousTestCase):
    """
    L{query} makes the L{QueryResult} from the codec's L{Reading}: the
    protocol, the server's address and port, the reply as received and the
    round-trip delay are the query's; the rest is the codec's.
    """

    def test_everyCodec(self) -> None:
        """
        Each codec's reading, with what the query knows around it.
        """
        cases: list[tuple[Any, Any]] = [
            (TextClientCodec("unix", token=False), lambda request: b"1000.500000\n"),
            (rfc868.TimeClientCodec(), lambda request: rfc868.buildReply(1000.5)),
            (
                daytime.DaytimeClientCodec(),
                lambda request: daytime.buildReply(1000.5),
            ),
            (echo.EchoClientCodec(), lambda request: request),
        ]
        for codec, answer in cases:
            with self.subTest(protocol=codec.name):
                reactor, d = ask(self, "::1", codec, port=11000)
                [port] = reactor.ports
                [(request, _)] = port.written
                reply = answer(request)
                port.receive(reply, ("::1", 11000))
                result = self.successResultOf(d)
                # Sent at 1000.0, received at 1000.25.
                # The state: the payload an echo reply must repeat; none
                # for the others (the text codec here sends no token).
                state = request if codec.name == "echo" else None
                reading = codec.parseReply(reply, state, 1000.0, 1000.25)
                self.assertEqual(
                    result,
                    QueryResult(
                        protocol=codec.name,
                        host="::1",
                        port=11000,
                        reply=reply,
                        text=reading.text,
                        serverTime=reading.serverTime,
                        delay=0.25,
                        offset=reading.offset,
                        details=reading.details,
                    ),
                )

    def test_codecDelay(self) -> None:
        """
        A codec that measures the delay its own way (NTP: RFC 5905's
        delta, without the time the server held the request) gives the
        result's delay.
        """
        reactor, d = ask(self, "127.0.0.1", ntp.NTPClientCodec(), port=123)
        [port] = reactor.ports
        [(request, _)] = port.written
        # Sent at 1000.0, received at 1000.25; held 0.05 s by the server.
        port.receive(ntpReply(request, 1000.1, 1000.15), ("127.0.0.1", 123))
        result = self.successResultOf(d)
        self.assertEqual(
            (result.protocol, result.host, result.port), ("ntp", "127.0.0.1", 123)
        )
        self.assertAlmostEqual(result.delay, 0.2, places=6)
        assert result.offset is not None
        self.assertAlmostEqual(result.offset, 0.0, places=6)


class ServerNamedTests(SynchronousTestCase):
    """
    The errors of a reply that ends the query name the server, though the
    codec that raises them does not know it.
    """

    def test_kissOfDeath(self) -> None:
        """
        A Kiss-o'-Death fails the query with L{ntp.KissOfDeath}, naming
        the server and the code.
        """
        reactor, d = ask(self, "127.0.0.1", ntp.NTPClientCodec(), port=123)
        [port] = reactor.ports
        kiss = ntp.buildKissOfDeath(port.written[0][0], b"RATE", sourcePort=40000)
        assert kiss is not None
        port.receive(kiss, ("127.0.0.1", 123))
        error = self.failureResultOf(d, ntp.KissOfDeath).value
        self.assertEqual(
            str(error),
            "127.0.0.1:123 sent a Kiss-o'-Death RATE: " + ntp.KISS_CODES[b"RATE"],
        )
        self.assertEqual(error.code, "RATE")

    def test_badReply(self) -> None:
        """
        An impossible NTP reply fails the query with L{BadReply}, naming
        the server.
        """
        reactor, d = ask(self, "::1", ntp.NTPClientCodec(), port=123)
        [port] = reactor.ports
        # Transmitted 2 s before it received the request.
        port.receive(ntpReply(port.written[0][0], 1002.0, 1000.0), ("::1", 123))
        error = self.failureResultOf(d, BadReply).value
        self.assertEqual(
            str(error),
            "[::1]:123 sent a bogus reply: its transmit timestamp is 2.000000 s"
            " before its receive timestamp",
        )


class RealSocketTests(TestCase):
    """
    L{query} over real loopback sockets, against L{TextTimeServer}.
    """

    def listen(self, interface: str) -> int:
        server = TextTimeServer(defaultZone=UTC)
        if interface == "::":
            sock = bindUDPSocket("::", 0)
            port = globalReactor.adoptDatagramPort(sock.fileno(), sock.family, server)
            sock.close()
        else:
            port = globalReactor.listenUDP(0, server, interface=interface)
        self.addCleanup(port.stopListening)
        number: int = port.getHost().port
        return number

    async def check(self, host: str, interface: str) -> QueryResult:
        port = self.listen(interface)
        result = await query(globalReactor, host, TextClientCodec("unix"), port)
        self.assertEqual(result.port, port)
        assert result.serverTime is not None and result.offset is not None
        self.assertGreaterEqual(result.delay, 0)
        # One host, one clock: the offset is within the round trip (and the
        # microsecond rounding of the reply).
        self.assertLessEqual(abs(result.offset), result.delay / 2 + 1e-5)
        return result

    async def test_ipv4(self) -> None:
        """
        A server on 127.0.0.1.
        """
        result = await self.check("127.0.0.1", "127.0.0.1")
        self.assertEqual(result.host, "127.0.0.1")

    async def test_ipv6(self) -> None:
        """
        A server on ::1.
        """
        result = await self.check("::1", "::1")
        self.assertEqual(result.host, "::1")

    async def test_dualStack(self) -> None:
        """
        A dual-stack server asked over IPv4, over an IPv4-mapped address and
        by the name C{localhost} (resolved without blocking, whichever
        family comes first).
        """
        await self.check("127.0.0.1", "::")
        await self.check("::ffff:127.0.0.1", "::")
        result = await self.check("localhost", "::")
        self.assertIn(result.host, ("127.0.0.1", "::1"))

    async def test_secondAddressAnswers(self) -> None:
        """
        A name whose first address has no server (as C{localhost} may give
        C{::1} first to a server listening on 127.0.0.1 only) is answered
        from its second address, on the next try.
        """
        port = self.listen("127.0.0.1")
        resolving = FakeResolver()

        class Resolving:
            nameResolver = resolving

            def listenUDP(self, *args: Any, **kwargs: Any) -> Any:
                return globalReactor.listenUDP(*args, **kwargs)

            def callLater(self, *args: Any, **kwargs: Any) -> Any:
                return globalReactor.callLater(*args, **kwargs)

        d = query(Resolving(), "localhost", TextClientCodec("unix"), port, timeout=0.2)
        resolving.answer(
            IPv6Address("UDP", "::1", port), IPv4Address("UDP", "127.0.0.1", port)
        )
        result = await d
        self.assertEqual(result.host, "127.0.0.1")

    async def test_month(self) -> None:
        """
        Month replies over real sockets.
        """
        port = self.listen("127.0.0.1")
        result = await query(
            globalReactor, "127.0.0.1", TextClientCodec("month 11"), port
        )
        self.assertEqual(result.text, "November")

    async def test_refused(self) -> None:
        """
        An error reply over real sockets.
        """
        port = self.listen("::1")
        d = query(globalReactor, "::1", TextClientCodec("month 0"), port)
        with self.assertRaises(ServerRefused):
            await d

    async def test_noServer(self) -> None:
        """
        Nothing listening: ICMP port-unreachable does not end the query
        early or hang it; it times out after its tries.
        """
        port = freePort()
        d = query(globalReactor, "127.0.0.1", TextClientCodec(), port, 0.1, 2)
        with self.assertRaises(QueryTimeout) as caught:
            await d
        self.assertEqual(
            str(caught.exception), f"no reply from 127.0.0.1:{port} after 2 tries"
        )

    async def test_concurrent(self) -> None:
        """
        200 queries at once, each on its own socket, each answered with the
        reply to its own request.
        """
        port = self.listen("127.0.0.1")
        months = [1 + i % 12 for i in range(200)]
        results = await DeferredList(
            [
                query(
                    globalReactor,
                    "127.0.0.1",
                    TextClientCodec(f"month {n}"),
                    port,
                    timeout=2.0,
                )
                for n in months
            ],
            consumeErrors=True,
        )
        texts = [r.text if ok else repr(r) for ok, r in results]
        self.assertEqual(texts, [text.MONTHS[n - 1] for n in months])


class ForgedReplyTests(TestCase):
    """
    Datagrams forged to the client's socket before the server's reply: what
    the client can tell from the real reply, protocol by protocol.
    """

    async def forge(
        self, codec: Any, forgeries: list[tuple[bytes, bool]], reply: Any
    ) -> QueryResult:
        """
        Query a silent server with C{codec}; once the request arrives, send
        each of C{forgeries} to the client (from the server's own address and
        port when its flag is true, from another port otherwise), then
        C{reply(request)} from the server: the query's result.
        """
        requests: list[tuple[bytes, Any]] = []
        got = Deferred[None]()

        class Silent(DatagramProtocol):
            def datagramReceived(self, datagram: bytes, addr: Any) -> None:
                requests.append((datagram, addr))
                got.callback(None)

        serverPort = globalReactor.listenUDP(0, Silent(), interface="127.0.0.1")
        self.addCleanup(serverPort.stopListening)
        d = query(
            globalReactor,
            "127.0.0.1",
            codec,
            serverPort.getHost().port,
            timeout=5.0,
            retries=1,
        )
        await got
        [(request, clientAddr)] = requests
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rogue:
            rogue.bind(("127.0.0.1", 0))
            for forged, fromServer in forgeries:
                if fromServer:
                    serverPort.write(forged, clientAddr)
                else:
                    rogue.sendto(forged, clientAddr)
        serverPort.write(reply(request), clientAddr)
        return await d

    async def test_text(self) -> None:
        """
        A text reply forged from the server's address without the request's
        token, or from another port, is ignored: the real reply, which
        carries the token back, is the result.
        """
        result = await self.forge(
            TextClientCodec("unix"),
            [
                (b"1999-01-01T00:00:00+00:00\n", True),
                (b"error: forged\n", True),
                (b"915148800.000000 @0123456789abcdef\n", True),
                (b"915148800.000000\n", False),
            ],
            lambda request: b"2.000000 @" + text.splitToken(request)[1] + b"\n",
        )
        self.assertEqual(result.serverTime, 2.0)

    async def test_wrongSourceIgnored(self) -> None:
        """
        Without a token, a datagram reaching the client's socket from another
        port is ignored; the server's reply, sent after it, is the result.
        """
        result = await self.forge(
            TextClientCodec("unix", token=False),
            [(b"1.000000\n", False)],
            lambda request: b"2.000000\n",
        )
        self.assertEqual(result.serverTime, 2.0)

    async def test_time(self) -> None:
        """
        An RFC 868 client ignores replies of the wrong size or from another
        port, but takes any 4 bytes from the server's address and port: the
        result says it is unauthenticated.
        """
        result = await self.forge(
            rfc868.TimeClientCodec(),
            [(b"\x00\x00\x00\x00\x00", True), (rfc868.buildReply(1e9), False)],
            lambda request: rfc868.buildReply(2e9),
        )
        self.assertEqual(result.serverTime, 2e9)
        self.assertIs(result.details[UNAUTHENTICATED], True)

    async def test_daytime(self) -> None:
        """
        A Daytime client ignores replies that are no Daytime line or from
        another port; the result says it is unauthenticated.
        """
        result = await self.forge(
            daytime.DaytimeClientCodec(),
            [
                (b"x" * (daytime.MAX_REPLY + 1), True),
                (b"\xff\xfe\r\n", True),
                (daytime.buildReply(1e9), False),
            ],
            lambda request: daytime.buildReply(2e9),
        )
        self.assertEqual(result.serverTime, 2e9)
        self.assertIs(result.details[UNAUTHENTICATED], True)
