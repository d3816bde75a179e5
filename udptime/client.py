"""
Querying time servers: a L{Deferred}-returning L{query} that works with the
client codec of any protocol.

L{query} does all the I/O: name resolution, one fresh UDP socket per try,
per-try timeouts, retries, and clean-up; it times the round trip and names
the server in the L{QueryResult}.  The codec (see
L{udptime.reading.ClientCodec}; one beside each wire format, such as
L{udptime.text.TextClientCodec}) only builds the request and reads the
reply::

    from twisted.internet import task
    from udptime.client import query
    from udptime.text import TextClientCodec

    async def main(reactor):
        result = await query(reactor, "127.0.0.1", TextClientCodec("iso UTC"))
        print(result.text, result.delay, result.offset)

    task.react(main)

The sockets are never connected: Twisted closes a connected UDP port that
receives an ICMP "port unreachable" without telling its protocol, so a query
on one would hang.  Each try has its own socket, and so its own source port,
so a late reply to an earlier try cannot be taken for the reply to a later
one; only datagrams from the server's address and port are considered.

L{TextClientCodec} is re-exported here from L{udptime.text}, where it
lives, for programs that import it from this module.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure

from udptime.address import formatAddress
from udptime.ancillary import lastReceiveTime
from udptime.clientport import listenForReplies, sendTimed
from udptime.clock import WallClock, systemClock
from udptime.reading import (
    ClientCodec,
    LookupTimeout,
    QueryError,
    QueryResult,
    QueryTimeout,
    ReplyMismatch,
    ServerReplyError,
)
from udptime.text import TextClientCodec

__all__ = ["QueryReactor", "TextClientCodec", "query", "sameAddress"]

MAX_REPLY: Final = 65535
"""Receive buffer of the client's sockets: no UDP payload is truncated."""


class _UDPPort(Protocol):
    """
    What L{query} uses of the port C{listenUDP} returns.
    """

    def write(self, datagram: bytes, addr: tuple[str, int]) -> None: ...

    def stopListening(self) -> Deferred[None] | None: ...


class _DelayedCall(Protocol):
    """
    What L{query} uses of a timer from C{callLater}.
    """

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class _HostnameResolver(Protocol):
    """
    What L{query} uses of an C{IHostnameResolver}.
    """

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[Any]] | None = None,
        transportSemantics: str = "TCP",
    ) -> Any: ...


class QueryReactor(Protocol):
    """
    The reactor features L{query} needs: UDP ports (C{IReactorUDP}), timers
    (C{IReactorTime}) and, for host names, a name resolver
    (C{IReactorPluggableNameResolver}).  Every reactor Twisted ships has
    them all.
    """

    def listenUDP(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,
    ) -> _UDPPort: ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object
    ) -> _DelayedCall: ...

    @property
    def nameResolver(self) -> _HostnameResolver: ...


