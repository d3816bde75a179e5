"""
How far an NTP reply's transmit timestamp falls from the moment the reply
reaches its client, and what the reply costs, when replies are sent one at a
time (as udptime sends NTP replies) and when they are sent in C{sendmmsg}
groups (as udptime sends its other replies).

    python bench/txstamp.py [--count 64] [--rounds 300] [--cpu 1]

A client's offset is off by half the time from the server's reading of its
transmit timestamp to the reply's arrival, beyond what the path takes in the
other direction.  Each round queues C{--count} NTP requests from one client
in each server's socket, times one pass of udptime's port over them (every
policy on, kernel receive timestamps, batched reads: the NTP service's
default path), and reads the replies with the client's kernel receive
timestamps (C{SO_TIMESTAMPNS}); the servers take turns round by round.  For
each way of sending it prints the server's CPU per reply and percentiles of
(arrival - transmit timestamp):

  - udptime: each reply goes out with its own C{sendto}, its transmit
    timestamp read as it is built: by the compiled send step (where
    C{udptime._sendstep} is built), and by the Python one
    (C{--no-compiled-send});
  - grouped, stamped at the call: the port reads and answers C{N} requests
    at a time, queues the replies, and rewrites every transmit timestamp
    of the group with one clock reading just before the group's
    C{sendmmsg};
  - grouped, stamps spread: the same, the C{i}th reply of a group stamped
    C{i} times later than the first by the cost per reply that the
    group before took to send.

Only loopback traffic, bounded by C{--rounds} times C{--count} datagrams per
way of sending.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import time

from hotpath import NTP_REQUEST, serverPort, udptimeServer

from udptime import mmsg
from udptime.ancillary import SO_TIMESTAMPNS
from udptime.clock import ntp64ToUnix, unixToNTP64
from udptime.port import Batched, ServerPort
from udptime.replies import ReplyPath
from udptime.server import UDPServerProtocol

TRANSMIT_AT = 40
_NTP64 = struct.Struct("!Q")
_TIMESPEC = struct.Struct("@ll")


class GroupStampingReplies(ReplyPath):
    """
    udptime's reply path, its NTP replies queued as its text replies are,
    each transmit timestamp rewritten just before its group's C{sendmmsg}.

    @ivar spread: stamp the C{i}th reply of a group later than the first by
        C{i} times L{perReply}.
    @ivar perReply: the time per reply that the last group took to send.
    """

    spread = False
    perReply = 0.0

    def sendQueued(self, fd: int) -> None:
        batch = self.batch
        assert batch is not None
        clock = self.protocol.clock
        view = batch.sendData
        queued = batch.queued
        step = self.perReply if self.spread else 0.0
        start = clock()
        for slot in range(queued):
            _NTP64.pack_into(
                view,
                slot * mmsg.SEND_SLOT_SIZE + TRANSMIT_AT,
                unixToNTP64(start + slot * step),
            )
        super().sendQueued(fd)
        self.perReply = (clock() - start) / queued


class Way:
    """
    One way of sending the replies: a port, and what its rounds measured.
    """

    def __init__(self, name: str, port: ServerPort) -> None:
        self.name = name
        self.port = port
        self.cpu: list[float] = []
        self.gaps: list[float] = []


def groupingPort(
    server: UDPServerProtocol, count: int, group: int, spread: bool
) -> ServerPort:
    port = serverPort(server, True, True, count)
    # A batch of the group's size, whose replies are queued as text
    # replies are (udptime does not queue NTP replies).
    batch = mmsg.MessageBatch(group, 65535, port.addressFamily, True)
    replies = GroupStampingReplies(server, port.socket.sendto, None, batch)
    replies.queueing = True
    replies.queue = batch.queue
    replies.spread = spread
    port.batch = batch
    port.replies = replies
    port.reader = Batched(port, batch)
    return port


def client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    if SO_TIMESTAMPNS is None:
        raise SystemExit("this system has no kernel receive timestamps")
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.settimeout(2.0)
    return sock


def oneRound(way: Way, sock: socket.socket, count: int) -> None:
    target = way.port.socket.getsockname()
    for _ in range(count):
        sock.sendto(NTP_REQUEST, target)
    started = time.thread_time()
    way.port.doRead()
    way.cpu.append((time.thread_time() - started) / count * 1e6)
    for _ in range(count):
        reply, ancillary, _flags, _addr = sock.recvmsg(128, 64)
        seconds, nanoseconds = _TIMESPEC.unpack(ancillary[0][2])
        arrival = seconds + nanoseconds * 1e-9
        (transmit,) = _NTP64.unpack_from(reply, TRANSMIT_AT)
        way.gaps.append((arrival - ntp64ToUnix(transmit, arrival)) * 1e6)


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[round(fraction * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=64, help="requests per round")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument(
        "--groups", type=int, nargs="*", default=[4, 16, 64], help="sendmmsg groups"
    )
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if not mmsg.available():
        raise SystemExit("this system has no recvmmsg/sendmmsg")
    python = udptimeServer("ntp")
    python.compiledSend = False
    ways = [
        Way(
            "udptime: one sendto per reply",
            serverPort(udptimeServer("ntp"), True, True, args.count),
        ),
        Way(
            "udptime, Python send step",
            serverPort(python, True, True, args.count),
        ),
    ]
    for group in args.groups:
        for spread in (False, True):
            how = "stamps spread" if spread else "stamped at the call"
            ways.append(
                Way(
                    f"groups of {group}, {how}",
                    groupingPort(udptimeServer("ntp"), args.count, group, spread),
                )
            )
    sock = client()
    try:
        for _ in range(args.rounds):
            for way in ways:
                oneRound(way, sock, args.count)
    finally:
        sock.close()
        for way in ways:
            way.port.stopListening()  # type: ignore[no-untyped-call]
    print(
        f"{args.rounds} rounds of {args.count} NTP requests; µs; gap = a reply's "
        "arrival (the client's kernel timestamp) - its transmit timestamp"
    )
    print(
        f"{'way of sending':<38} {'CPU/reply':>9} {'gap p1':>7} {'p50':>6} "
        f"{'p99':>6} {'p99.9':>6} {'max':>6}"
    )
    for way in ways:
        gaps = sorted(way.gaps)
        cpu = sorted(way.cpu)[len(way.cpu) // 2]
        p1, p50, p99, p999 = (percentile(gaps, q) for q in (0.01, 0.5, 0.99, 0.999))
        print(
            f"{way.name:<38} {cpu:9.2f} {p1:7.1f} {p50:6.1f} {p99:6.1f} "
            f"{p999:6.1f} {gaps[-1]:6.1f}"
        )


if __name__ == "__main__":
    main()
