"""
The twistd plugin: C{twistd -n udptime --port 5000}.

L{makeService} returns a L{MultiService} with one child per listening socket,
as C{twisted.names.tap} does.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import tzinfo
from types import FrameType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from twisted.application.service import IService, MultiService
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from twisted.python import usage

from udptime import (
    __version__,
    interleave,
    logrelay,
    ntsserver,
    policy,
    text,
    workers,
)
from udptime.activation import (
    DATAGRAM_SERVICES,
    ActivatedSocket,
    ActivationError,
    activatedSockets,
)
from udptime.address import formatAddress
from udptime.ancillary import kernelTimestampsAvailable
from udptime.briefing import BriefingService
from udptime.clock import LOCAL_REFID, ClockSource, ClockStateSource
from udptime.port import DEFAULT_KERNEL_TIMESTAMPS
from udptime.roughtimekeys import roughtimeKeyOption
from udptime.server import (
    VERBOSE_LOG_RATE,
    NTPServer,
    TextTimeServer,
    UDPServerProtocol,
    verboseLimit,
)
from udptime.service import ALL_INTERFACES, ServiceCannotListen, UDPListenService
from udptime.services import SERVICES
from udptime.summary import DEFAULT_INTERVAL, Counted, CounterSummary
from udptime.upstream import DEFAULT_POLL_INTERVAL, parseUpstream
from udptime.zonelimit import DEFAULT_ZONES_PER_SECOND, ZoneLimit

if TYPE_CHECKING:
    from udptime.ntscookie import CookieKeys
    from udptime.ntskeserver import NTSKEService

_Method = TypeVar("_Method", bound=Callable[..., None])
_Number = TypeVar("_Number", int, float)


def _interface(value: str) -> str:
    if "%" in value:
        raise ValueError(f"{value!r}: scoped IPv6 addresses (with %) are not supported")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        # An IPv6-only socket cannot bind an IPv4-mapped address: listen on
        # the IPv4 address it stands for.
        return str(address.ipv4_mapped)
    return str(address)


_interface.coerceDoc = "An IPv4 or IPv6 address."  # type: ignore[attr-defined]


def _zone(value: str) -> tzinfo:
    try:
        return text.lookupZone(value)
    except text.TextRequestError:
        raise ValueError(f"unknown time zone {value!r}") from None


_zone.coerceDoc = "An IANA time zone name, e.g. Europe/Paris or UTC."  # type: ignore[attr-defined]


def _stratum(value: str) -> int:
    try:
        stratum = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a stratum (1-15)") from None
    if not 1 <= stratum <= 15:
        raise ValueError(f"stratum must be from 1 to 15, not {stratum}")
    return stratum


_stratum.coerceDoc = "A number from 1 to 15."  # type: ignore[attr-defined]


def _refid(value: str) -> bytes:
    if not 1 <= len(value) <= 4 or not all("!" <= c <= "~" for c in value):
        raise ValueError(f"{value!r} is not 1 to 4 printable ASCII characters")
    return value.encode("ascii")


_refid.coerceDoc = "1 to 4 printable ASCII characters, e.g. LOCL or GPS."  # type: ignore[attr-defined]


def _bounded(
    convert: Callable[[str], _Number], low: _Number, high: _Number, what: str
) -> Callable[[str], _Number]:
    """
    A coercer of option values to numbers from C{low} to C{high}, described
    as C{what} (which says the bounds).
    """

    def coerce(value: str) -> _Number:
        try:
            number = convert(value)
        except ValueError:
            raise ValueError(f"{value!r} is not {what}") from None
        if not low <= number <= high:  # also false for NaN
            raise ValueError(f"{value!r} is not {what}")
        return number

    coerce.coerceDoc = what[0].upper() + what[1:] + "."  # type: ignore[attr-defined]
    return coerce


_port = _bounded(int, 0, 65535, "a port number from 0 to 65535")
_ntpPort = _bounded(int, 1, 65535, "a port number from 1 to 65535")
_rotation = _bounded(float, 0.0, sys.float_info.max, "0, or a number of seconds > 0")


def _file(value: str) -> str:
    if not value:
        raise ValueError("an empty file name")
    return value


_file.coerceDoc = "A file name."  # type: ignore[attr-defined]


def _hostName(value: str) -> str:
    from udptime.ntske import checkServerName

    try:
        checkServerName(value)
    except ValueError as error:
        raise ValueError(f"{value!r} is not a host name or address: {error}") from None
    return value


_hostName.coerceDoc = "A host name or an IP address."  # type: ignore[attr-defined]
_rate = _bounded(float, 0.0, sys.float_info.max, "a number of requests per second >= 0")
_lineRate = _bounded(float, 0.0, sys.float_info.max, "lines per second, >= 0")
_zoneCount = _bounded(int, 0, sys.maxsize, "a whole number >= 0")
_leak = _bounded(float, 0.0, policy.MAX_LEAK, f"a fraction from 0 to {policy.MAX_LEAK}")
_count = _bounded(int, 1, sys.maxsize, "a whole number >= 1")
_prefixLength = _bounded(int, 1, 128, "an IPv6 prefix length from 1 to 128")
_pollInterval = _bounded(float, 1.0, 3600.0, "a number of seconds from 1 to 3600")

MIN_SUMMARY_INTERVAL = 1.0
"""The shortest C{--summary-interval} but 0: the summaries are for people."""

_SUMMARY_INTERVAL = "0, or a number of seconds >= 1"
_seconds = _bounded(float, 0.0, sys.float_info.max, _SUMMARY_INTERVAL)


def _summaryInterval(value: str) -> float:
    seconds = _seconds(value)
    if 0.0 < seconds < MIN_SUMMARY_INTERVAL:
        raise ValueError(f"{value!r} is not {_SUMMARY_INTERVAL}")
    return seconds


_summaryInterval.coerceDoc = _seconds.coerceDoc  # type: ignore[attr-defined]


def _namingOptions(parameters: list[list[Any]]) -> list[list[Any]]:
    """
    C{optParameters} whose coercers name their option in their errors, as
    C{--port: 'x' is not a port number from 0 to 65535}.
    """
    return [
        [name, short, default, doc, _naming(name, coerce)]
        for name, short, default, doc, coerce in parameters
    ]


def _naming(name: str, coerce: Callable[[str], Any]) -> Callable[[str], Any]:
    def named(value: str) -> Any:
        try:
            return coerce(value)
        except ValueError as error:
            raise ValueError(f"--{name}: {error}") from None

    named.coerceDoc = getattr(coerce, "coerceDoc", "")  # type: ignore[attr-defined]
    return named


def _helpText(method: _Method) -> _Method:
    """
    Make C{method}'s docstring one line, as C{--help} shows it.
    """
    method.__doc__ = " ".join((method.__doc__ or "").split())
    return method


def _serviceSummary() -> str:
    """
    What C{twistd udptime --help} says of the services, from L{SERVICES}.
    """
    on = [service for service in SERVICES.values() if service.defaultPort]
    off = [service for service in SERVICES.values() if not service.defaultPort]
    lines = ["Serve the time over UDP."]
    for service in on:
        lines.append(
            f"The {service.description} service answers on --{service.portOption} "
            f"({service.defaultPort} by default; 0 turns it off)."
        )
    if off:
        names = [f"{s.description} (--{s.portOption})" for s in off]
        lines.append(
            f"{', '.join(names[:-1])} and {names[-1]} are off unless given a port."
            if len(names) > 1
            else f"{names[0]} is off unless given a port."
        )
    return "  ".join(lines)


class Endpoint(NamedTuple):
    """
    One socket a service is served on.

    @ivar key: the name of its listener in the service tree, and of its
        descriptor in a worker's setting: the service's name, then
        C{NAME-2}, C{NAME-3}, ... for further sockets of one service.
    @ivar service: the service's name (in L{SERVICES}).
    @ivar port: its port number (0: any, for a socket bound later).
    @ivar socket: the socket, when socket activation passed it, or
        L{None} to bind one (or, in a worker, to take the inherited one).
    """

    key: str
    service: str
    port: int
    socket: socket.socket | None = None


def _descriptorPort(fd: int) -> int:
    """
    The port of the socket at C{fd}, which stays open.
    """
    probe = socket.socket(fileno=os.dup(fd))
    try:
        return int(probe.getsockname()[1])
    finally:
        probe.close()


class Options(usage.Options):
    """
    Command-line options of C{twistd udptime}.

    @ivar activated: the sockets passed by socket activation, by name (see
        L{udptime.activation}); empty when there are none.
    """

    synopsis = "[options]"
    longdesc = _serviceSummary()

    optParameters = _namingOptions(
        [
            [
                service.portOption,
                service.shortOption,
                service.defaultPort,
                f"UDP port of the {service.description} service "
                f"({service.standardPort} is standard; 0: off).",
                _port,
            ]
            for service in SERVICES.values()
        ]
        + [
            [
                "local-stratum",
                None,
                None,
                "NTP: claim synchronisation at this stratum (1-15) even when the "
                "kernel says the clock is unsynchronised, as chrony's 'local "
                "stratum N' (default: follow the kernel)",
                _stratum,
            ],
            [
                "refid",
                None,
                None,
                "NTP: reference identifier sent with --local-stratum (default: "
                + LOCAL_REFID.decode("ascii")
                + ")",
                _refid,
            ],
            [
                "roughtime-key",
                None,
                None,
                "Roughtime: the file holding the server's long-term Ed25519 "
                "private key (base64 seed as 'udptime-roughtime keygen' or "
                "'roughly server keygen' write, or PEM).",
                str,
            ],
            [
                "upstream",
                None,
                None,
                "NTP: claim the state of the NTP daemon that disciplines this "
                "host's clock, asked over NTP at ADDRESS[:PORT] (port 123 by "
                "default), rather than the kernel's (default: no upstream)",
                parseUpstream,
            ],
            [
                "upstream-interval",
                None,
                DEFAULT_POLL_INTERVAL,
                "Seconds between two questions to --upstream; its word is "
                "believed for three of them.",
                _pollInterval,
            ],
            [
                "metrics-port",
                None,
                0,
                "TCP port of the Prometheus metrics and health pages (/metrics, "
                "/healthz) (0: off).",
                _port,
            ],
            [
                "metrics-interface",
                None,
                "127.0.0.1",
                "Address the metrics and health pages listen on (default: 127.0.0.1).",
                _interface,
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
                "Time zone of text replies that name none (default: the host's)",
                _zone,
            ],
            [
                "rate",
                None,
                policy.DEFAULT_RATE,
                "Requests per second each service answers for one client (an IPv4 "
                "address or an IPv6 prefix), sustained (0: no per-client limit).",
                _rate,
            ],
            [
                "burst",
                None,
                policy.DEFAULT_BURST,
                "Requests one client may send back to back before --rate applies.",
                _count,
            ],
            [
                "leak",
                None,
                policy.DEFAULT_LEAK,
                "NTP: the fraction of a client's requests over --rate answered "
                "anyway, picked at random, as chrony's 'ratelimit leak', so that "
                "requests forged in its name cannot cut it off (0: none).",
                _leak,
            ],
            [
                "ipv6-prefix",
                None,
                policy.DEFAULT_IPV6_PREFIX,
                "IPv6 clients in one network of this prefix length count as one.",
                _prefixLength,
            ],
            [
                "max-clients",
                None,
                policy.DEFAULT_MAX_CLIENTS,
                "Clients each service tracks for --rate; beyond it the oldest are "
                "forgotten (this bounds memory).",
                _count,
            ],
            [
                "global-rate",
                None,
                0.0,
                "Requests per second all services together answer, whatever their "
                "source (0: no cap).",
                _rate,
            ],
            [
                "zones-per-second",
                None,
                DEFAULT_ZONES_PER_SECOND,
                "Distinct time zones the text service answers in per second, "
                "for all clients together; a request naming another zone in "
                "that second gets an error line (0: no cap).",
                _zoneCount,
            ],
            [
                "verbose-rate",
                None,
                VERBOSE_LOG_RATE,
                "With --verbose: lines per second each service logs at most, "
                "sustained, and ten seconds' worth back to back; the lines left "
                "out are counted in the summaries (0: every request, however "
                "many).",
                _lineRate,
            ],
            [
                "summary-interval",
                None,
                DEFAULT_INTERVAL,
                "Seconds between log lines summarising each service's counters "
                "(0: none).",
                _summaryInterval,
            ],
            [
                "workers",
                None,
                0,
                "Serve from this many worker processes sharing the ports "
                "(SO_REUSEPORT), supervised by this one (0: serve in this process).",
                workers.workerCount,
            ],
            [
                "nts-ke-port",
                None,
                0,
                "TCP port of the NTS key establishment service (Network Time "
                "Security, RFC 8915; 4460 is standard; 0: off).  Needs "
                "--nts-certificate and --nts-private-key; NTP requests with NTS "
                "are then answered on --ntp-port.",
                _port,
            ],
            [
                "nts-certificate",
                None,
                None,
                "NTS-KE: the server's certificate, PEM, followed by its chain.",
                _file,
            ],
            [
                "nts-private-key",
                None,
                None,
                "NTS-KE: the certificate's private key, PEM, unencrypted.",
                _file,
            ],
            [
                "nts-key-file",
                None,
                None,
                "NTS: the file of the server keys that seal cookies, shared by "
                "every server of one NTS service (made when missing; default: "
                "random keys of this process and its workers).",
                _file,
            ],
            [
                "nts-key-rotation",
                None,
                ntsserver.NTS_KEY_ROTATION_DEFAULT,
                "NTS: seconds between rotations of the server keys by this "
                "process (0: never; the keys of --nts-key-file are then followed "
                "as they change).",
                _rotation,
            ],
            [
                "nts-ntp-server",
                None,
                None,
                "NTS-KE: the NTP server clients are sent to (default: this one).",
                _hostName,
            ],
            [
                "nts-ntp-port",
                None,
                None,
                "NTS-KE: the NTP port clients are sent to (default: --ntp-port "
                "when it is not 123).",
                _ntpPort,
            ],
            [
                "worker",
                None,
                None,
                "For the supervisor's use (--workers): serve as the worker "
                "INDEX:SUPERVISOR:NAME=FD,...[:UID:GID:EUID] (see "
                "udptime.workers.WorkerSetting); not listed by --help.",
                workers.workerSetting,
            ],
        ]
    )

    hidden = frozenset({"worker"})
    """Options C{--help} does not list: they are for udptime's own use."""

    optFlags = [
        [
            "verbose",
            "v",
            "Log one line per request: what was decided (its reply, or why it "
            "was refused).",
        ],
        [
            "kernel-timestamps",
            None,
            "The default, where the system has them: NTP takes each request's "
            "receive time from the kernel (SO_TIMESTAMPNS), not from the clock "
            "when the event loop reads the request.  Only NTP uses them.",
        ],
        [
            "no-kernel-timestamps",
            None,
            "NTP: read receive times from the clock when the event loop reads "
            "each request, not from the kernel.",
        ],
        [
            "no-interleaved",
            None,
            "NTP: never answer in interleaved mode (by default, a client that "
            "asks in interleaved form, as chronyd's 'xleave' does, gets the "
            "kernel's transmit time of the previous reply to it, where the "
            "system reports them).",
        ],
        [
            "no-compiled-send",
            None,
            "NTP: read each reply's transmit timestamp and send the reply in "
            "Python, not with the compiled send step (udptime._sendstep, "
            "used where it was built).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["access"] = []
        self.arguments: list[str] = []
        self.activated: dict[str, list[ActivatedSocket]] = {}

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse C{options} (by default, the command line's).

        @raise usage.UsageError: they are wrong, saying why in one line.
        @raise SystemExit: they are wrong, run by twistd: twistd would print
            its whole usage text on standard output, the reason last; the
            reason alone goes to standard error instead, and twistd exits
            with status 1, as for any usage error.
        """
        # Kept for the worker processes, which run with the same options.
        self.arguments = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            # Twisted says this before the coercer's own reason.
            reason = str(error).removeprefix("Parameter type enforcement failed: ")
            if self.parent is None:
                raise usage.UsageError(reason) from None
            command = self.command()
            raise SystemExit(
                f"{command}: {reason} ({command} --help lists the options)"
            ) from None

    def command(self) -> str:
        """
        How the user ran udptime: C{twistd udptime}, or C{twist udptime}
        (also C{python -m twisted udptime}).
        """
        runner = "twist" if type(self.parent).__name__ == "TwistOptions" else "twistd"
        return f"{runner} udptime"

    def opt_version(self) -> None:
        """
        Print udptime's version and exit.
        """
        sys.stdout.write(f"udptime {__version__}\n")
        raise SystemExit(0)

    def getUsage(self, width: int | None = None) -> str:
        """
        The help text, without the L{hidden} options.
        """
        longOpt = self.longOpt
        self.longOpt = [
            option for option in longOpt if option.rstrip("=") not in self.hidden
        ]
        try:
            return super().getUsage(width)
        finally:
            self.longOpt = longOpt

    def parseArgs(self, *arguments: str) -> None:
        """
        udptime takes options only.
        """
        if arguments:
            raise usage.UsageError(
                f"unexpected argument {arguments[0]!r}: udptime takes options only"
            )

    @_helpText
    def opt_allow(self, rule: str) -> None:
        """
        Serve clients in a network: [SERVICE=]NETWORK, NETWORK an address, a
        CIDR network or "all"; SERVICE one service's name (text, ntp, time,
        daytime or echo; default: every service).  Repeatable.  Once any
        network is allowed, the others are denied; the most specific
        --allow or --deny for a client decides.
        """
        self._addRule(True, rule)

    @_helpText
    def opt_deny(self, rule: str) -> None:
        """
        Refuse clients in a network, silently: [SERVICE=]NETWORK, as for
        --allow.  Repeatable.
        """
        self._addRule(False, rule)

    def _addRule(self, allow: bool, text: str) -> None:
        try:
            self["access"].extend(policy.AccessRule.parse(allow, text))
        except ValueError as error:
            option = "--allow" if allow else "--deny"
            raise usage.UsageError(f"{option} {text}: {error}") from None

    def postOptions(self) -> None:
        if self["worker"] is None:
            self._activate()
        if self["kernel-timestamps"] and self["no-kernel-timestamps"]:
            raise usage.UsageError(
                "give --kernel-timestamps or --no-kernel-timestamps, not both"
            )
        if self["kernel-timestamps"] and not kernelTimestampsAvailable():
            raise usage.UsageError("this system has no kernel receive timestamps")
        ports = self.enabledPorts()
        if (
            "ntp" not in ports
            and "roughtime" not in ports
            and self["local-stratum"] is not None
        ):
            raise usage.UsageError(
                "--local-stratum is for NTP and Roughtime: give --ntp-port or "
                "--roughtime-port"
            )
        if "ntp" not in ports and self["upstream"] is not None:
            raise usage.UsageError("--upstream is for NTP: give --ntp-port")
        if "ntp" not in ports and self["no-compiled-send"]:
            raise usage.UsageError("--no-compiled-send is for NTP: give --ntp-port")
        self["roughtime-long-term-key"] = roughtimeKeyOption(
            self["roughtime-port"], self["roughtime-key"]
        )
        if self["local-stratum"] is None and self["refid"] is not None:
            raise usage.UsageError("--refid is sent with --local-stratum: give both")
        if self["refid"] is None:
            self["refid"] = LOCAL_REFID
        self._checkNTS()
        if not ports and not self["nts-ke-port"]:
            raise usage.UsageError("every service is off: give at least one port")
        if not ports and self["workers"]:
            raise usage.UsageError(
                "--workers runs the UDP services, and every one is off: the "
                "NTS-KE service runs in one process, without --workers"
            )
        for rule in self["access"]:
            if rule.service is not None and rule.service not in ports:
                raise usage.UsageError(
                    f"an --allow or --deny names the {rule.service!r} service, "
                    f"which is not running (running: {', '.join(ports)})"
                )
        # The ports of the options (not those of passed or inherited sockets).
        fromOptions = self["worker"] is None and not self.activatedServices()
        services: dict[int, str] = {}
        for name, port in ports.items():
            if fromOptions and port in services:
                raise usage.UsageError(
                    f"the {services[port]} and {name} services both use port "
                    f"{port}: give each service its own port"
                )
            services[port] = name

    def _checkNTS(self) -> None:
        """
        Check the NTS options against each other.

        @raise usage.UsageError: they do not fit.
        """
        kePort = self["nts-ke-port"]
        tls = (self["nts-certificate"], self["nts-private-key"])
        if kePort and None in tls:
            raise usage.UsageError(
                "--nts-ke-port needs --nts-certificate and --nts-private-key"
            )
        if not kePort:
            for option in (
                "nts-certificate",
                "nts-private-key",
                "nts-ntp-server",
                "nts-ntp-port",
            ):
                if self[option] is not None:
                    raise usage.UsageError(
                        f"--{option} is for the NTS-KE service: give --nts-ke-port"
                    )
        if self["nts-key-file"] is not None and not (kePort or self["ntp-port"]):
            raise usage.UsageError(
                "--nts-key-file is for NTS: give --nts-ke-port or --ntp-port"
            )
        if self.ntsEnabled():
            from udptime.ntske import ntsUnavailable

            reason = ntsUnavailable()
            if reason is not None:
                raise usage.UsageError(f"NTS is not available: {reason}")

    def ntsEnabled(self) -> bool:
        """
        Whether this server serves NTS: it runs the NTS-KE service, or it
        answers NTS requests on its NTP port with the keys of a key file.
        """
        return bool(self["nts-ke-port"]) or (
            self["nts-key-file"] is not None and bool(self["ntp-port"])
        )

    def kernelTimestamps(self) -> bool:
        """
        Whether services whose replies carry receive times (NTP) take them
        from the kernel: the default, where the system has them, unless
        C{--no-kernel-timestamps}.  (The other services send a single time,
        read as the request is handled, and ignore the setting.)
        """
        if self["no-kernel-timestamps"]:
            return False
        return DEFAULT_KERNEL_TIMESTAMPS and kernelTimestampsAvailable()

    def _activate(self) -> None:
        """
        Take the sockets socket activation passed, if any (see
        L{udptime.activation}): a socket named after a service (or, unnamed,
        the only one for the only service the port options enable) serves
        that service, a stream socket named C{metrics} the metrics.

        @raise usage.UsageError: the sockets cannot be used as passed.
        @raise SystemExit: the same, run by twistd: one line, exit status 1.
        """
        optionPorts = self.optionPorts()
        try:
            self.activated = activatedSockets(
                expected=(*DATAGRAM_SERVICES, "metrics"),
                unnamed=(*optionPorts, "metrics"),
            )
        except ActivationError as error:
            reason = f"socket activation: {error}"
            if self.parent is None:
                raise usage.UsageError(reason) from None
            # Not a matter of options: no pointer to --help.
            raise SystemExit(f"{self.command()}: {reason}") from None

    def activatedServices(self) -> list[str]:
        """
        The services socket activation passed datagram sockets for, in the
        order of L{SERVICES}: when there are any, they are the services
        served, and the port options are not used.
        """
        return [name for name in SERVICES if self.activated.get(name)]

    def optionPorts(self) -> dict[str, int]:
        """
        The services the port options enable, by name (in the order of
        L{SERVICES}), with their port numbers.
        """
        return {
            name: self[service.portOption]
            for name, service in SERVICES.items()
            if self[service.portOption]
        }

    def endpoints(self, probe: bool = True) -> list[Endpoint]:
        """
        The sockets to serve, for this process's role: a worker's are those
        its supervisor handed down (L{workers.WorkerSetting}); otherwise
        those socket activation passed, if any, else one per service the
        port options enable.

        @param probe: read the ports of a worker's inherited sockets (when
            not, they are given as 0).
        """
        setting = self["worker"]
        if setting is not None:
            return [
                Endpoint(
                    key, key.partition("-")[0], _descriptorPort(fd) if probe else 0
                )
                for key, fd in sorted(setting.descriptors.items())
            ]
        activated = self.activatedServices()
        if activated:
            return [
                Endpoint(
                    name if number == 1 else f"{name}-{number}",
                    name,
                    each.address[1],
                    each.socket,
                )
                for name in activated
                for number, each in enumerate(self.activated[name], 1)
            ]
        return [Endpoint(name, name, port) for name, port in self.optionPorts().items()]

    def enabledPorts(self) -> dict[str, int]:
        """
        The services to run, by name (in the order of L{SERVICES}), with
        the port number of their first socket (see L{endpoints}; 0 for a
        worker's).
        """
        ports: dict[str, int] = {}
        for endpoint in self.endpoints(probe=False):
            ports.setdefault(endpoint.service, endpoint.port)
        return {name: ports[name] for name in SERVICES if name in ports}

    def metricsSockets(self) -> list[socket.socket]:
        """
        The metrics sockets socket activation passed (they replace
        C{--metrics-port}).
        """
        return [each.socket for each in self.activated.get("metrics", [])]

    def globalLimit(self) -> policy.RateLimiter | None:
        """
        The reply cap all services share (--global-rate), or L{None}.
        """
        rate = self["global-rate"]
        if not rate:
            return None
        return policy.RateLimiter(rate, max(1, int(rate)))

    def servicePolicy(
        self, service: str, globalLimit: policy.RateLimiter | None
    ) -> policy.Policy:
        """
        The admission policy of the service called C{service}, from its
        protocol's profile (see L{SERVICES}), with the limits and the rules
        given for it, sharing the reply cap C{globalLimit}, and refusing
        datagrams from the ports of the other services when it has the loop
        guard (see L{policy.Policy.fromProfile}).
        """
        return SERVICES[service].policy(
            rate=self["rate"],
            burst=self["burst"],
            maxClients=self["max-clients"],
            ipv6Prefix=self["ipv6-prefix"],
            rules=[
                (rule.allow, rule.network)
                for rule in self["access"]
                if rule.service in (None, service)
            ],
            globalLimit=globalLimit,
            serverPorts={endpoint.port for endpoint in self.endpoints()},
            leak=self["leak"],
        )


class UDPTimeService(MultiService):
    """
    The top of the service tree: one child per listening socket.

    Once the reactor runs it takes over SIGTERM, SIGINT (Ctrl-C) and SIGHUP
    (a closed terminal, or a C{kill -HUP}, which would otherwise end the
    process on the spot, its pid file left behind) so that a stop by any of
    them is a clean shutdown with exit status 0 (twistd otherwise re-raises
    SIGTERM and SIGINT, and the process ends "killed by SIGTERM"), and
    so that a second signal during the shutdown (Ctrl-C reaches a
    supervisor and its workers alike, and the supervisor then stops its
    workers with SIGTERM) changes nothing.  Once the reactor has stopped
    they are ignored: on its way out Python puts back their default action,
    which would kill the process, exit status and all.
    """

    log = Logger()
    stopSignals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor

    def startService(self) -> None:
        # Before the children, whose "listening" lines announce readiness.
        self.reactor.callWhenRunning(self._installTermHandler)
        super().startService()

    def _installTermHandler(self) -> None:
        for number in self.stopSignals:
            signal.signal(number, self._terminate)
        self.reactor.addSystemEventTrigger("after", "shutdown", self._ignoreSignals)

    def _ignoreSignals(self) -> None:
        for number in self.stopSignals:
            signal.signal(number, signal.SIG_IGN)

    def _terminate(self, number: int, frame: FrameType | None) -> None:
        self.log.info(
            "Received {signal}, shutting down.", signal=signal.Signals(number).name
        )
        self.reactor.callFromThread(self._stop)

    def _stop(self) -> None:
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            # Already stopping: an earlier signal, or the reactor itself.
            self.log.debug("The reactor is already stopping.")


def makeService(options: Options) -> IService:
    """
    Build the udptime service tree from parsed C{options}, for this
    process's role, decided first:

      - a supervisor of worker processes (C{--workers N}) builds only its
        L{workers.WorkerSupervisor}, which binds the sockets (or takes those
        socket activation passed) and runs the workers, and the metrics
        listener, which adds up the workers' reports: no protocols, no time
        zones;
      - a worker (C{--worker}, given by its supervisor) builds the
        protocols and serves the sockets it inherited, as the user it is
        told to switch to, and reports its counters to its supervisor;
      - a single process builds the protocols and binds its sockets (or
        takes those socket activation passed), and serves its own metrics.

    A process started by a service manager of C{Type=notify} tells it once
    it serves (see L{udptime.notify}).
    """
    from twisted.internet import reactor

    from udptime import operations

    top = UDPTimeService(reactor)
    endpoints = options.endpoints()
    setting = options["worker"]
    if setting is None and options["workers"]:
        reports = operations.SupervisorReports()
        supervisor = workers.WorkerSupervisor(
            reactor,
            {endpoint.key: endpoint.port for endpoint in endpoints},
            options["interface"],
            options["workers"],
            options.arguments,
            workers.twistdPrivileges(options),
            options["ipv6-prefix"],
            watcher=reports,
        )
        passed = {e.key: e.socket for e in endpoints if e.socket is not None}
        if passed:
            supervisor.adopt(passed)
        if options.parent is not None:
            # Under twistd: a worker that could not be started again would
            # leave its share of the clients unanswered for good.
            problem = supervisor.restartProblem()
            if problem is not None:
                raise SystemExit(f"{options.command()}: {problem}")
        supervisor.setServiceParent(top)
        bound: list[_Bindable] = [supervisor]
        keyExchange = None
        if options.ntsEnabled():
            # The supervisor holds the NTS keys and hands them to its
            # workers; it serves the key exchanges itself.
            _, keyExchange = _serveNTS(options, reactor, top, handOver=supervisor.brief)
            if keyExchange is not None and options["summary-interval"]:
                CounterSummary(
                    reactor,
                    {},
                    options["summary-interval"],
                    {"nts-ke": keyExchange.counters},
                ).setServiceParent(top)
            bound += _present(keyExchange)
        # The supervisor alone asks the upstream daemon, and hands every
        # answer to its workers, which serve it, and to its clock metrics.
        upstream = _upstream(reactor, options, top)
        if upstream is not None:
            upstream.onReading = _briefer(supervisor)
        if options["metrics-port"] or options.metricsSockets():
            aggregator = reports.aggregator
            bound += _metrics(
                reactor,
                options,
                top,
                operations.collector(
                    operations.withOwnCounters(
                        aggregator.totals,
                        {} if keyExchange is None else {"nts-ke": keyExchange.counters},
                    ),
                    upstream or ClockSource(options["local-stratum"], options["refid"]),
                    upstream,
                    aggregator,
                ),
                operations.supervisorHealth(supervisor, reports),
            )
        _bindUnderTwistd(options, bound)
        _notifyWhenRunning(reactor)
        return top
    briefing = None
    if setting is not None:
        # What the supervisor hands down while the worker runs (the NTS
        # keys, the upstream daemon's answers), taken in before it serves.
        briefing = BriefingService(reactor, 0)
        briefing.setServiceParent(top)
    upstream = _upstream(reactor, options, top, briefing)
    counted: dict[str, Counted] = {}
    keyExchange = None
    authentication = None
    if options.ntsEnabled() and ("ntp" in options.enabledPorts() or setting is None):
        keys, keyExchange = _serveNTS(
            options, reactor, top, worker=setting is not None, briefing=briefing
        )
        authentication = ntsserver.NTSAuthentication(keys)
        counted["nts"] = authentication.counters
        if keyExchange is not None:
            counted["nts-ke"] = keyExchange.counters
    globalLimit = options.globalLimit()
    perSecond = options["zones-per-second"]
    zoneLimit = ZoneLimit(perSecond) if perSecond else None
    protocols: dict[str, UDPServerProtocol] = {}
    byService: dict[str, list[UDPServerProtocol]] = {}
    listeners = []
    for endpoint in endpoints:
        protocol = SERVICES[endpoint.service].makeServer(options)
        if isinstance(protocol, NTPServer):
            if upstream is not None:
                protocol.clockSource = upstream
            if authentication is not None:
                protocol.nts = authentication
        protocol.policy = options.servicePolicy(endpoint.service, globalLimit)
        protocol.verboseLog = verboseLimit(options["verbose-rate"])
        if isinstance(protocol, TextTimeServer):
            protocol.zoneLimit = zoneLimit
        protocols[endpoint.key] = protocol
        byService.setdefault(endpoint.service, []).append(protocol)
        listener = UDPListenService(
            reactor,  # type: ignore[arg-type]
            protocol,
            endpoint.port,
            options["interface"],
            serviceName=endpoint.key,
            kernelTimestamps=protocol.receiveTimestamps and options.kernelTimestamps(),
        )
        listener.boundSocket = endpoint.socket
        listener.setServiceParent(top)
        listeners.append(listener)
    if options["summary-interval"]:
        interleaving = [
            protocol
            for protocol in protocols.values()
            if isinstance(protocol, NTPServer) and protocol.kernelTransmitTimes
        ]
        summarised = dict(counted)
        if interleaving:
            summarised[interleave.SUMMARY_NAME] = interleave.TableCounters(interleaving)
        summary = CounterSummary(
            reactor, protocols, options["summary-interval"], summarised
        )
        summary.setServiceParent(top)
    report = operations.processReport(byService, globalLimit, counted)
    if setting is not None:
        # The worker logs through a relay that never blocks it, and its
        # counter reports go through the same relay, between log lines.
        relay = logrelay.relayToSupervisor(options.parent)
        if relay is not None:
            logrelay.flushingService(relay).setServiceParent(top)
        # Before the worker switches user: without a relay, the report
        # channel is opened again through /proc/self/fd.
        sender = operations.workerReports(reactor, report, setting.index, relay)
        if sender is not None:
            sender.setServiceParent(top)
        workers.becomeWorker(setting, listeners)
        return top
    bound = [*listeners, *_present(keyExchange)]
    if options["metrics-port"] or options.metricsSockets():
        ntp = byService.get("ntp", [None])[0]
        clockSource: ClockStateSource = (
            ntp.clockSource
            if isinstance(ntp, NTPServer)
            else ClockSource(options["local-stratum"], options["refid"])
        )
        bound += _metrics(
            reactor,
            options,
            top,
            operations.collector(report, clockSource, upstream),
            operations.processHealth(listeners),
        )
    _bindUnderTwistd(options, bound)
    _notifyWhenRunning(reactor)
    return top


def _metrics(
    reactor: Any, options: Options, top: MultiService, collector: Any, health: Any
) -> list[_Bindable]:
    """
    The metrics listeners, children of C{top}: one per metrics socket
    socket activation passed, or one on C{--metrics-port}.
    """
    from udptime import operations

    passed = options.metricsSockets()
    listeners: list[_Bindable] = []
    for number, sock in enumerate(passed or [None], 1):
        listener = operations.metricsService(
            reactor,
            collector,
            health,
            options["metrics-port"],
            options["metrics-interface"],
        )
        if number > 1:
            listener.setName(f"metrics-{number}")
        listener.boundSocket = sock
        listener.setServiceParent(top)
        listeners.append(listener)
    return listeners


def _notifyWhenRunning(reactor: Any) -> None:
    """
    Once the reactor runs (the services listen, privileges are dropped),
    tell a service manager of C{Type=notify} that udptime is ready, and as
    it shuts down that it stops (nothing when none listens).
    """
    from udptime.notify import notify, notifyReady

    log = Logger()

    def send(what: Callable[[], bool]) -> None:
        try:
            what()
        except OSError as error:
            log.warn("cannot notify the service manager: {error}", error=str(error))

    reactor.callWhenRunning(send, lambda: notifyReady("serving"))
    reactor.addSystemEventTrigger(
        "before", "shutdown", send, lambda: notify("STOPPING=1")
    )


def _upstream(
    reactor: Any,
    options: Options,
    top: MultiService,
    briefing: BriefingService | None = None,
) -> Any:
    """
    The upstream clock of C{--upstream}, polling as a child of C{top}
    (before the services that ask it), or L{None}.  In a worker (with its
    C{briefing}) it asks nothing: it serves the answers its supervisor
    hands down.  With C{--local-stratum} the local clock is claimed while
    the upstream daemon's word is not synchronised.
    """
    if options["upstream"] is None:
        return None
    from udptime.upstream import (
        UPSTREAM_FORMAT,
        UpstreamClock,
        readingFromLine,
        upstreamClock,
    )

    fallback = None
    if options["local-stratum"] is not None:
        fallback = ClockSource(options["local-stratum"], options["refid"])
    upstream: UpstreamClock
    if briefing is None:
        upstream = upstreamClock(
            reactor,
            options["upstream"],
            interval=options["upstream-interval"],
            fallback=fallback,
        )
    else:
        upstream = UpstreamClock(
            reactor,
            None,
            where=formatAddress(*options["upstream"]),
            interval=options["upstream-interval"],
            fallback=fallback,
        )
        briefing.handle(
            UPSTREAM_FORMAT, lambda line: upstream.take(readingFromLine(line))
        )
    upstream.setServiceParent(top)
    return upstream


def _briefer(supervisor: workers.WorkerSupervisor) -> Callable[[Any], None]:
    """
    Hand each answer of the upstream daemon to the workers of
    C{supervisor}.
    """
    from udptime.upstream import readingLine

    return lambda reading: supervisor.brief(readingLine(reading))


class _Bindable(Protocol):
    """
    A service whose sockets L{_bindUnderTwistd} binds early.
    """

    def bind(self) -> None: ...

    def unbind(self) -> None: ...


def _present(service: NTSKEService | None) -> list[NTSKEService]:
    """
    C{[service]}, or nothing for L{None}.
    """
    return [] if service is None else [service]


def _serveNTS(
    options: Options,
    reactor: Any,
    top: MultiService,
    *,
    worker: bool = False,
    handOver: Callable[[bytes], object] | None = None,
    briefing: BriefingService | None = None,
) -> tuple[CookieKeys, NTSKEService | None]:
    """
    Add the NTS services to C{top}: what keeps the server keys current, and
    (but in a worker) the NTS-KE service; the keys, and the NTS-KE service
    or L{None}.

    @raise SystemExit: NTS cannot be set up as asked, saying why in one
        line.
    """
    keyExchange = None
    try:
        keys = ntsserver.serverKeys(
            options, reactor, top, worker=worker, handOver=handOver, briefing=briefing
        )
        if options["nts-ke-port"] and not worker:
            keyExchange = ntsserver.keyExchangeService(options, reactor, keys)
            keyExchange.setServiceParent(top)
    except ntsserver.NTSSetupError as failure:
        raise SystemExit(f"{options.command()}: {failure}") from None
    return keys, keyExchange


def _bindUnderTwistd(options: Options, services: Sequence[_Bindable]) -> None:
    """
    Run by twistd (or twist), bind the sockets of C{services} now, before
    twistd runs the service (and, as a daemon, before it leaves the
    terminal): a port that cannot be bound is then one line on standard
    error, and exit status 1, rather than a traceback, or as a daemon a
    truncated exception from twistd's status pipe.  (Built otherwise, the
    services bind their sockets as they start.)

    @raise SystemExit: a socket cannot be bound.
    """
    if options.parent is None:
        return
    try:
        for service in services:
            service.bind()
    except ServiceCannotListen as failure:
        for service in services:
            service.unbind()
        raise SystemExit(f"{options.command()}: {failure}") from None
