"""
Values shared by the client and the per-protocol client codecs (no I/O).

A L{ClientCodec} knows one protocol's side of a query: what to send, and
how to read a reply into a L{QueryResult}.  L{udptime.client} does the I/O
(sockets, timeouts, retries) for every codec alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from udptime.address import formatAddress


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


formatHostPort = formatAddress
"""An address for messages: C{127.0.0.1:5000}, C{[::1]:5000}."""


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
    Every try went unanswered.
    """


class ServerRefused(QueryError):
    """
    The server answered with a refusal (for example an NTP Kiss-o'-Death)
    or an error line; retrying now would not help.
    """


class BadReply(QueryError):
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


class EmptyRequest:
    """
    For client codecs of protocols whose request is an empty datagram
    (RFC 868 Time, RFC 867 Daytime): any datagram from the server's address
    is taken as the reply, so no state is kept.
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
        self,
        data: bytes,
        state: Any,
        sentAt: float,
        receivedAt: float,
        host: str,
        port: int,
    ) -> QueryResult:
        """
        Read a reply received at Unix time C{receivedAt}.

        @raise ReplyMismatch: C{data} is not the reply to this request.
        @raise ServerRefused: the server refused to answer.
        @raise BadReply: the reply answers the request, and cannot be right.
        """
