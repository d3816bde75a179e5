"""
The twistd plugin: C{twistd -n udptime --port 5000}.

L{makeService} returns a L{MultiService} with one child per listening socket,
as C{twisted.names.tap} does.
"""

from __future__ import annotations

import ipaddress
import signal
from datetime import tzinfo
from types import FrameType
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.logger import Logger
from twisted.python import usage

from udptime import text
from udptime.server import TextTimeServer
from udptime.service import ALL_INTERFACES, UDPListenService

DEFAULT_PORT = 5000


def _interface(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None


_interface.coerceDoc = "An IPv4 or IPv6 address."  # type: ignore[attr-defined]


def _zone(value: str) -> tzinfo:
    try:
        return text.lookupZone(value)
    except text.TextRequestError:
        raise ValueError(f"unknown time zone {value!r}") from None


_zone.coerceDoc = "An IANA time zone name, e.g. Europe/Paris or UTC."  # type: ignore[attr-defined]


class Options(usage.Options):
    """
    Command-line options of C{twistd udptime}.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve the time over UDP.  udptime's text protocol answers on --port "
        "(5000 by default; 0 turns it off)."
    )

    optParameters = [
        [
            "port",
            "p",
            DEFAULT_PORT,
            "UDP port of the text time service (0: off).",
            usage.portCoerce,
        ],
        [
            "interface",
            "i",
            ALL_INTERFACES,
            "Address to listen on (default: all IPv4 and IPv6 addresses).",
            _interface,
        ],
        [
            "timezone",
            None,
            None,
            "Time zone of text replies that name none (default: the host's).",
            _zone,
        ],
    ]

    optFlags = [
        ["verbose", "v", "Log one line per request."],
    ]

    def postOptions(self) -> None:
        if not self.enabledPorts():
            raise usage.UsageError("every service is off: give at least one port")

    def enabledPorts(self) -> dict[str, int]:
        """
        The services to run, by name, with their port numbers.
        """
        ports = {"text": self["port"]}
        return {name: port for name, port in ports.items() if port}


class UDPTimeService(MultiService):
    """
    The top of the service tree: one child per listening socket.

    Once the reactor runs it takes over SIGTERM so that a stop by SIGTERM is
    a clean shutdown with exit status 0 (twistd otherwise re-raises the
    signal, and the process ends "killed by SIGTERM").
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor

    def startService(self) -> None:
        # Before the children, whose "listening" lines announce readiness.
        self.reactor.callWhenRunning(self._installTermHandler)
        super().startService()

    def _installTermHandler(self) -> None:
        signal.signal(signal.SIGTERM, self._terminate)

    def _terminate(self, number: int, frame: FrameType | None) -> None:
        self.log.info("Received SIGTERM, shutting down.")
        self.reactor.callFromThread(self.reactor.stop)


def makeService(options: Options) -> IService:
    """
    Build the udptime service tree from parsed C{options}.
    """
    from twisted.internet import reactor

    top = UDPTimeService(reactor)
    ports = options.enabledPorts()
    if "text" in ports:
        protocol = TextTimeServer(
            verbose=options["verbose"], defaultZone=options["timezone"]
        )
        UDPListenService(
            reactor,  # type: ignore[arg-type]
            protocol,
            ports["text"],
            options["interface"],
            serviceName="text",
        ).setServiceParent(top)
    return top
