"""
Per-service counters: what each service received, answered and refused.

The counters are plain integers on a slotted object so that the hot path pays
one attribute increment per event; L{ServiceCounters.snapshot} gives a copy
for reporting.
"""

from __future__ import annotations

COUNTER_NAMES: tuple[str, ...] = (
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


class CounterSet:
    """
    Integer counters on a slotted object: a subclass names them in its
    C{__slots__}, and they start at 0.
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


class ServiceCounters(CounterSet):
    """
    Event counts of one service.

    @ivar received: datagrams handed to the protocol.
    @ivar answered: replies written (including error replies).
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

    __slots__ = COUNTER_NAMES

    received: int
    answered: int
    malformed: int
    dropped: int
    limited: int
    denied: int
    looped: int
    kissed: int
    sendFailed: int
    internalErrors: int
