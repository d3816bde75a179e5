"""
The services udptime serves: one entry per protocol, from which the twistd
plugin's options and service tree, the policy each service gets, the
summaries and the client's protocols are derived.

Adding a protocol is one entry in L{SERVICES}, its codec module and its
server protocol class (a L{UDPServerProtocol<udptime.server.UDPServerProtocol>}).

Importing this module imports no reactor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from udptime import daytime, echo, ntp, rfc868, roughtime, text
from udptime.clock import ClockSource
from udptime.daytime import DaytimeClientCodec
from udptime.echo import EchoClientCodec
from udptime.ntp import NTPClientCodec
from udptime.policy import Policy, PolicyProfile
from udptime.reading import ClientCodec
from udptime.rfc868 import TimeClientCodec
from udptime.roughtimeclient import RoughtimeClientCodec
from udptime.roughtimekeys import OnlineKey
from udptime.roughtimeserver import RoughtimeResponder, RoughtimeServer
from udptime.server import (
    DaytimeServer,
    EchoServer,
    NTPServer,
    TextTimeServer,
    TimeServer,
    UDPServerProtocol,
)
from udptime.text import TextClientCodec

ServerFactory = Callable[[Mapping[str, Any]], UDPServerProtocol]
"""
Makes a service's server protocol from the twistd plugin's parsed options
(C{verbose}, C{timezone}, C{local-stratum}, C{refid}, ...).
"""

ClientCodecFactory = Callable[[str], ClientCodec]
"""Makes a protocol's client codec from the request words (C{""}: none)."""

KeyedCodecFactory = Callable[[bytes], ClientCodec]
"""Makes the client codec of a protocol whose requests name the server's
public key (Roughtime), from that key."""


@dataclass(frozen=True)
class Service:
    """
    One protocol udptime serves and speaks.

    @ivar name: the service's name, in logs, counters, C{--allow}/C{--deny}
        rules and C{udptime --protocol}.
    @ivar portOption: the C{twistd udptime} option that sets its port.
    @ivar shortOption: that option's one-letter form, or L{None}.
    @ivar defaultPort: its port under C{twistd udptime} when the option is
        not given; 0: off.
    @ivar standardPort: its registered (or customary) port, which the client
        asks by default.
    @ivar description: what it is, in a few words.
    @ivar makeServer: makes its server protocol.
    @ivar makeCodec: makes its client codec from the request words.
    @ivar takesWords: whether a client request carries words (a text
        request, an echo payload) or is always the same.
    @ivar profile: the admission policy its protocol needs.
    @ivar amplification: the worst reply for a request, in bytes on the
        wire, for the documentation (the README's security section measures
        it).
    @ivar makeKeyedCodec: for a protocol whose client must know the
        server's public key (Roughtime), makes its client codec from that
        key; L{None} for the others.
    """

    name: str
    portOption: str
    shortOption: str | None
    defaultPort: int
    standardPort: int
    description: str
    makeServer: ServerFactory
    makeCodec: ClientCodecFactory
    takesWords: bool
    profile: PolicyProfile
    amplification: str
    makeKeyedCodec: KeyedCodecFactory | None = None

    def clientCodec(
        self, words: str = "", publicKey: bytes | None = None
    ) -> ClientCodec:
        """
        The client codec for a request of C{words}, to a server whose public
        key is C{publicKey} (for a protocol that needs it).

        @raise ValueError: the protocol's request takes no words, and some
            were given, or the codec refuses them; the protocol needs the
            server's public key and none was given, or takes none and one
            was.
        """
        if words.strip() and not self.takesWords:
            raise ValueError(f"the {self.name} protocol's request takes no words")
        if self.makeKeyedCodec is None:
            if publicKey is not None:
                raise ValueError(f"the {self.name} protocol takes no public key")
            return self.makeCodec(words)
        if publicKey is None:
            raise ValueError(f"the {self.name} protocol needs the server's public key")
        return self.makeKeyedCodec(publicKey)

    def policy(self, **settings: Any) -> Policy:
        """
        The admission policy of this service, with the limits in
        C{settings} (see L{Policy.fromProfile}): the one C{twistd udptime}
        gives it with the default limits.
        """
        return Policy.fromProfile(self.profile, **settings)


def _textServer(options: Mapping[str, Any]) -> UDPServerProtocol:
    # Now, as twistd (or a worker) still runs as the user who started it:
    # the first request naming a zone then does not hold up the others, and
    # the database is read whoever the service runs as.
    text.loadZoneNames()
    return TextTimeServer(verbose=options["verbose"], defaultZone=options["timezone"])


