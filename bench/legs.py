"""
Where an NTP server's timestamps are off: the error of each server split
between the request's way (outbound) and the reply's (return).

    python bench/legs.py [--exchanges 400] [--rounds 3] [--interval 0.005]
                         [--only chronyd ...]

On loopback client and server read one clock, so each leg can be measured
on its own from the client's kernel timestamps and the server's:

  - outbound: the server's receive timestamp of a request (T2) minus the
    client's kernel transmit timestamp of it (T1);
  - return: the client's kernel receive timestamp of a reply (T4) minus the
    reply's transmit timestamp (T3): the time the server read (basic
    mode), or the kernel's transmit timestamp of its previous reply
    (interleaved mode).

A perfect server gives the same legs whatever its implementation: the
kernel's own time from one timestamp to the other.  A server whose
timestamp is late or early by some time shows it in one leg.  The client
asks as C{chronyd}'s client does in interleaved mode (C{xleave}): each
request carries the previous reply's receive timestamp as its origin and
the time that reply arrived as its receive timestamp; the interleaved
sample pairs the outbound leg of the new request with the return leg of the
previous reply, as chronyd does.  From the legs come chronyd's figures:
delay = outbound + return, offset = (outbound - return) / 2.

The servers are those of the accuracy benchmark and the NTP references of
the throughput one (C{--only} picks some),
each pinned to the last CPU, the client to the first; the servers take
turns, round by round.  Only loopback traffic, bounded by C{--exchanges}
per server and round.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import socket
import statistics
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from load import build
from processes import cpus
from servers import ACCURACY_SERVERS, THROUGHPUT_SERVERS, Running, Server, selected

from udptime.ancillary import MSG_ERRQUEUE, SO_TIMESTAMPING, SO_TIMESTAMPNS, TIMESPEC
from udptime.clock import NTP_UNIX_OFFSET

_NTP64 = struct.Struct("!Q")
# SOF_TIMESTAMPING_TX_SOFTWARE | SOFTWARE | OPT_RX_FILTER: software transmit
# timestamps of every datagram sent, on the error queue; receive times come
# as SO_TIMESTAMPNS messages.
_CLIENT_TIMESTAMPING = (1 << 1) | (1 << 4) | (1 << 17)


def ntpToNanoseconds(timestamp: int) -> int:
    """
    The Unix time, in nanoseconds, of a 64-bit NTP timestamp (era 0).
    """
    seconds = (timestamp >> 32) - NTP_UNIX_OFFSET
    return seconds * 1_000_000_000 + (((timestamp & 0xFFFFFFFF) * 1_000_000_000) >> 32)


def nanosecondsToNTP(nanoseconds: int) -> int:
    """
    The 64-bit NTP timestamp of a Unix time in nanoseconds (era 0).
    """
    seconds, rest = divmod(nanoseconds, 1_000_000_000)
    return (seconds + NTP_UNIX_OFFSET) << 32 | ((rest << 32) // 1_000_000_000)


def timespecNanoseconds(payload: bytes) -> int:
    """
    The Unix time, in nanoseconds, of a kernel C{timespec} control message.
    """
    seconds: int
    nanoseconds: int
    seconds, nanoseconds = TIMESPEC.unpack_from(payload)
    return seconds * 1_000_000_000 + nanoseconds


@dataclass
class Legs:
    """
    The legs measured against one server, in nanoseconds.

    @ivar basicOut: outbound legs of basic replies.
    @ivar basicBack: return legs of basic replies.
    @ivar interleavedOut: outbound legs of interleaved samples (the new
        request's).
    @ivar interleavedBack: return legs of interleaved samples (the previous
        reply's).
    """

    basicOut: list[int] = field(default_factory=list)
    basicBack: list[int] = field(default_factory=list)
    interleavedOut: list[int] = field(default_factory=list)
    interleavedBack: list[int] = field(default_factory=list)


class Client:
    """
    A client socket on 127.0.0.1 with kernel transmit and receive
    timestamps, and the state of its interleaved exchanges with one server.

    @ivar interleaved: whether it asks in interleaved form (after its first
        request).
    @ivar target: the server's address.
    @ivar sock: its socket.
    @ivar previousReceive: the receive timestamp of the previous reply, as
        sent (8 bytes).
    @ivar previousArrival: when the previous reply arrived (the kernel's
        time, ns); 0 before the first one, or after a lost one.
    """

    def __init__(self, port: int, interleaved: bool = True) -> None:
        self.interleaved = interleaved
        self.target = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        assert SO_TIMESTAMPNS is not None
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, _CLIENT_TIMESTAMPING)
        self.sock.setblocking(False)
        self.previousReceive = bytes(8)
        self.previousArrival = 0

    def close(self) -> None:
        """
        Close the socket.
        """
        self.sock.close()

    def transmitTime(self, deadline: float) -> int:
        """
        The kernel's transmit time of the request just sent, in ns.

        @raise TimeoutError: none came before C{deadline} (monotonic).
        """
        while time.monotonic() < deadline:
            try:
                _data, ancillary, _flags, _addr = self.sock.recvmsg(
                    256, 256, MSG_ERRQUEUE
                )
            except BlockingIOError:
                select.select([], [], [self.sock], 0.01)
                continue
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING:
                    return timespecNanoseconds(payload)
        raise TimeoutError("no kernel transmit timestamp")

    def reply(self, deadline: float) -> tuple[bytes, int] | None:
        """
        The next reply and its kernel receive time (ns), or L{None} when
        none came before C{deadline} (monotonic).
        """
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], 0.05)
            if not ready:
                continue
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(512, 256)
            except BlockingIOError:
                continue
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    return data, timespecNanoseconds(payload)
        return None

    def exchange(self, legs: Legs) -> None:
        """
        One request in interleaved form (basic form the first time), its
        reply, and the legs it gives.
        """
        cookie = os.urandom(8)
        if self.previousArrival and self.interleaved:
            request = (
                bytes([0x23, 0, 6, 0x20])
                + bytes(20)
                + self.previousReceive
                + _NTP64.pack(nanosecondsToNTP(self.previousArrival))
                + cookie
            )
        else:
            request = bytes([0x23, 0, 6, 0x20]) + bytes(36) + cookie
        deadline = time.monotonic() + 1.0
        self.sock.sendto(request, self.target)
        sent = self.transmitTime(deadline)
        got = self.reply(deadline)
        if got is None:
            self.previousArrival = 0
            return
        data, arrival = got
        if len(data) < 48:
            return
        origin = data[24:32]
        receive = ntpToNanoseconds(_NTP64.unpack_from(data, 32)[0])
        transmit = ntpToNanoseconds(_NTP64.unpack_from(data, 40)[0])
        if origin == cookie:
            legs.basicOut.append(receive - sent)
            legs.basicBack.append(arrival - transmit)
        elif self.previousArrival and origin == request[32:40]:
            legs.interleavedOut.append(receive - sent)
            legs.interleavedBack.append(self.previousArrival - transmit)
        else:
            return
        self.previousReceive = data[32:40]
        self.previousArrival = arrival


def summary(label: str, outbound: Sequence[int], back: Sequence[int]) -> str:
    """
    One line of medians (µs): the legs, and chronyd's delay and offset.
    """
    if not outbound:
        return f"  {label:<12} no samples"
    delays = [o + b for o, b in zip(outbound, back, strict=True)]
    offsets = [(o - b) / 2 for o, b in zip(outbound, back, strict=True)]
    out, returned = statistics.median(outbound), statistics.median(back)
    return (
        f"  {label:<12} n={len(outbound):<5} outbound {out / 1e3:6.2f}"
        f"  return {returned / 1e3:6.2f}"
        f"  delay {statistics.median(delays) / 1e3:6.2f}"
        f"  offset {statistics.median(offsets) / 1e3:+6.2f}"
        f"  |offset| {statistics.median(abs(x) for x in offsets) / 1e3:5.2f}"
    )


def main() -> None:
    """
    Measure the legs against each server, round by round, and print their
    medians.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exchanges", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--basic", action="store_true", help="ask in basic form only")
    args = parser.parse_args()
    if SO_TIMESTAMPNS is None:
        raise SystemExit("this system has no kernel timestamps")
    available = cpus()
    serverCPUs = {available[-1]}
    os.sched_setaffinity(0, {available[0]})
    servers: list[Server] = selected(
        ACCURACY_SERVERS
        + tuple(
            s for s in THROUGHPUT_SERVERS if s.protocol == "ntp" and s.kind != "udptime"
        ),
        args.only,
    )
    servers = list({server.key: server for server in servers}.values())
    if any(server.kind == "c" for server in servers):
        build()
    results = {server.key: Legs() for server in servers}
    with contextlib.ExitStack() as stack:
        running = [
            (server, stack.enter_context(Running(server, serverCPUs)))
            for server in servers
        ]
        for _ in range(args.rounds):
            for server, started in running:
                client = Client(started.port, not args.basic)
                try:
                    for _ in range(args.exchanges):
                        client.exchange(results[server.key])
                        time.sleep(args.interval)
                finally:
                    client.close()
    print("medians, µs (outbound = T2 - T1, return = T4 - T3)")
    for server in servers:
        legs = results[server.key]
        print(server.key)
        print(summary("basic", legs.basicOut, legs.basicBack))
        print(summary("interleaved", legs.interleavedOut, legs.interleavedBack))


if __name__ == "__main__":
    main()
