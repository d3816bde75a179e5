"""
A small NTP server with NTS for tests, built from the codecs as udptime's
NTP server uses them: L{udptime.ntp.parseRequest}, L{udptime.nts.checkRequest},
the plain header from L{udptime.ntp.buildReply} with its transmit time read
last, then L{udptime.nts.NTSRequest.seal}.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.protocol import DatagramProtocol

from udptime.clock import ClockState, Leap
from udptime.ntp import NTPCodecError, buildReply, parseRequest
from udptime.nts import NTS_COOKIE, NTSNak, checkRequest, parseFields
from udptime.ntscookie import CookieKeys


def clockState() -> ClockState:
    """
    A synchronised stratum-1 clock, last set 10 s ago.
    """
    return ClockState(
        leap=Leap.NONE,
        synchronised=True,
        stratum=1,
        refid=b"LOCL",
        rootDelay=0.0,
        rootDispersion=0.0,
        referenceTime=time.time() - 10,
        precision=-20,
    )


class NTSResponder(DatagramProtocol):
    """
    An NTP server that answers NTS requests as udptime's does: the plain
    header from L{buildReply}, with its transmit time read last, then the
    authenticator sealed over it.

    @ivar cookies: the cookies the requests carried.
    @ivar mangle: changes each reply before it is sent.
    """

    def __init__(
        self, keys: CookieKeys, mangle: Callable[[bytes], bytes] | None = None
    ):
        self.keys = keys
        self.state = clockState()
        self.mangle = mangle
        self.cookies: list[bytes] = []
        self.answered = 0

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        received = time.time()
        try:
            request = parseRequest(data)
            decision = checkRequest(data, self.keys)
        except NTPCodecError:
            return
        for fieldType, start, end in parseFields(data):
            if fieldType == NTS_COOKIE:
                self.cookies.append(data[start:end])
        if decision is None:
            reply = buildReply(request, self.state, received, time.time)
        elif isinstance(decision, NTSNak):
            reply = decision.reply(data) or b""
        else:
            reply = decision.seal(buildReply(request, self.state, received, time.time))
        if self.mangle is not None:
            reply = self.mangle(reply)
        self.answered += 1
        self.transport.write(reply, addr)  # type: ignore[union-attr]