def _ntpServer(options: Mapping[str, Any]) -> UDPServerProtocol:
    return NTPServer(
        verbose=options["verbose"],
        clockSource=ClockSource(options["local-stratum"], options["refid"]),
        interleaved=not options.get("no-interleaved", False),
        compiledSend=not options.get("no-compiled-send", False),
    )


def _timeServer(options: Mapping[str, Any]) -> UDPServerProtocol:
    return TimeServer(verbose=options["verbose"])


def _daytimeServer(options: Mapping[str, Any]) -> UDPServerProtocol:
    return DaytimeServer(verbose=options["verbose"])


def _echoServer(options: Mapping[str, Any]) -> UDPServerProtocol:
    return EchoServer(verbose=options["verbose"])


def _roughtimeServer(options: Mapping[str, Any]) -> UDPServerProtocol:
    clockSource = ClockSource(options["local-stratum"], options["refid"])
    responder = RoughtimeResponder(
        OnlineKey(options["roughtime-long-term-key"]), clockSource.state
    )
    return RoughtimeServer(responder, verbose=options["verbose"])


def _keyNeeded(words: str) -> ClientCodec:
    raise ValueError("the roughtime protocol needs the server's public key")


def _ntpCodec(words: str) -> ClientCodec:
    return NTPClientCodec()


def _timeCodec(words: str) -> ClientCodec:
    return TimeClientCodec()


def _daytimeCodec(words: str) -> ClientCodec:
    return DaytimeClientCodec()


_ANSWERS_ANY_DATAGRAM: Final = PolicyProfile(loopGuard=True, replyMemory=True)

SERVICES: Final[Mapping[str, Service]] = {
    service.name: service
    for service in (
        Service(
            name="text",
            portOption="port",
            shortOption="p",
            defaultPort=text.DEFAULT_PORT,
            standardPort=text.DEFAULT_PORT,
            description="text time",
            makeServer=_textServer,
            makeCodec=TextClientCodec,
            takesWords=True,
            profile=_ANSWERS_ANY_DATAGRAM,
            amplification="an error line: 15 -> 86 bytes (factor 2.66)",
        ),
        Service(
            name="ntp",
            portOption="ntp-port",
            shortOption=None,
            defaultPort=0,
            standardPort=ntp.NTP_PORT,
            description="SNTP/NTP",
            makeServer=_ntpServer,
            makeCodec=_ntpCodec,
            takesWords=False,
            profile=PolicyProfile(kissOfDeath=True, loopGuard=False, leak=True),
            amplification="48 -> 48 bytes, never more than the request (factor 1.00)",
        ),
        Service(
            name="time",
            portOption="time-port",
            shortOption=None,
            defaultPort=0,
            standardPort=rfc868.DEFAULT_PORT,
            description="RFC 868 Time",
            makeServer=_timeServer,
            makeCodec=_timeCodec,
            takesWords=False,
            profile=_ANSWERS_ANY_DATAGRAM,
            amplification="0 -> 4 bytes (factor 1.15)",
        ),
        Service(
            name="daytime",
            portOption="daytime-port",
            shortOption=None,
            defaultPort=0,
            standardPort=daytime.DEFAULT_PORT,
            description="RFC 867 Daytime",
            makeServer=_daytimeServer,
            makeCodec=_daytimeCodec,
            takesWords=False,
            profile=_ANSWERS_ANY_DATAGRAM,
            amplification="0 -> 26 bytes (factor 1.93)",
        ),
        Service(
            name="echo",
            portOption="echo-port",
            shortOption=None,
            defaultPort=0,
            standardPort=echo.DEFAULT_PORT,
            description="RFC 862 Echo",
            makeServer=_echoServer,
            makeCodec=EchoClientCodec.fromWords,
            takesWords=True,
            profile=PolicyProfile(
                loopGuard=True, replyMemory=True, repeatsRequests=True
            ),
            amplification="n -> n bytes, at most 1472 (factor 1.00)",
        ),
        Service(
            name="roughtime",
            portOption="roughtime-port",
            shortOption=None,
            defaultPort=0,
            standardPort=roughtime.ROUGHTIME_PORT,
            description="Roughtime",
            makeServer=_roughtimeServer,
            makeCodec=_keyNeeded,
            takesWords=False,
            profile=PolicyProfile(loopGuard=False),
            amplification="1024 -> at most 1024 bytes, never more than the "
            "request (factor 1.00)",
            makeKeyedCodec=RoughtimeClientCodec,
        ),
    )
}
"""Every service, by name, in the order the plugin lists them."""
