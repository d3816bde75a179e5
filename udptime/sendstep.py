"""
The send step of NTP replies: the clock's reading for a reply's transmit
timestamp, the reply's last 8 bytes, and the send, which come last on an
NTP reply's way out (see L{LateTransmit<udptime.ntp.LateTransmit>}).

A client's offset is off by half the time from the server's reading of the
transmit time to the reply leaving.  In Python that step is the clock's
call, the arithmetic of L{LateTransmit.stamp
<udptime.ntp.LateTransmit.stamp>} on Python integers, the reply's packing,
and C{socket.sendto}'s parsing of the address: several microseconds.  The
optional C extension C{udptime._sendstep} (built by C{pip install} where a
C compiler and Python's headers are found) does the same in one call, with
the interpreter's lock released from the clock's reading to the send:
byte for byte the reply the Python step sends for the same clock reading.

The compiled step is used by udptime's own port (L{udptime.port}) for the
replies L{LateTransmit<udptime.ntp.LateTransmit>} stamps with its reply
constants and the system clock (L{systemClock<udptime.clock.systemClock>}):
nearly every NTP reply.  The rest take the Python step: replies stamped
from another clock (an injected or offset one, as tests use), replies
built by the general conversion, Twisted's generic port, and NTS replies,
whose authenticator covers the header and so the transmit timestamp
(stamped, then sealed, then sent).  C{twistd udptime --no-compiled-send}
turns it off.
"""

from __future__ import annotations

import importlib
import socket
from collections.abc import Callable
from types import ModuleType
from typing import Final, TypeAlias

from udptime.address import Address
from udptime.decision import Ancillary

MODULE: Final = "udptime._sendstep"
"""The compiled module's name."""


SendCall: TypeAlias = Callable[
    [bytes, bytes, int, int, int, float, int, Address, Ancillary | None], int | None
]
"""
A socket's compiled send step: stamps the reply made of a
L{LateTransmit<udptime.ntp.LateTransmit>}'s parts (its start, origin,
receive timestamp and fuzz, and its reply constants' C{fuzzBits},
C{halfStepsPerSecond} and C{offsetUnits}) with the system clock's time and
sends it to an address, with control messages or none; returns the bytes
sent, or a failed send's C{errno}, negated, or L{None} (nothing sent) for
an address it does not convert (a host name, an IPv6 address with a zone,
an address of the socket's other family), which the Python step sends to.
"""

StampCall: TypeAlias = Callable[[bytes, bytes, int, int, int, float, int, float], bytes]
"""The compiled step's stamp alone, for a given transmit time (tests)."""


def _load() -> ModuleType | str:
    """
    The compiled module, or why it cannot be imported.
    """
    try:
        return importlib.import_module(MODULE)
    except ImportError as failure:
        return f"{MODULE} is not built ({failure})"


def unavailable() -> str | None:
    """
    Why the compiled send step cannot be used here, or L{None} when it can.
    """
    loaded = _load()
    return loaded if isinstance(loaded, str) else None


def _compiled() -> ModuleType | None:
    """
    The compiled module, or L{None} where it cannot be imported.
    """
    loaded = _load()
    return None if isinstance(loaded, str) else loaded


def compiledStep(sock: socket.socket) -> SendCall | None:
    """
    The compiled send step of the UDP socket C{sock} (its descriptor, which
    must stay open while the step is used), or L{None} where the module is
    not built or the socket not IPv4 or IPv6.
    """
    compiled = _compiled()
    if compiled is None:
        return None
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    step: SendCall = compiled.SendStep(sock.fileno(), sock.family).send
    return step


def compiledStamp() -> StampCall | None:
    """
    The compiled step's stamp (the reply it sends for a transmit time it is
    given), or L{None} where the module is not built.
    """
    compiled = _compiled()
    if compiled is None:
        return None
    stamp: StampCall = compiled.stamp
    return stamp