def query(
    reactor: QueryReactor,
    host: str,
    codec: ClientCodec,
    port: int | None = None,
    timeout: float = 1.0,
    retries: int = 3,
    clock: WallClock = systemClock,
) -> Deferred[QueryResult]:
    """
    Ask the server at C{host} for the time, with C{codec}'s protocol.

    Each try sends the request from a new socket and waits C{timeout}
    seconds for the reply.  Datagrams from other addresses, and those the
    codec rejects with L{ReplyMismatch}, are ignored.  A host name's
    addresses are asked in turn, one per try (so that a server listening on
    only one of C{localhost}'s addresses still answers); an address the
    request cannot be sent to is dropped and the next one asked at once.
    The L{Deferred} fires once the try's socket is closed; cancelling it
    stops the query and starts closing the socket, and fails it with
    C{CancelledError} at once, as cancelling a L{Deferred} does (the
    socket is closed by the reactor's next turn).

    @param reactor: the reactor to run the query on.
    @param host: an IPv4 or IPv6 address, or a host name (resolved without
        blocking, through C{reactor.nameResolver}, to its IPv4 and IPv6
        addresses, asked in the order the resolver gives them).
    @param codec: the protocol's L{ClientCodec<udptime.reading.ClientCodec>}.
    @param port: the server's port (L{None}: C{codec.defaultPort}).
    @param timeout: seconds to wait for the reply to each try.
    @param retries: how many times to send the request, at most (the
        number of tries, at least 1).
    @param clock: the wall clock that timestamps the request and the reply
        where the kernel gives no time of its own (see
        L{udptime.clientport}: on Linux, the request's transmit time and
        the reply's receive time are the kernel's).

    @return: a L{Deferred} firing with a L{QueryResult}, or failing with
        L{QueryTimeout} (every try went unanswered; a
        L{LookupTimeout<udptime.reading.LookupTimeout>} when the name
        lookup did not finish in time),
        L{ServerRefused<udptime.reading.ServerRefused>} (the server answered
        with a refusal), L{BadReply<udptime.reading.BadReply>} (its reply
        cannot be right), whose messages name the server, or L{QueryError}
        (the host name has no address, or the request could not be sent to
        any of them).
    @raise ValueError: C{timeout}, C{retries} or the port is out of range.
    """
    if not 0 < timeout < float("inf"):
        raise ValueError(f"timeout must be positive, not {timeout!r}")
    if retries < 1:
        raise ValueError(f"retries must be at least 1, not {retries!r}")
    portNumber = codec.defaultPort if port is None else port
    if not 0 < portNumber < 65536:
        raise ValueError(f"port must be from 1 to 65535, not {portNumber!r}")
    pending = _Query(reactor, codec, portNumber, timeout, retries, clock)
    if _isAddress(host):
        pending.start([host])
    else:
        pending.resolve(host)
    return pending.deferred


