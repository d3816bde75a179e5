"""
The client's UDP port: one socket per try of a query, which learns the
kernel's times of the request it sends and of the reply it reads.

A client's offset is only as exact as its two times: when its request left
(the origin time, C{T1}) and when the reply arrived (C{T4}).  Read from the
wall clock in Python, both miss work done between the reading and the
datagram's passage through the kernel: the write's checks and system call
before the request leaves, the reactor's wake-up before the reply is read.
As chronyd does, the client takes both from the kernel where it can:

  - the receive time with the C{SIOCGSTAMPNS} ioctl after each read (see
    L{udptime.ancillary.lastReceiveTime}; the query does it);
  - the transmit time of its request as a software transmit timestamp
    (C{SO_TIMESTAMPING}), read from the socket's error queue right after
    the send, where the kernel put it while sending.  The reporting of
    timestamps is on only around the send: while it is on, the kernel gives
    no C{SIOCGSTAMPNS} receive time.

Where the kernel gives no transmit time, the clock is read last, just
before the send (L{sendTimed}).

L{ClientPort} is Twisted's L{twisted.internet.udp.Port} with that send,
and a socket whose error queue may hold a transmit timestamp that came
after the send returned: the reactor reports it as an error condition,
which would close an ordinary port; this one reads the queue and goes on
(L{udptime.errorqueue.ErrorQueuePort}).
"""

from __future__ import annotations

import socket
import sys
from typing import Any, Final, Protocol

from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.protocol import DatagramProtocol

from udptime.ancillary import (
    MSG_ERRQUEUE,
    SCM_TIMESTAMPING,
    SO_TIMESTAMPING,
    TIMESPEC,
)
from udptime.clock import KernelTime, WallClock
from udptime.errorqueue import ErrorQueuePort

_TX_SOFTWARE: Final = 1 << 1
_SOFTWARE: Final = 1 << 4
_OPT_TSONLY: Final = 1 << 11

REQUEST_TIMESTAMPING: Final = _TX_SOFTWARE | _SOFTWARE | _OPT_TSONLY
"""
The C{SO_TIMESTAMPING} flags of a client socket while it sends: a software
transmit timestamp of every datagram sent, reported on the error queue
without the datagram (C{SOF_TIMESTAMPING_OPT_TSONLY}).
"""

_ERROR_QUEUE_CONTROL: Final = socket.CMSG_SPACE(3 * TIMESPEC.size) + socket.CMSG_SPACE(
    64
)
"""Control buffer room for one timestamp message and its error report."""

_MAX_QUEUED: Final = 8
"""Error queue messages read at most per call (one is expected)."""


class _Writable(Protocol):
    """
    What L{sendTimed} uses of a port that is not a L{ClientPort}.
    """

    def write(self, datagram: bytes, addr: tuple[str, int]) -> None: ...


def readTransmitTime(sock: socket.socket) -> KernelTime | None:
    """
    Read the software transmit timestamps waiting on C{sock}'s error queue,
    without waiting: the last one (Unix seconds, exact to the nanosecond),
    or L{None} when there is none.
    """
    found = None
    for _ in range(_MAX_QUEUED):
        try:
            _data, ancillary, _flags, _addr = sock.recvmsg(
                0, _ERROR_QUEUE_CONTROL, MSG_ERRQUEUE | socket.MSG_DONTWAIT
            )
        except OSError:
            # Empty (EAGAIN), or no error queue to read.
            return found
        for level, kind, payload in ancillary:
            if (
                level == socket.SOL_SOCKET
                and kind == SCM_TIMESTAMPING
                and len(payload) >= TIMESPEC.size
            ):
                seconds, nanoseconds = TIMESPEC.unpack_from(payload)
                if seconds or nanoseconds:
                    found = KernelTime(seconds, nanoseconds)
    return found


class ClientPort(ErrorQueuePort):
    """
    A client's UDP port (see the module's description): Twisted's, with a
    send that learns the kernel's transmit time, and an error queue read
    rather than taken for the socket's end.

    @ivar transmitTimes: whether to ask the kernel for transmit times
        (L{False} on this port once the system refused the option: not
        asked again).
    """

    transmitTimes = sys.platform == "linux"

    def sendTimed(
        self, datagram: bytes, addr: tuple[str, int], clock: WallClock
    ) -> float:
        """
        Send C{datagram} to C{addr}: its transmit time, the kernel's where
        it gives one, else C{clock}'s reading just before the send.

        @raise OSError: as L{twisted.internet.udp.Port.write} does, and its
            C{MessageLengthError} and C{InvalidAddressError}.
        """
        timed = self.transmitTimes
        if timed:
            try:
                self.socket.setsockopt(
                    socket.SOL_SOCKET, SO_TIMESTAMPING, REQUEST_TIMESTAMPING
                )
            except OSError:
                timed = self.transmitTimes = False
        try:
            sentAt = clock()
            self.write(datagram, addr)
        finally:
            if timed:
                kernel = readTransmitTime(self.socket)
                # Off again, or the reply would have no SIOCGSTAMPNS time.
                self.socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, 0)
        return sentAt if not timed or kernel is None else kernel

    def readErrorsLeft(self) -> bool:
        """
        Read a transmit timestamp that came after the send returned (too
        late to be used).
        """
        readTransmitTime(self.socket)
        return True


def listenForReplies(
    reactor: Any, protocol: DatagramProtocol, interface: str, maxPacketSize: int
) -> Any:
    """
    A new UDP port on a free port number of C{interface}, for C{protocol}:
    a L{ClientPort} on Linux with a reactor that watches file descriptors
    (C{IReactorFDSet}, as all of Twisted's reactors there do), else the
    reactor's own C{listenUDP}.

    @raise twisted.internet.error.CannotListenError: as C{listenUDP} does.
    """
    if sys.platform == "linux" and IReactorFDSet.providedBy(reactor):
        port = ClientPort(0, protocol, interface, maxPacketSize, reactor)  # type: ignore[no-untyped-call]
        port.startListening()  # type: ignore[no-untyped-call]
        return port
    return reactor.listenUDP(
        0, protocol, interface=interface, maxPacketSize=maxPacketSize
    )


def sendTimed(
    port: _Writable, datagram: bytes, addr: tuple[str, int], clock: WallClock
) -> float:
    """
    Send C{datagram} to C{addr} on C{port}: its transmit time, the kernel's
    on a L{ClientPort} that has one, else C{clock}'s reading just before
    the send.
    """
    if isinstance(port, ClientPort):
        return port.sendTimed(datagram, addr, clock)
    sentAt = clock()
    port.write(datagram, addr)
    return sentAt
