"""
Asking Roughtime servers, with Twisted: L{roughtimeQuery} for one server,
L{chainQuery} for several in a chain.  The checking is L{udptime.roughtime}'s
and L{udptime.roughtimechain}'s; this module sends, waits and retries::

    from twisted.internet import task
    from udptime.roughtimeclient import roughtimeQuery

    async def main(reactor):
        result = await roughtimeQuery(reactor, "192.0.2.1", 2002, publicKey)
        print(result.verified.midpoint, "+-", result.verified.radius)

    task.react(main)

Each try sends a new request (a new nonce, or a new C{rand} for a chained
one) from a new unconnected socket, and waits longer than the last: the
tries back off by a factor of 1.5, as RFC 10049 §5 asks.  A datagram from
another address, or answering another nonce, is ignored; a response that
fails verification ends its try at once, and when no try gets a valid
response the query fails with the last verification error, so a server that
always sends a bad signature is reported as such rather than as silent.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure

from udptime.clock import WallClock, systemClock
from udptime.roughtime import (
    DEFAULT_CLIENT_VERSIONS,
    ClientRequest,
    NonceMismatch,
    RoughtimeVerificationError,
    Verified,
    buildRequest,
    verifyResponse,
)
from udptime.roughtimechain import (
    BLIND_SIZE,
    Link,
    ServerEntry,
    causalityViolations,
    chainNonce,
)

BACKOFF: Final = 1.5
"""Each try waits this many times longer than the one before."""

MAX_RESPONSE: Final = 65535
"""Receive buffer of the client's sockets."""


class RoughtimeQueryError(Exception):
    """
    Base of the errors a query fails with other than verification errors
    (L{udptime.roughtime.RoughtimeVerificationError}).
    """


class RoughtimeTimeout(RoughtimeQueryError):
    """
    No try got a response.
    """


class _Port(Protocol):
    def write(self, datagram: bytes, addr: tuple[str, int]) -> None: ...

    def stopListening(self) -> Deferred[None] | None: ...


class _Timer(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class RoughtimeReactor(Protocol):
    """
    What the queries use of a reactor: UDP ports, timers and the host name
    lookup of C{IReactorCore.resolve}.
    """

    def listenUDP(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,
    ) -> _Port: ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object
    ) -> _Timer: ...

    def resolve(self, name: str, timeout: Sequence[int] = ...) -> Deferred[str]: ...


@dataclass(frozen=True)
class RoughtimeResult:
    """
    A valid response and what it tells.

    @ivar host: the address asked.
    @ivar port: the port asked.
    @ivar publicKey: the long-term key it was verified with.
    @ivar request: the request sent.
    @ivar response: the response packet.
    @ivar verified: what the response says.
    @ivar sentAt: our clock when the request was sent.
    @ivar receivedAt: our clock when the response arrived.
    """

    host: str
    port: int
    publicKey: bytes
    request: ClientRequest
    response: bytes
    verified: Verified
    sentAt: float
    receivedAt: float

    @property
    def delay(self) -> float:
        """
        The round trip, in seconds.
        """
        return self.receivedAt - self.sentAt

    @property
    def offset(self) -> float:
        """
        The server's time minus ours at the middle of the round trip.
        """
        return self.verified.midpoint - (self.sentAt + self.receivedAt) / 2


class _Receiver(DatagramProtocol):
    noisy = False

    def __init__(self, exchange: _Exchange, attempt: int) -> None:
        self.exchange = exchange
        self.attempt = attempt

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.exchange.received(self.attempt, datagram, addr)


def _sameAddress(a: tuple[str, int], b: tuple[str, int]) -> bool:
    if a[1] != b[1]:
        return False
    try:
        first, second = ipaddress.ip_address(a[0]), ipaddress.ip_address(b[0])
    except ValueError:
        return False
    if isinstance(first, ipaddress.IPv6Address) and first.ipv4_mapped:
        first = first.ipv4_mapped
    return first == second