def _isAddress(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _normalAddress(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """
    C{host} as an address object, an IPv4-mapped IPv6 address as its IPv4
    address, so that C{::ffff:127.0.0.1} and C{127.0.0.1} compare equal.
    """
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def sameAddress(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """
    Whether two C{(host, port)} pairs of IP addresses are the same endpoint,
    with an IPv4-mapped IPv6 address equal to its IPv4 address.
    """
    if a[1] != b[1]:
        return False
    try:
        return _normalAddress(a[0]) == _normalAddress(b[0])
    except ValueError:
        return False


class _AddressCollector:
    """
    An C{IResolutionReceiver} that collects the addresses a name resolution
    gives, then fires L{done} with them.
    """

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.done: Deferred[list[str]] = Deferred()

    def resolutionBegan(self, resolution: object) -> None:
        pass

    def addressResolved(self, address: object) -> None:
        if isinstance(address, (IPv4Address, IPv6Address)):
            self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


class _ReplyReceiver(DatagramProtocol):
    """
    The protocol of one try's socket: hands datagrams to its query.
    """

    noisy = False  # no "Starting protocol" log line for every try

    def __init__(self, owner: _Query, attempt: int) -> None:
        self.owner = owner
        self.attempt = attempt

    def startProtocol(self) -> None:
        """
        Turn the socket's kernel receive times on (see L{_Query.receiveTime}).
        """
        self.owner.receiveTime(self.transport)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.owner.datagramReceived(
            self.attempt, datagram, addr, self.owner.receiveTime(self.transport)
        )


class _Query:
    """
    One query in progress: its tries, its socket, its timer.

    @ivar deferred: fires with the outcome once the socket is closed.
    @ivar addresses: the IP addresses to ask, in turn.
    @ivar asked: every address a request was sent to, in order, once each.
    @ivar host: the address of the current try.
    @ivar attempts: tries made so far.
    @ivar ignored: datagrams ignored (wrong source or L{ReplyMismatch}).
    @ivar mismatched: of those, datagrams from the server that the codec
        rejected with L{ReplyMismatch}, over all tries.
    @ivar mismatch: why the codec rejected the last of them.
    """

    def __init__(
        self,
        reactor: QueryReactor,
        codec: ClientCodec,
        portNumber: int,
        timeout: float,
        retries: int,
        clock: WallClock,
    ) -> None:
        self.reactor = reactor
        self.codec = codec
        self.portNumber = portNumber
        self.timeout = timeout
        self.retries = retries
        self.clock = clock
        self.deferred: Deferred[QueryResult] = Deferred(self._cancel)
        self.attempts = 0
        self.ignored = 0
        self.mismatched = 0
        self.mismatch = ""
        self.finished = False
        self.addresses: list[str] = []
        self.asked: list[str] = []
        self.host = ""
        self.port: _UDPPort | None = None
        self.timer: _DelayedCall | None = None
        self.sentAt = 0.0
        self.state: Any = None

    def resolve(self, name: str) -> None:
        """
        Resolve host C{name}, then start the first try.
        """
        collector = _AddressCollector()
        # The lookup counts against the time the query may take: a name
        # server that does not answer fails it no later than every try
        # going unanswered would.
        limit = self.timeout * self.retries
        self.timer = self.reactor.callLater(
            limit,
            lambda: self._finish(
                LookupTimeout(f"cannot resolve host {name!r}: no answer in {limit:g} s")
            ),
        )
        self.reactor.nameResolver.resolveHostName(
            collector,
            name,
            self.portNumber,
            addressTypes=[IPv4Address, IPv6Address],
            transportSemantics="UDP",
        )

        def resolved(addresses: list[str]) -> None:
            if self.finished:
                return
            self._stopTimer()
            if not addresses:
                self._finish(QueryError(f"cannot resolve host {name!r}"))
            else:
                self.start(addresses)

        collector.done.addCallback(resolved).addErrback(self._finish)

    def start(self, addresses: list[str]) -> None:
        """
        Start the first try, to the first of the IP addresses C{addresses}
        (at least one; duplicates are asked once).
        """
        self.addresses = list(dict.fromkeys(addresses))
        self._try()

    def _where(self, hosts: list[str]) -> str:
        return ", ".join(formatAddress(host, self.portNumber) for host in hosts)

    def _try(self) -> None:
        self.attempts += 1
        self.host = self.addresses[(self.attempts - 1) % len(self.addresses)]
        try:
            self.port = listenForReplies(
                self.reactor,
                _ReplyReceiver(self, self.attempts),
                "::" if ":" in self.host else "0.0.0.0",
                MAX_REPLY,
            )
        except error.CannotListenError as e:
            # No socket of this address's family (IPv6 turned off, say):
            # the other addresses may still be asked.
            reason = getattr(e.socketError, "strerror", None) or str(e)
            self._unreachable(
                f"cannot open a UDP socket to ask {self._where([self.host])}: {reason}"
            )
            return
        try:
            datagram, self.state = self.codec.buildRequest(self.clock())
        except Exception as e:
            self._finish(e)
            return
        # The origin time: the kernel's transmit time of the request, or
        # the clock read last, just before the send.
        try:
            self.sentAt = sendTimed(
                self.port, datagram, (self.host, self.portNumber), self.clock
            )
        except (OSError, error.MessageLengthError, error.InvalidAddressError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            self._unreachable(f"cannot send to {self._where([self.host])}: {reason}")
            return
        if self.host not in self.asked:
            self.asked.append(self.host)
        self.timer = self.reactor.callLater(self.timeout, self._timedOut)

    def _unreachable(self, reason: str) -> None:
        """
        The current address cannot be sent to: drop it and ask the next one
        at once, in a try that takes this one's place; or, when it was the
        last address, fail the query with C{reason}.
        """
        self.addresses.remove(self.host)
        if not self.addresses:
            self._finish(QueryError(reason))
            return
        # The next try picks the address that now holds the dropped one's
        # place in the turn.
        self.attempts -= 1
        self._tryAgain()

    def _tryAgain(self) -> None:
        """
        Close the current try's socket, then start the next try (unless the
        query ended meanwhile).
        """
        closing = self._closePort()
        closing.addCallback(lambda _: None if self.finished else self._try())
        closing.addErrback(self._finish)

    def _timedOut(self) -> None:
        self.timer = None
        if self.attempts >= self.retries:
            tries = "try" if self.attempts == 1 else "tries"
            where = self._where(self.asked)
            message = f"no reply from {where} after {self.attempts} {tries}"
            if self.mismatched:
                # The server answered, but not in the protocol asked for: the
                # wrong port or protocol, more likely than a lost reply.
                datagrams = "datagram" if self.mismatched == 1 else "datagrams"
                message += (
                    f" ({self.mismatched} {datagrams} from it not {self.codec.name}"
                    f" replies: {self.mismatch}; wrong port or protocol?)"
                )
            self._finish(QueryTimeout(message))
            return
        self._tryAgain()

    def receiveTime(self, port: object) -> float | None:
        """
        The kernel's receive time of the datagram read last from the socket
        of C{port} (C{SIOCGSTAMPNS}), or L{None} where there is none (a port
        with no socket, or no such call); the first call turns them on.
        """
        getHandle = getattr(port, "getHandle", None)
        if getHandle is None:
            return None
        handle = getHandle()
        fileno = getattr(handle, "fileno", None)
        if fileno is None:
            return None
        return lastReceiveTime(fileno())

    def datagramReceived(
        self,
        attempt: int,
        datagram: bytes,
        addr: Any,
        receivedAt: float | None = None,
    ) -> None:
        """
        A datagram arrived on the socket of try number C{attempt}, at the
        kernel's time C{receivedAt} (L{None}: now, by the clock).
        """
        if self.finished or attempt != self.attempts or self.timer is None:
            return
        if receivedAt is None:
            receivedAt = self.clock()
        if not sameAddress(addr, (self.host, self.portNumber)):
            self.ignored += 1
            return
        try:
            reading = self.codec.parseReply(
                datagram, self.state, self.sentAt, receivedAt
            )
        except ReplyMismatch as mismatch:
            self.ignored += 1
            self.mismatched += 1
            self.mismatch = str(mismatch)
            return
        except ServerReplyError as e:
            # A refusal, or a reply that cannot be right: the query is over,
            # and its message names the server.
            e.server = formatAddress(self.host, self.portNumber)
            self._finish(e)
            return
        except Exception as e:
            # A bug in the codec: the query is over, and the caller learns
            # why.
            self._finish(e)
            return
        self._finish(
            QueryResult(
                protocol=self.codec.name,
                host=self.host,
                port=self.portNumber,
                reply=datagram,
                text=reading.text,
                serverTime=reading.serverTime,
                delay=(
                    receivedAt - self.sentAt if reading.delay is None else reading.delay
                ),
                offset=reading.offset,
                details=reading.details,
            )
        )

    def _closePort(self) -> Deferred[None]:
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        stopped = port.stopListening()
        return succeed(None) if stopped is None else stopped

    def _stopTimer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _finish(self, outcome: QueryResult | BaseException | Failure) -> None:
        """
        End the query with C{outcome}: a result, or why it failed.  The
        L{Deferred} fires once the socket is closed.
        """
        if self.finished:
            return
        self.finished = True
        self._stopTimer()

        def deliver(_: object) -> None:
            if not self.deferred.called:
                if isinstance(outcome, QueryResult):
                    self.deferred.callback(outcome)
                else:
                    self.deferred.errback(outcome)

        self._closePort().addBoth(deliver)

    def _cancel(self, deferred: Deferred[QueryResult]) -> None:
        # Deferred.cancel fails the Deferred with CancelledError after this.
        self.finished = True
        self._stopTimer()
        self._closePort()
