"""
What a client reads from a time server, and how it can fail (no I/O).

A L{ClientCodec} knows one protocol's side of a query: what to send, and
what a reply says, as a L{Reading}.  L{udptime.client.query} does the I/O
(sockets, timeouts, retries) for every codec alike, and gives a
L{QueryResult}: the reading with where it came from, the reply datagram
and the round-trip delay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Protocol


@dataclass(frozen=True)
class Reading:
    """
    What a client codec read from one reply.

    @ivar text: the server's answer for people (its time, or a month name).
    @ivar serverTime: the server's time as Unix seconds, when the reply
        carries one.
    @ivar offset: estimated offset of the server's clock from ours in
        seconds, positive when the server is ahead (see
        L{QueryResult.offset}), when the reply carries a time.
    @ivar delay: the round-trip delay in seconds, when the protocol measures
        it otherwise than from our send and receive times (NTP: RFC 5905's
        delta, without the server's processing time); L{None}: the round
        trip as L{udptime.client.query} timed it.
    @ivar details: protocol-specific fields (NTP: stratum, leap, refid, ...).
    """

    text: str
    serverTime: float | None = None
    offset: float | None = None
    delay: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueryResult:
    """
    What one query learned.

    @ivar protocol: the protocol's name (C{"text"}, C{"ntp"}, ...).
    @ivar host: the server address the reply came from.
    @ivar port: the server port.
    @ivar reply: the reply datagram, unchanged.
    @ivar text: the server's answer for people (its time, or a month name).
    @ivar serverTime: the server's time as Unix seconds, when the reply
        carries one.
    @ivar delay: round-trip delay in seconds (for NTP, RFC 5905's delta:
        without the server's processing time).
    @ivar offset: estimated offset of the server's clock from ours in
        seconds, positive when the server is ahead: for a reply carrying one
        time, that time minus the midpoint of our send and receive times
        (see L{estimateOffset}); for NTP, RFC 5905's theta from the four
        timestamps.
    @ivar details: protocol-specific fields (NTP: stratum, leap, refid, ...).
    """

    protocol: str
    host: str
    port: int
    reply: bytes
    text: str
    serverTime: float | None
    delay: float
    offset: float | None
    details: dict[str, Any] = field(default_factory=dict)


def estimateOffset(
    serverTime: float | None,
    sentAt: float,
    receivedAt: float,
    truncatedTo: float = 0.0,
) -> float | None:
    """
    The offset of a server clock that answered with one reading,
    C{serverTime}, between our C{sentAt} and C{receivedAt}: the reading minus
    the midpoint of the round trip.

    A server that truncates its clock to whole units of C{truncatedTo}
    seconds (RFC 868, Daytime and C{ctime}-style replies truncate to the
    second) read it somewhere in C{[serverTime, serverTime + truncatedTo)};
    the middle of that interval is the unbiased estimate, so half a unit is
    added.  Readings rounded to the microsecond need no correction.
    """
    if serverTime is None:
        return None
    return serverTime + truncatedTo / 2 - (sentAt + receivedAt) / 2


class QueryError(Exception):
    """
    Base of the errors a query fails with.
    """


class QueryTimeout(QueryError):
    """
    Every try went unanswered, or the host name lookup did not finish in
    time (L{LookupTimeout}).
    """


class LookupTimeout(QueryTimeout):
    """
    The lookup of the server's host name did not finish in time: no request
    was sent.
    """


class ServerReplyError(QueryError):
    """
    The server's reply to our request ends the query in failure.  A codec
    raises it with what the reply showed, not knowing the server's address;
    L{udptime.client.query} sets L{server}, and the message names it.

    @cvar template: the message, from C{{server}} and C{{reason}}.
    @ivar reason: what the reply showed, e.g. C{"sent a bogus reply: ..."}.
    @ivar server: the server's address for messages (see
        L{udptime.address.formatAddress}); C{"the server"} until the query sets it.
    """

    template: ClassVar[str] = "{server} {reason}"

    def __init__(self, reason: str, server: str = "the server") -> None:
        super().__init__(reason)
        self.reason = reason
        self.server = server

    def __str__(self) -> str:
        return self.template.format(server=self.server, reason=self.reason)


class ServerRefused(ServerReplyError):
    """
    The server answered with a refusal (for example an NTP Kiss-o'-Death)
    or an error line; retrying now would not help.
    """


class BadReply(ServerReplyError):
    """
    The server's reply answers the request but cannot be right (an NTP
    reply sent before the request was received, by the server's own
    timestamps): a broken server, which asking again would not mend.
    """


class ReplyMismatch(ValueError):
    """
    A datagram that is not the reply to our request (wrong cookie, wrong
    origin timestamp, malformed): the client ignores it and keeps waiting.
    """


UNAUTHENTICATED: Final = "unauthenticated"
"""The key of a reading's C{details} that says nothing ties its reply to the
request: anyone who can send a datagram from the server's address and port
(on the path, or forging it) can answer in its place."""


class EmptyRequest:
    """
    For client codecs of protocols whose request is an empty datagram
    (RFC 868 Time, RFC 867 Daytime): any datagram from the server's address
    and port of the right form is taken as the reply, so no state is kept.
    Their readings say so: C{details[UNAUTHENTICATED]} is C{True}.
    """

    def buildRequest(self, sentAt: float) -> tuple[bytes, None]:
        """
        An empty datagram; no state is needed to recognise the reply.
        """
        return b"", None


class ClientCodec(Protocol):
    """
    One protocol's client side, with no I/O.

    @ivar name: the protocol's name, as given to C{udptime --protocol}.
    @ivar defaultPort: the port the client uses when none is given.
    """

    name: str
    defaultPort: int

    def buildRequest(self, sentAt: float) -> tuple[bytes, Any]:
        """
        The datagram to send at Unix time C{sentAt}, and the state needed to
        recognise its reply (for NTP, the transmit timestamp sent).
        """

    def parseReply(
        self, data: bytes, state: Any, sentAt: float, receivedAt: float
    ) -> Reading:
        """
        Read a reply received at Unix time C{receivedAt} to the request sent
        at C{sentAt} with C{state}.

        @raise ReplyMismatch: C{data} is not the reply to this request.
        @raise ServerRefused: the server refused to answer.
        @raise BadReply: the reply answers the request, and cannot be right.
        """
