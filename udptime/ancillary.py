"""
The ancillary data (control messages) udptime's server port asks the kernel
for with each datagram, and sends back with a reply: kernel receive
timestamps (C{SO_TIMESTAMPNS}) and reports of the address a datagram
reached (C{IP_PKTINFO}, C{IPV6_PKTINFO}).

Both the one-at-a-time reader (C{recvmsg}) and the batched one
(L{udptime.mmsg}, C{recvmmsg}) size their control buffers from here.
"""

from __future__ import annotations

import fcntl
import platform
import socket
import struct
import sys
from typing import Final, NamedTuple

from udptime.clock import KernelTime


def _timestampOption() -> int | None:
    """
    The value of C{SO_TIMESTAMPNS} on this system, or L{None} when it has
    none (Python only names the constant from 3.14 on).
    """
    option: int | None = getattr(socket, "SO_TIMESTAMPNS", None)
    if option is not None:
        return option
    if sys.platform != "linux":
        return None
    # asm-generic/socket.h: SO_TIMESTAMPNS_OLD, whose message carries a
    # native struct timespec; only a few architectures number it otherwise.
    if platform.machine().startswith(("sparc", "parisc", "alpha", "mips")):
        return None
    return 35


SO_TIMESTAMPNS: Final = _timestampOption()
"""The socket option for nanosecond receive timestamps (L{None}: none)."""

SCM_TIMESTAMPNS: Final = SO_TIMESTAMPNS
"""The control message that carries them (Linux numbers both alike)."""

TIMESPEC: Final = struct.Struct("@ll")
"""A timestamp message's data: a native C{struct timespec}."""

TIMESTAMP_SPACE: Final = socket.CMSG_SPACE(TIMESPEC.size)
"""The control buffer room one timestamp message takes."""

_IP_PKTINFO: Final = getattr(socket, "IP_PKTINFO", 8)  # Linux's, unnamed before 3.14


class DestinationReports(NamedTuple):
    """
    How a socket reports the address each datagram reached.

    @ivar level: the option's level (C{IPPROTO_IP}, C{IPPROTO_IPV6}), also
        the level of its control messages.
    @ivar option: the option that turns the reports on.
    @ivar kind: the type of their control message.
    @ivar size: the size of a message's data (C{struct in_pktinfo},
        C{struct in6_pktinfo}).
    """

    level: int
    option: int
    kind: int
    size: int

    @property
    def space(self) -> int:
        """
        The control buffer room one report takes.
        """
        return socket.CMSG_SPACE(self.size)


def destinationReports(family: int) -> DestinationReports | None:
    """
    How a socket of C{family} reports the address each datagram reached;
    L{None} where this system has no reports udptime knows.  Sent back
    with a reply (C{IP_PKTINFO}'s C{struct in_pktinfo}, C{IPV6_PKTINFO}'s
    C{struct in6_pktinfo}, which on a dual-stack socket covers IPv4 too),
    the message makes the reply leave from that address, as chronyd's do.
    """
    if sys.platform != "linux":
        return None
    if family == socket.AF_INET:
        return DestinationReports(socket.IPPROTO_IP, _IP_PKTINFO, _IP_PKTINFO, 12)
    if family == socket.AF_INET6:
        return DestinationReports(
            socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, socket.IPV6_PKTINFO, 20
        )
    return None


def kernelTimestampsAvailable() -> bool:
    """
    Whether this system can give receive timestamps with C{SO_TIMESTAMPNS}.
    """
    return SO_TIMESTAMPNS is not None


# Kernel transmit timestamps (Documentation/networking/timestamping.rst):
# asked for one reply at a time with a control message, reported on the
# socket's error queue with the reply.
SO_TIMESTAMPING: Final = getattr(socket, "SO_TIMESTAMPING", 37)
"""The socket option (and control message) of C{SO_TIMESTAMPING}."""

SCM_TIMESTAMPING: Final = SO_TIMESTAMPING
"""The control message that carries the timestamps (three C{timespec}s,
the software one first)."""

_TX_SOFTWARE: Final = 1 << 1
_SOFTWARE: Final = 1 << 4
_OPT_RX_FILTER: Final = 1 << 17

TRANSMIT_TIMESTAMPING: Final = _SOFTWARE | _OPT_RX_FILTER
"""
The socket-wide C{SO_TIMESTAMPING} flags: report software timestamps, but
never on received datagrams (C{SOF_TIMESTAMPING_OPT_RX_FILTER}, Linux 6.2),
whose receive times come as C{SO_TIMESTAMPNS} messages alone.
"""

TRANSMIT_TIMESTAMP_REQUEST: Final = (
    (socket.SOL_SOCKET, SO_TIMESTAMPING, struct.pack("@I", _TX_SOFTWARE)),
)
"""Control data that asks the kernel for a datagram's software transmit
timestamp, sent with it."""

MSG_ERRQUEUE: Final = getattr(socket, "MSG_ERRQUEUE", 0x2000)
"""The C{recvmsg} flag that reads the socket's error queue."""


def enableTransmitTimestamps(sock: socket.socket) -> None:
    """
    Let C{sock} report the software transmit timestamps of the datagrams
    sent with L{TRANSMIT_TIMESTAMP_REQUEST}, on its error queue.

    @raise OSError: this system cannot (not Linux, or a kernel without
        C{SOF_TIMESTAMPING_OPT_RX_FILTER}).
    """
    if sys.platform != "linux":
        raise OSError("kernel transmit timestamps are read on Linux only")
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TRANSMIT_TIMESTAMPING)


_SIOCGSTAMPNS: Final = 0x8907
"""The ioctl that gives the kernel receive time of a socket's last datagram
(Linux's C{SIOCGSTAMPNS_OLD}: a native C{struct timespec})."""


def lastReceiveTime(fd: int) -> KernelTime | None:
    """
    The kernel's receive time (Unix seconds, exact to the nanosecond) of
    the datagram read last from
    the socket C{fd}, with the ioctl C{SIOCGSTAMPNS}, which works with any
    read call; L{None} where there is none: not Linux, nothing read yet
    (the first call turns the socket's timestamps on, so make one before
    the datagram arrives), or another error.
    """
    if sys.platform != "linux":
        return None
    try:
        stamp = fcntl.ioctl(fd, _SIOCGSTAMPNS, bytes(TIMESPEC.size))
    except OSError:
        return None
    seconds, nanoseconds = TIMESPEC.unpack(stamp)
    return KernelTime(seconds, nanoseconds)