class _Exchange:
    """
    One query in progress.
    """

    def __init__(
        self,
        reactor: RoughtimeReactor,
        port: int,
        publicKey: bytes,
        makeRequest: Callable[[], ClientRequest],
        timeout: float,
        tries: int,
        clock: WallClock,
    ) -> None:
        self.reactor = reactor
        self.portNumber = port
        self.publicKey = publicKey
        self.makeRequest = makeRequest
        self.timeout = timeout
        self.tries = tries
        self.clock = clock
        self.deferred: Deferred[RoughtimeResult] = Deferred(self._cancel)
        self.host = ""
        self.attempts = 0
        self.finished = False
        self.port: _Port | None = None
        self.timer: _Timer | None = None
        self.request: ClientRequest | None = None
        self.sentAt = 0.0
        self.rejection: RoughtimeVerificationError | None = None

    def start(self, host: str) -> None:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            resolving = self.reactor.resolve(host)
            resolving.addCallbacks(self._resolved, self._finish)
            return
        self._resolved(host)

    def _resolved(self, host: str) -> None:
        if self.finished:
            return
        self.host = host
        self._try()

    def _try(self) -> None:
        self.attempts += 1
        try:
            self.request = self.makeRequest()
            self.port = self.reactor.listenUDP(
                0,
                _Receiver(self, self.attempts),
                interface="::" if ":" in self.host else "0.0.0.0",
                maxPacketSize=MAX_RESPONSE,
            )
            self.sentAt = self.clock()
            self.port.write(self.request.packet, (self.host, self.portNumber))
        except Exception as e:
            self._finish(RoughtimeQueryError(f"cannot send the request: {e}"))
            return
        wait = self.timeout * BACKOFF ** (self.attempts - 1)
        self.timer = self.reactor.callLater(wait, self._endTry)

    def received(self, attempt: int, datagram: bytes, addr: Any) -> None:
        if self.finished or attempt != self.attempts or self.request is None:
            return
        receivedAt = self.clock()
        if not _sameAddress(addr, (self.host, self.portNumber)):
            return
        try:
            verified = verifyResponse(self.request, datagram, self.publicKey)
        except NonceMismatch:
            return
        except RoughtimeVerificationError as e:
            self.rejection = e
            self._stopTimer()
            self._endTry()
            return
        self._finish(
            RoughtimeResult(
                host=self.host,
                port=self.portNumber,
                publicKey=self.publicKey,
                request=self.request,
                response=datagram,
                verified=verified,
                sentAt=self.sentAt,
                receivedAt=receivedAt,
            )
        )

    def _endTry(self) -> None:
        self.timer = None
        if self.attempts < self.tries:
            closing = self._closePort()
            closing.addCallback(lambda _: None if self.finished else self._try())
            closing.addErrback(self._finish)
            return
        if self.rejection is not None:
            self._finish(self.rejection)
            return
        tries = "try" if self.attempts == 1 else "tries"
        where = f"[{self.host}]" if ":" in self.host else self.host
        self._finish(
            RoughtimeTimeout(
                f"no response from {where}:{self.portNumber} after"
                f" {self.attempts} {tries}"
            )
        )

    def _closePort(self) -> Deferred[None]:
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        stopping = port.stopListening()
        return succeed(None) if stopping is None else stopping

    def _stopTimer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _finish(self, outcome: RoughtimeResult | BaseException | Failure) -> None:
        if self.finished:
            return
        self.finished = True
        self._stopTimer()

        def deliver(_: object) -> None:
            if self.deferred.called:
                return
            if isinstance(outcome, RoughtimeResult):
                self.deferred.callback(outcome)
            else:
                self.deferred.errback(outcome)

        self._closePort().addBoth(deliver)

    def _cancel(self, deferred: Deferred[RoughtimeResult]) -> None:
        self.finished = True
        self._stopTimer()
        self._closePort()


