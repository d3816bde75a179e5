"""
A UDP port that reads its socket's error queue rather than taking it for
the socket's end: the base of udptime's server and client ports, whose
sockets get kernel transmit timestamps on their error queues.
"""

from __future__ import annotations

from twisted.internet import udp
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(IHalfCloseableDescriptor)
class ErrorQueuePort(udp.Port):
    """
    A UDP port whose socket's error queue may hold kernel transmit
    timestamps: the reactor reports such a queue as the socket's error
    condition, with nothing to read, and would take it for the socket's end
    (a UDP socket has no other end to close).  This port reads the queue
    instead (L{readErrorsLeft}) and goes on reading.
    """

    def readErrorsLeft(self) -> bool:
        """
        Read what waits on the socket's error queue: whether this port
        reads its error queue at all (if not, the error condition is the
        socket's end).
        """
        return False

    def readConnectionLost(self, reason: Failure) -> None:
        """
        The reactor saw the socket's error condition with nothing to read:
        a transmit timestamp that came after the reads or sends that waited
        for it.  Read it and go on reading.
        """
        if self.connected and self.readErrorsLeft():
            self.startReading()  # type: ignore[no-untyped-call]
            return
        self.connectionLost(reason)  # type: ignore[no-untyped-call]

    def writeConnectionLost(self, reason: Failure) -> None:
        """
        Not called for a port that never waits to write.
        """
        self.connectionLost(reason)  # type: ignore[no-untyped-call]
