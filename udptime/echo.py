"""
Codec for the Echo Protocol, RFC 862, over UDP (sans I/O).

The server sends back the data of each datagram it receives, unchanged, to
the address it came from.  The reply is the request, so it is never larger
by construction; datagrams longer than L{MAX_ECHO} bytes are dropped
unanswered, which bounds the work and the bandwidth one datagram can cost.
An empty datagram is echoed as an empty datagram.

The echo service carries no time: a client measures only the round-trip
delay.  Echo is the classic half of UDP ping-pong loops (CVE-1999-0103), so
udptime serves it only when asked (C{--echo-port}), behind the shared
policy's loop guard and rate limits.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from udptime.reading import Reading, ReplyMismatch

DEFAULT_PORT: Final = 7
"""The Echo Protocol's registered port."""

MAX_ECHO: Final = 1472
"""
Longest datagram echoed, in bytes: the UDP payload of one unfragmented IPv4
datagram on a 1500-byte Ethernet link.  Longer datagrams get no reply.
"""

PAYLOAD_PREFIX: Final = b"udptime echo "
"""Start of the client's payload; a random hex token follows it."""

TOKEN_SIZE: Final = 8
"""Random bytes in the client's token (sent as hex)."""


def buildReply(data: bytes) -> bytes | None:
    """
    The echo of C{data}: C{data} itself, or L{None} (no reply) when it is
    longer than L{MAX_ECHO}.
    """
    if len(data) > MAX_ECHO:
        return None
    return data


class EchoClientCodec:
    """
    The client side of RFC 862 over UDP (a L{udptime.reading.ClientCodec}).

    The request is the payload given (the lines of C{udptime --interactive
    --protocol echo}), or else L{PAYLOAD_PREFIX} and a random hex token, so
    that a reply is recognised as the echo of this very request.  The reading
    has no server time and no offset (the query measures the round-trip
    delay); its text is the echoed payload when one was given.

    @ivar payload: the payload to send, or L{None} for a random token.
    @ivar randomBytes: source of the token's random bytes (C{os.urandom}).
    """

    name = "echo"
    defaultPort = DEFAULT_PORT

    def __init__(
        self,
        payload: bytes | None = None,
        randomBytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if payload is not None and len(payload) > MAX_ECHO:
            raise ValueError(f"an echo request holds at most {MAX_ECHO} bytes")
        self.payload = payload
        self.randomBytes = randomBytes

    @classmethod
    def fromWords(cls, words: str) -> EchoClientCodec:
        """
        The codec for request words (C{udptime}'s): their UTF-8 bytes as the
        payload, or a random token when there are none.

        @raise ValueError: the words are longer than L{MAX_ECHO} bytes.
        """
        return cls(words.encode("utf-8") if words else None)

    def buildRequest(self, sentAt: float) -> tuple[bytes, bytes]:
        """
        The payload to send (the one given, or a fresh random token); the
        state is the payload itself, which the reply must repeat.
        """
        payload = self.payload
        if payload is None:
            token = self.randomBytes(TOKEN_SIZE).hex().encode("ascii")
            payload = PAYLOAD_PREFIX + token
        return payload, payload

    def parseReply(
        self, data: bytes, state: bytes, sentAt: float, receivedAt: float
    ) -> Reading:
        """
        Check that C{data} echoes the payload sent.

        @raise ReplyMismatch: C{data} differs from the payload sent.
        """
        if data != state:
            raise ReplyMismatch("the reply does not echo the payload sent")
        return Reading(
            text=(
                f"{len(data)}-byte echo"
                if self.payload is None
                else data.decode("utf-8", "backslashreplace")
            ),
            details={"size": len(data)},
        )