def roughtimeQuery(
    reactor: RoughtimeReactor,
    host: str,
    port: int,
    publicKey: bytes,
    *,
    versions: Sequence[int] = DEFAULT_CLIENT_VERSIONS,
    previous: bytes | None = None,
    timeout: float = 1.0,
    tries: int = 3,
    clock: WallClock = systemClock,
) -> Deferred[RoughtimeResult]:
    """
    Ask the Roughtime server at C{host} and C{port} for the time, and
    verify its response with its long-term C{publicKey}.

    @param host: an IPv4 or IPv6 address, or a host name (looked up with
        C{reactor.resolve}, which gives IPv4 addresses).
    @param versions: the versions to offer.
    @param previous: for a chained request, the previous response packet:
        the nonce is then derived from it and a new random C{rand} per try.
    @param timeout: seconds to wait for the first try's response; each
        further try waits 1.5 times longer.
    @param tries: how many requests to send at most.
    @param clock: our wall clock, which times the round trip.
    @return: a L{Deferred} firing with a L{RoughtimeResult}, or failing
        with L{RoughtimeTimeout}, with the verification error
        (L{udptime.roughtime.RoughtimeVerificationError}) of the last
        response rejected, or with L{RoughtimeQueryError}.
    @raise ValueError: C{timeout}, C{tries}, C{port} or C{versions} are out
        of range.
    """
    if not 0 < timeout < float("inf"):
        raise ValueError(f"timeout must be positive, not {timeout!r}")
    if tries < 1:
        raise ValueError(f"tries must be at least 1, not {tries!r}")
    if not 0 < port < 65536:
        raise ValueError(f"port must be from 1 to 65535, not {port!r}")
    buildRequest(publicKey, versions)  # check the versions before any I/O

    def makeRequest() -> ClientRequest:
        if previous is None:
            return buildRequest(publicKey, versions)
        blind = os.urandom(BLIND_SIZE)
        return buildRequest(publicKey, versions, chainNonce(previous, blind), blind)

    exchange = _Exchange(reactor, port, publicKey, makeRequest, timeout, tries, clock)
    exchange.start(host)
    return exchange.deferred


class ChainError(RoughtimeQueryError):
    """
    A server of the chain gave no valid response: the measurement fails.

    @ivar server: the server's name.
    @ivar position: its place in the chain.
    @ivar reason: the error its query failed with.
    """

    def __init__(self, server: str, position: int, reason: BaseException) -> None:
        super().__init__(f"{server}: {reason}")
        self.server = server
        self.position = position
        self.reason = reason


@dataclass(frozen=True)
class Chain:
    """
    The responses of a chained measurement, in the order received.

    @ivar links: one per request, each chained to the one before.
    @ivar results: the query results, with their timing.
    """

    links: tuple[Link, ...]
    results: tuple[RoughtimeResult, ...]

    @property
    def violations(self) -> list[tuple[int, int]]:
        """
        The pairs of responses whose times cannot both be right.
        """
        return causalityViolations([link.verified for link in self.links])


async def _chain(
    reactor: RoughtimeReactor,
    servers: Sequence[ServerEntry],
    rounds: int,
    timeout: float,
    tries: int,
    clock: WallClock,
) -> Chain:
    links: list[Link] = []
    results: list[RoughtimeResult] = []
    previous: bytes | None = None
    for _ in range(rounds):
        for server in servers:
            host, port = server.addresses[0]
            try:
                result = await roughtimeQuery(
                    reactor,
                    host,
                    port,
                    server.publicKey,
                    versions=server.versions,
                    previous=previous,
                    timeout=timeout,
                    tries=tries,
                    clock=clock,
                )
            except (RoughtimeQueryError, RoughtimeVerificationError) as e:
                raise ChainError(server.name, len(links), e) from e
            previous = result.response
            results.append(result)
            links.append(
                Link(
                    server.publicKey,
                    result.request,
                    result.response,
                    result.verified,
                    server.name,
                )
            )
    return Chain(tuple(links), tuple(results))


def chainQuery(
    reactor: RoughtimeReactor,
    servers: Sequence[ServerEntry],
    *,
    rounds: int = 2,
    timeout: float = 1.0,
    tries: int = 3,
    clock: WallClock = systemClock,
) -> Deferred[Chain]:
    """
    Ask C{servers} in turn, C{rounds} times over in the same order, each
    request chained to the response before (RFC 10049 §8.2: two rounds are
    needed to see every inconsistency).  Each server is asked at its first
    address, in the versions its entry gives.

    @return: a L{Deferred} firing with the L{Chain} (whose C{violations}
        say whether it proves malfeasance), or failing with L{ChainError}.
    @raise ValueError: no servers, or fewer than one round.
    """
    if not servers:
        raise ValueError("a chain needs at least one server")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds!r}")
    return Deferred.fromCoroutine(
        _chain(reactor, servers, rounds, timeout, tries, clock)
    )
