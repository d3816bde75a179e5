"""
Per-service counters: what each service received, answered and refused.

The counters are one list of integers, indexed by the constants below, so
that the port counts an event with one list increment whatever the event
(a L{Refusal<udptime.decision.Refusal>} carries the index of the counter it
is counted under).  L{ServiceCounters} also reads and writes them by name,
and L{ServiceCounters.snapshot} gives a copy for reporting.
"""

from __future__ import annotations

from typing import Final, overload

COUNTER_NAMES: Final[tuple[str, ...]] = (
    "received",
    "answered",
    "malformed",
    "dropped",
    "limited",
    "denied",
    "looped",
    "kissed",
    "sendFailed",
    "internalErrors",
)
"""Every counter's name, in the order of L{ServiceCounters.counts}."""

RECEIVED: Final = 0
"""Index of the datagrams read and handed to the protocol."""
ANSWERED: Final = 1
"""Index of the replies sent (including error replies)."""
MALFORMED: Final = 2
"""Index of the requests the codec rejected."""
DROPPED: Final = 3
"""Index of the datagrams dropped without reply for protocol reasons."""
LIMITED: Final = 4
"""Index of the datagrams refused by rate limiting."""
DENIED: Final = 5
"""Index of the datagrams refused by an allow/deny list."""
LOOPED: Final = 6
"""Index of the datagrams refused by the loop guard."""
KISSED: Final = 7
"""Index of the Kiss-o'-Death replies sent."""
SEND_FAILED: Final = 8
"""Index of the replies the kernel would not send."""
INTERNAL_ERRORS: Final = 9
"""Index of the bugs: exceptions caught around a datagram."""


class _Counter:
    """
    One of L{ServiceCounters}' counters, read and written by name.
    """

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    @overload
    def __get__(self, instance: None, owner: type[ServiceCounters]) -> _Counter: ...

    @overload
    def __get__(
        self, instance: ServiceCounters, owner: type[ServiceCounters]
    ) -> int: ...

    def __get__(
        self, instance: ServiceCounters | None, owner: type[ServiceCounters]
    ) -> _Counter | int:
        if instance is None:
            return self
        return instance.counts[self.index]

    def __set__(self, instance: ServiceCounters, value: int) -> None:
        instance.counts[self.index] = value


class CounterSet:
    """
    Integer counters on a slotted object, read and written by name: a
    subclass names them in its C{__slots__}, and they start at 0.  For
    counters off the port's hot path (the NTS-KE server's, for one);
    L{ServiceCounters} keeps its counts in one list for the port.
    """

    __slots__: tuple[str, ...] = ()

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def snapshot(self) -> dict[str, int]:
        """
        A copy of every counter, by name.
        """
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        fields = " ".join(f"{k}={v}" for k, v in self.snapshot().items())
        return f"<{type(self).__name__} {fields}>"


class ServiceCounters:
    """
    Event counts of one service.

    @ivar counts: every counter, by index (L{RECEIVED}, L{ANSWERED}, ...).
    @ivar received: datagrams handed to the protocol.
    @ivar answered: replies sent (including error replies).
    @ivar malformed: requests the codec rejected (answered with an error
        where the protocol has one, dropped otherwise).
    @ivar dropped: datagrams dropped without reply for protocol reasons
        (oversized, not a request of this protocol).
    @ivar limited: datagrams refused by rate limiting.
    @ivar denied: datagrams refused by an allow/deny list.
    @ivar looped: datagrams refused by the loop guard.
    @ivar kissed: Kiss-o'-Death replies sent (NTP).
    @ivar sendFailed: replies the kernel would not send (full buffer).
    @ivar internalErrors: bugs: exceptions caught around a request.
    """

    __slots__ = ("counts",)

    received = _Counter(RECEIVED)
    answered = _Counter(ANSWERED)
    malformed = _Counter(MALFORMED)
    dropped = _Counter(DROPPED)
    limited = _Counter(LIMITED)
    denied = _Counter(DENIED)
    looped = _Counter(LOOPED)
    kissed = _Counter(KISSED)
    sendFailed = _Counter(SEND_FAILED)
    internalErrors = _Counter(INTERNAL_ERRORS)

    def __init__(self) -> None:
        self.counts = [0] * len(COUNTER_NAMES)

    def snapshot(self) -> dict[str, int]:
        """
        A copy of every counter, by name.
        """
        return dict(zip(COUNTER_NAMES, self.counts, strict=True))

    def __repr__(self) -> str:
        fields = " ".join(f"{k}={v}" for k, v in self.snapshot().items())
        return f"<ServiceCounters {fields}>"
