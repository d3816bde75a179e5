"""
NTP's interleaved basic mode (RFC 9769), the server's side, as chrony serves
it: what the server remembers of its recent replies, and how it tells a
request in interleaved form.

In basic mode a reply's transmit timestamp is read just before the send, so
it misses the time the reply then takes to leave.  A client that asks in
interleaved form gets instead the kernel's own transmit timestamp of the
server's previous reply to it, which the kernel reports after the send
(C{SO_TIMESTAMPING} software transmit timestamps, on the socket's error
queue: see L{udptime.port}).

A request is in interleaved form when it is version 4, its origin timestamp
is not zero and its receive timestamp differs from its transmit timestamp:
the client then copies into the origin the receive timestamp of the
server's previous reply, and into its receive field the time that reply
arrived.  When the server still has the kernel's transmit time of the reply
whose receive timestamp is that origin, sent to the same address, it
answers in interleaved mode: origin = the request's receive timestamp,
receive = this request's arrival, transmit = the previous reply's kernel
transmit time.  Otherwise it answers in basic mode, as to any other client.
Only the replies to requests in that form have their transmit times kept.

The table is bounded: beyond its capacity, the oldest reply is forgotten
(and counted); a client whose reply was forgotten, or that asks a server
that restarted, gets a basic reply, from which it starts over.  A record is
used once, and only for the address it was sent to: another host that
sends a copied origin gets a basic reply and learns nothing of the record.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Protocol

DEFAULT_CAPACITY: Final = 16384
"""Replies whose transmit times a server keeps, by default."""

ZERO_TIMESTAMP: Final = bytes(8)

SUMMARY_NAME: Final = "ntp interleave"
"""What the log's counter summaries call the NTP services' tables."""


def isInterleavedForm(data: bytes) -> bool:
    """
    Whether the NTP request C{data} (48 bytes at least) may be in
    interleaved form: version 4, a non-zero origin timestamp, and receive and
    transmit timestamps that differ.
    """
    return (
        data[0] & 0x38 == 0x20
        and data[24:32] != ZERO_TIMESTAMP
        and data[32:40] != data[40:48]
    )


class TransmitTimes:
    """
    The kernel transmit times of recent replies to requests in interleaved
    form, by the reply's receive timestamp (as sent, 8 bytes).

    @ivar capacity: the replies kept at most.
    @ivar records: for each reply's receive timestamp, the host it was sent
        to and its kernel transmit timestamp (a 64-bit NTP timestamp), or
        L{None} until the kernel reports it.
    @ivar awaiting: replies sent with a request for their kernel transmit
        time whose report has not been read yet (the port reads the error
        queue only then).
    @ivar evicted: records forgotten for room, over the table's life.
    @ivar reported: kernel transmit times recorded.
    @ivar interleaved: replies answered in interleaved mode.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self.records: dict[bytes, list[str | int | None]] = {}
        self.awaiting = 0
        self.evicted = 0
        self.reported = 0
        self.interleaved = 0

    def previous(self, host: str, origin: bytes) -> int | None:
        """
        The kernel transmit timestamp of the reply to C{host} whose receive
        timestamp was C{origin}, used up; L{None} when there is none (never
        recorded, forgotten, not yet reported, or sent to another host,
        whose record is left alone).
        """
        records = self.records
        record = records.get(origin)
        if record is None or record[0] != host:
            return None
        del records[origin]
        transmit = record[1]
        if transmit is None:
            return None
        self.interleaved += 1
        return transmit  # type: ignore[return-value]

    def expect(self, host: str, receive: bytes) -> None:
        """
        Remember a reply to C{host} whose receive timestamp is C{receive},
        sent with a request for its kernel transmit time.
        """
        records = self.records
        records[receive] = [host, None]
        self.awaiting += 1
        if len(records) > self.capacity:
            del records[next(iter(records))]
            self.evicted += 1

    def transmitted(self, receive: bytes, transmit: int) -> bool:
        """
        The kernel reported the transmit timestamp C{transmit} of the reply
        whose receive timestamp is C{receive}: whether it was recorded (it
        is not for a reply forgotten meanwhile).
        """
        record = self.records.get(receive)
        if record is None or record[1] is not None:
            return False
        record[1] = transmit
        self.reported += 1
        return True


class Served(Protocol):
    """
    A service that may keep a table of transmit times: an NTP server.
    """

    interleave: TransmitTimes | None


def tableCounts(tables: Iterable[TransmitTimes]) -> dict[str, int]:
    """
    The counters of C{tables}, summed: transmit times recorded, used in
    interleaved replies, and evicted for room.
    """
    counts = {"recorded": 0, "used": 0, "evicted": 0}
    for table in tables:
        counts["recorded"] += table.reported
        counts["used"] += table.interleaved
        counts["evicted"] += table.evicted
    return counts


class TableCounters:
    """
    The summed counters of the tables of some services (L{tableCounts}),
    read as they are when asked: a service's port gives it its table only
    once it listens.  Counted as the log's counter summaries count
    (C{snapshot}).

    @ivar services: the services.
    """

    def __init__(self, services: Iterable[Served]) -> None:
        self.services = list(services)

    def snapshot(self) -> dict[str, int]:
        """
        The counters now, by name.
        """
        return tableCounts(
            service.interleave
            for service in self.services
            if service.interleave is not None
        )
