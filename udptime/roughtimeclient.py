"""
Asking Roughtime servers, with Twisted: L{roughtimeQuery} for one server,
L{chainQuery} for several in a chain.  The checking is L{udptime.roughtime}'s
and L{udptime.roughtimechain}'s, the I/O L{udptime.client.query}'s, through
L{RoughtimeClientCodec}::

    from twisted.internet import task
    from udptime.roughtimeclient import roughtimeQuery

    async def main(reactor):
        result = await roughtimeQuery(reactor, "192.0.2.1", 2002, publicKey)
        print(result.verified.midpoint, "+-", result.verified.radius)

    task.react(main)

Each try sends a new request (a new nonce, or a new C{rand} for a chained
one) and waits longer than the last: the tries back off by a factor of 1.5,
as RFC 10049 §5 asks.  A datagram from another address, or answering
another nonce, is ignored; a response that fails verification ends its try
at once, and when no try gets a valid response the query fails with the
last verification error, so that a server that always sends a bad signature
is reported as such rather than as silent.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from twisted.internet.defer import Deferred

from udptime.address import formatAddress
from udptime.client import QueryReactor, query
from udptime.clock import WallClock, systemClock
from udptime.reading import (
    BadReply,
    QueryError,
    QueryResult,
    QueryTimeout,
    Reading,
    ReplyMismatch,
    estimateOffset,
)
from udptime.roughtime import (
    DEFAULT_CLIENT_VERSIONS,
    ROUGHTIME_PORT,
    ClientRequest,
    NonceMismatch,
    RoughtimeVerificationError,
    Verified,
    buildRequest,
    verifyResponse,
    versionName,
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


def describe(verified: Verified) -> str:
    """
    A response's time for people: the UTC time and radius, MIDP, version.
    """
    when = datetime.fromtimestamp(verified.midpoint, UTC).strftime("%Y-%m-%d %H:%M:%S")
    legacy = ", draft 19's signature strings" if verified.legacyContexts else ""
    return (
        f"{when} UTC ± {verified.radius} s (MIDP {verified.midpoint},"
        f" {versionName(verified.version)}{legacy})"
    )


class RoughtimeRejected(BadReply):
    """
    The server's response fails verification: a query with
    L{udptime.client.query} ends with this error, whose message names the
    server and the check that failed.

    @ivar error: the verification error.
    """

    def __init__(self, error: RoughtimeVerificationError) -> None:
        super().__init__(
            f"sent a Roughtime response that fails verification ({error.reason}):"
            f" {error}"
        )
        self.error = error


class RoughtimeClientCodec:
    """
    Roughtime's client side for L{udptime.client.query}: a request naming
    the server's long-term key, and its response verified with that key.

    The state of a request is its L{ClientRequest}.  A response to another
    nonce is not ours (L{ReplyMismatch}); any other failure ends the query
    with L{RoughtimeRejected}, which carries the
    L{RoughtimeVerificationError}.  A reading's C{details} say what the
    response says: C{radius}, C{version}, C{midpoint}, C{minTime} and
    C{maxTime} (the delegation), C{onlineKey}, C{pathLength}.

    @ivar publicKey: the server's long-term public key.
    @ivar versions: the versions offered.
    @ivar previous: for chained requests, the previous response packet:
        each request's nonce is then derived from it and a new C{rand}.
    @ivar accepted: the request and what the response says, of the last
        response accepted; L{None} before one is.
    """

    name = "roughtime"
    defaultPort = ROUGHTIME_PORT

    def __init__(
        self,
        publicKey: bytes,
        versions: Sequence[int] = DEFAULT_CLIENT_VERSIONS,
        previous: bytes | None = None,
    ) -> None:
        """
        @raise ValueError: a version not spoken here.
        """
        buildRequest(publicKey, versions)
        self.publicKey = publicKey
        self.versions = tuple(versions)
        self.previous = previous
        self.accepted: tuple[ClientRequest, Verified] | None = None

    def buildRequest(self, sentAt: float) -> tuple[bytes, ClientRequest]:
        """
        A new request, and itself as the state to check its response with.
        """
        if self.previous is None:
            request = buildRequest(self.publicKey, self.versions)
        else:
            blind = os.urandom(BLIND_SIZE)
            nonce = chainNonce(self.previous, blind)
            request = buildRequest(self.publicKey, self.versions, nonce, blind)
        return request.packet, request

    def parseReply(
        self,
        data: bytes,
        state: ClientRequest,
        sentAt: float,
        receivedAt: float,
    ) -> Reading:
        """
        Verify the response to the request C{state}.

        @raise ReplyMismatch: it answers another nonce.
        @raise RoughtimeRejected: it is not valid.
        """
        try:
            verified = verifyResponse(state, data, self.publicKey)
        except NonceMismatch as e:
            raise ReplyMismatch(str(e)) from None
        except RoughtimeVerificationError as e:
            raise RoughtimeRejected(e) from None
        self.accepted = (state, verified)
        return Reading(
            text=describe(verified),
            serverTime=float(verified.midpoint),
            offset=estimateOffset(verified.midpoint, sentAt, receivedAt),
            details={
                "radius": verified.radius,
                "resolution": 1,
                "version": versionName(verified.version),
                "midpoint": verified.midpoint,
                "minTime": verified.minTime,
                "maxTime": verified.maxTime,
                "onlineKey": base64.b64encode(verified.onlineKey).decode("ascii"),
                "pathLength": verified.pathLength,
            },
        )


@dataclass(frozen=True)
class RoughtimeResult:
    """
    A valid response and what it tells.

    @ivar host: the address it came from.
    @ivar port: the port asked.
    @ivar publicKey: the long-term key it was verified with.
    @ivar request: the request sent.
    @ivar response: the response packet.
    @ivar verified: what the response says.
    @ivar delay: the round trip, in seconds.
    @ivar offset: the server's time minus ours at the middle of the round
        trip, in seconds.
    @ivar queryResult: the same answer as L{udptime.client.query} gives it,
        for the C{udptime} command's output.
    """

    host: str
    port: int
    publicKey: bytes
    request: ClientRequest
    response: bytes
    verified: Verified
    delay: float
    offset: float
    queryResult: QueryResult


async def _tries(
    reactor: QueryReactor,
    host: str,
    port: int,
    codec: RoughtimeClientCodec,
    timeout: float,
    tries: int,
    clock: WallClock,
) -> RoughtimeResult:
    rejection: RoughtimeVerificationError | None = None
    for attempt in range(tries):
        wait = timeout * BACKOFF**attempt
        try:
            result = await query(reactor, host, codec, port, wait, 1, clock)
        except QueryTimeout:
            continue
        except RoughtimeRejected as e:
            rejection = e.error
            continue
        assert codec.accepted is not None
        request, verified = codec.accepted
        return RoughtimeResult(
            host=result.host,
            port=result.port,
            publicKey=codec.publicKey,
            request=request,
            response=result.reply,
            verified=verified,
            delay=result.delay,
            offset=float(result.offset or 0.0),
            queryResult=result,
        )
    if rejection is not None:
        raise rejection
    trySays = "try" if tries == 1 else "tries"
    where = formatAddress(host, port)
    raise QueryTimeout(f"no response from {where} after {tries} {trySays}")


def roughtimeQuery(
    reactor: QueryReactor,
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

    @param host: an IPv4 or IPv6 address, or a host name.
    @param versions: the versions to offer.
    @param previous: for a chained request, the previous response packet:
        the nonce is then derived from it and a new random C{rand} per try.
    @param timeout: seconds to wait for the first try's response; each
        further try waits 1.5 times longer.
    @param tries: how many requests to send at most.
    @param clock: our wall clock, which times the round trip.
    @return: a L{Deferred} firing with a L{RoughtimeResult}, or failing
        with the verification error
        (L{udptime.roughtime.RoughtimeVerificationError}) of the last
        response rejected, with L{QueryTimeout}, or with L{QueryError}.
    @raise ValueError: C{timeout}, C{tries}, C{port} or C{versions} are out
        of range.
    """
    if not 0 < timeout < float("inf"):
        raise ValueError(f"timeout must be positive, not {timeout!r}")
    if tries < 1:
        raise ValueError(f"tries must be at least 1, not {tries!r}")
    if not 0 < port < 65536:
        raise ValueError(f"port must be from 1 to 65535, not {port!r}")
    codec = RoughtimeClientCodec(publicKey, versions, previous)
    return Deferred.fromCoroutine(
        _tries(reactor, host, port, codec, timeout, tries, clock)
    )


class ChainError(QueryError):
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
    reactor: QueryReactor,
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
            except (QueryError, RoughtimeVerificationError) as e:
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
    reactor: QueryReactor,
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
