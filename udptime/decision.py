"""
What a server protocol decides about a datagram: a L{Decision}, which the
port then carries out and counts (see L{udptime.port}).

A decision is either the bytes of the reply to send, which the port counts
as C{answered} once the kernel took them, or a L{Refusal}: the datagram is
counted under the refusal's counter (C{malformed}, C{dropped}, C{limited},
C{denied}, C{looped}) and gets no reply, or gets the refusal's own reply (a
text C{error:} line, counted C{answered} once sent; an NTP Kiss-o'-Death,
counted C{kissed}).  A decision is never L{None}.

A reply that carries the time it is sent (NTP's transmit timestamp) may also
be decided as a L{LateReply}: built but for that time, which the port has it
read and write (L{LateReply.stamp}) just before the send, so that nothing
but the send comes between the clock's reading and the reply leaving.

The refusals without a reply are module constants (L{DROPPED},
L{MALFORMED} here, and the policy's verdicts in L{udptime.policy}), so
that refusing costs no allocation; answering costs none either, as the
reply is the decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, TypeAlias

from udptime import counters


class Refusal:
    """
    A datagram the protocol does not answer as asked.

    @ivar counter: the index (in L{ServiceCounters.counts
        <udptime.counters.ServiceCounters.counts>}) of the counter the
        datagram is counted under.
    @ivar reply: a reply to send all the same, or L{None}.
    @ivar replyCounter: the index of the counter that counts L{reply} once
        it is sent: L{counters.ANSWERED} for a reply the port sends as it
        sends answers (an error line), anything else (L{counters.KISSED})
        for one it sends at once, never held back for a batch.
    """

    __slots__ = ("counter", "reply", "replyCounter")

    def __init__(
        self,
        counter: int,
        reply: bytes | None = None,
        replyCounter: int = counters.ANSWERED,
    ) -> None:
        self.counter = counter
        self.reply = reply
        self.replyCounter = replyCounter

    @property
    def name(self) -> str:
        """
        The name of the counter the datagram is counted under.
        """
        return counters.COUNTER_NAMES[self.counter]

    def __repr__(self) -> str:
        if self.reply is None:
            return f"<Refusal {self.name}>"
        sent = counters.COUNTER_NAMES[self.replyCounter]
        return f"<Refusal {self.name}, {len(self.reply)}-byte reply ({sent})>"


Ancillary: TypeAlias = Sequence[tuple[int, int, Any]]
"""Control messages to send a reply with (C{sendmsg}'s ancillary data)."""


class LateReply:
    """
    A reply built but for the time it is sent, which L{stamp} reads and
    writes last: the port calls it just before the send, and sends what it
    returns at once.

    @ivar control: control messages to send the reply with (besides the
        port's own), or L{None}: a request for the reply's kernel transmit
        timestamp.
    """

    __slots__ = ()
    control: Ancillary | None

    def stamp(self) -> bytes:
        """
        Read the clock and return the reply's bytes with the send time, to
        be sent at once.
        """
        raise NotImplementedError(type(self).__name__ + ".stamp")

    def __len__(self) -> int:
        """
        The reply's length in bytes.
        """
        raise NotImplementedError(type(self).__name__ + ".__len__")


Decision: TypeAlias = bytes | Refusal | LateReply
"""What a protocol decided about one datagram: its reply, a reply to stamp
with its send time as it is sent, or a refusal."""

DROPPED: Final = Refusal(counters.DROPPED)
"""No reply, for protocol reasons (oversized, not a request of this
protocol, the time not known)."""

MALFORMED: Final = Refusal(counters.MALFORMED)
"""No reply to a request the codec rejected."""


def errorReply(reply: bytes) -> Refusal:
    """
    A malformed request answered with C{reply} (an error line), sent as
    answers are and counted C{answered}.
    """
    return Refusal(counters.MALFORMED, reply)


def kissOfDeath(reply: bytes) -> Refusal:
    """
    A request refused by the rate limits, answered with the Kiss-o'-Death
    C{reply}, sent at once and counted C{kissed}.
    """
    return Refusal(counters.LIMITED, reply, counters.KISSED)
