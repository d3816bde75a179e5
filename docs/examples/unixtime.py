"""
A whole new protocol, as small as one can be: any datagram gets the
server's Unix time in seconds, as ASCII digits and a newline.

In udptime itself this module would be udptime/unixtime.py, and the
L{SERVICE} entry below one more entry of L{udptime.services.SERVICES}:
with it, C{twistd udptime --unixtime-port N} serves the protocol, behind
the admission policy its profile asks for, and C{udptime --protocol
unixtime HOST} asks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from udptime.policy import PolicyProfile
from udptime.reading import EmptyRequest, Reading, ReplyMismatch, estimateOffset
from udptime.server import TimeOfDayServer, UDPServerProtocol
from udptime.services import Service

DEFAULT_PORT = 5037


def buildReply(now: float) -> bytes:
    """
    The reply at Unix time C{now}: whole seconds, then a newline.
    """
    return b"%d\n" % int(now)


class UnixTimeServer(TimeOfDayServer):
    """
    The server side: any datagram gets L{buildReply}.
    """

    serviceName = "unixtime"

    def timeReply(self, now: float) -> bytes | None:
        return buildReply(now)


class UnixTimeClientCodec(EmptyRequest):
    """
    The client side: an empty request, and a reply of digits.
    """

    name = "unixtime"
    defaultPort = DEFAULT_PORT

    def parseReply(
        self, data: bytes, state: object, sentAt: float, receivedAt: float
    ) -> Reading:
        if not data.endswith(b"\n") or not data[:-1].isdigit():
            raise ReplyMismatch("not a Unix time")
        seconds = int(data)
        return Reading(
            text=str(seconds),
            serverTime=float(seconds),
            offset=estimateOffset(seconds, sentAt, receivedAt, 1.0),
        )


def makeServer(options: Mapping[str, Any]) -> UDPServerProtocol:
    return UnixTimeServer(verbose=options["verbose"])


SERVICE = Service(
    name="unixtime",
    portOption="unixtime-port",
    shortOption=None,
    defaultPort=0,
    standardPort=DEFAULT_PORT,
    description="Unix time",
    makeServer=makeServer,
    makeCodec=lambda words: UnixTimeClientCodec(),
    takesWords=False,
    # It answers any datagram, so it must never answer another such service.
    profile=PolicyProfile(loopGuard=True),
    amplification="0 -> 11 bytes (factor 1.40)",
)
