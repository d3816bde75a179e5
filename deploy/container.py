"""
udptime's container entry point and health check.

C{container.py run [OPTIONS...]} builds C{twistd -n --pidfile= --logfile=-
udptime ...} from C{UDPTIME_*} environment variables, then the words of
C{UDPTIME_ARGS}, then its own arguments (a container's command), and
replaces itself with it: twistd becomes the container's main process (PID 1
without an init), logging to standard output, and udptime's own handlers
make SIGTERM a clean stop.

Each option C{--NAME VALUE} of L{VALUE_OPTIONS} is set by C{UDPTIME_NAME}
(upper case, C{-} as C{_}): C{UDPTIME_NTP_PORT=123} gives C{--ntp-port
123}.  Each of L{LIST_OPTIONS} takes a whitespace-separated list, one option
per word (C{UDPTIME_ALLOW="ntp=10.0.0.0/8 192.0.2.1"}).  C{UDPTIME_VERBOSE=1}
gives C{--verbose}; C{UDPTIME_KERNEL_TIMESTAMPS} C{1} or C{0} gives
C{--kernel-timestamps} or C{--no-kernel-timestamps}.  An empty variable is
as good as unset.  Any other C{UDPTIME_} variable is a mistake (a misspelt
name would otherwise be ignored in silence), and so is a Kubernetes service
link's value where a port belongs: the entry point says so in one line on
standard error and exits with status 2.

C{container.py health [--pid N]} is the image's C{HEALTHCHECK}: it reads the
command line of the running server (process N, by default the container's
first C{twistd ... udptime} process) and, when the server has a metrics port
(C{--metrics-port}), asks C{/healthz} there, which must answer 200;
otherwise it asks the server's text service (or, with the text service off,
its NTP service) with the C{udptime} client.  C{UDPTIME_HEALTHCHECK=healthz}
or C{udp} forces one.  Exit status 0 is healthy, 1 is not.
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence

VALUE_OPTIONS = (
    "port",
    "interface",
    "ntp-port",
    "time-port",
    "daytime-port",
    "echo-port",
    "timezone",
    "local-stratum",
    "refid",
    "rate",
    "burst",
    "ipv6-prefix",
    "max-clients",
    "global-rate",
    "summary-interval",
    "workers",
    "nts-ke-port",
    "nts-certificate",
    "nts-private-key",
    "nts-key-file",
    "nts-key-rotation",
    "nts-ntp-server",
    "nts-ntp-port",
    "metrics-port",
    "metrics-interface",
    "leak",
    "upstream-interval",
    "roughtime-port",
    "roughtime-key",
    "zones-per-second",
    "verbose-rate",
)
"""udptime's options that take one value, each set by its variable."""

INTERNAL_OPTIONS = frozenset({"worker"})
"""udptime's options that only udptime itself gives (to its workers)."""

LIST_OPTIONS = ("allow", "deny", "upstream")
"""Options given once per word of their variable's value."""

OWN_VARIABLES = frozenset(
    {"UDPTIME_ARGS", "UDPTIME_VERBOSE", "UDPTIME_KERNEL_TIMESTAMPS"}
    | {"UDPTIME_HEALTHCHECK", "UDPTIME_TWISTD"}
)
"""The variables that are not one option each."""

PREFIX = "UDPTIME_"

SERVICE_LINK = re.compile(r"^[a-z]+://")
"""A Kubernetes service link's value, such as C{udp://10.0.0.5:123}."""

SERVICE_LINK_NAME = re.compile(
    r"_(SERVICE_HOST|SERVICE_PORT\w*|PORT_\d+_(TCP|UDP)\w*)$"
)
"""The names Kubernetes gives service links (C{UDPTIME_NTP_SERVICE_HOST}...)."""

WILDCARDS = ("", "::", "0.0.0.0")


class BadEnvironment(ValueError):
    """
    A C{UDPTIME_*} variable that cannot be turned into options.
    """


def variableName(option: str) -> str:
    """
    The environment variable that sets C{--option}: C{UDPTIME_NTP_PORT}.
    """
    return PREFIX + option.upper().replace("-", "_")


def argumentsFromEnvironment(environment: Mapping[str, str]) -> list[str]:
    """
    The udptime options the C{UDPTIME_*} variables of C{environment} give,
    in a fixed order, the words of C{UDPTIME_ARGS} last.

    @raise BadEnvironment: a variable is unknown or its value cannot be
        an option's.
    """
    arguments: list[str] = []
    known = set(OWN_VARIABLES)
    for option in VALUE_OPTIONS:
        name = variableName(option)
        known.add(name)
        value = environment.get(name, "").strip()
        if not value:
            continue
        if SERVICE_LINK.match(value):
            raise BadEnvironment(
                f"{name}={value!r} looks like a Kubernetes service link, not a"
                " value: set enableServiceLinks: false in the pod, or name the"
                " Service otherwise"
            )
        arguments.append(f"--{option}={value}")
    for option in LIST_OPTIONS:
        name = variableName(option)
        known.add(name)
        arguments.extend(
            f"--{option}={word}" for word in environment.get(name, "").split()
        )
    if _flag(environment, "UDPTIME_VERBOSE"):
        arguments.append("--verbose")
    timestamps = _flag(environment, "UDPTIME_KERNEL_TIMESTAMPS")
    if timestamps is not None:
        arguments.append(
            "--kernel-timestamps" if timestamps else "--no-kernel-timestamps"
        )
    for name in sorted(environment):
        if (
            name.startswith(PREFIX)
            and name not in known
            and not SERVICE_LINK_NAME.search(name)
        ):
            raise BadEnvironment(f"unknown variable {name}: not an udptime option")
    try:
        arguments.extend(shlex.split(environment.get("UDPTIME_ARGS", "")))
    except ValueError as error:
        raise BadEnvironment(f"UDPTIME_ARGS: {error}") from None
    return arguments


def _flag(environment: Mapping[str, str], name: str) -> bool | None:
    value = environment.get(name, "").strip()
    if not value:
        return None
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise BadEnvironment(f"{name}={value!r}: give 1 or 0")


def twistdCommand(
    environment: Mapping[str, str], extra: Sequence[str], twistd: str
) -> list[str]:
    """
    The whole command line: C{twistd} in the foreground, no pid file, the
    log on standard output, udptime with the options of C{environment} and
    then C{extra}.
    """
    return [
        twistd,
        "-n",
        "--pidfile=",
        "--logfile=-",
        "udptime",
        *argumentsFromEnvironment(environment),
        *extra,
    ]


def defaultTwistd() -> str:
    """
    The C{twistd} beside the Python running this script (the image's
    virtualenv).
    """
    return os.path.join(os.path.dirname(sys.executable), "twistd")


def run(arguments: Sequence[str]) -> int:
    """
    Replace this process with twistd (it returns only on a mistake: status 2).
    """
    twistd = os.environ.get("UDPTIME_TWISTD") or defaultTwistd()
    try:
        command = twistdCommand(os.environ, arguments, twistd)
    except BadEnvironment as error:
        sys.stderr.write(f"udptime container: {error}\n")
        return 2
    os.execv(twistd, command)
    return 2  # not reached: execv returns only by raising


def serverArguments(pid: int | None = None) -> list[str]:
    """
    The udptime options of the running server: those after C{udptime} on
    the command line of process C{pid}, or of the lowest-numbered process
    whose command line runs twistd with udptime.

    @raise LookupError: there is no such process.
    """
    candidates = [pid] if pid is not None else sorted(_processIds())
    for candidate in candidates:
        try:
            with open(f"/proc/{candidate}/cmdline", "rb") as f:
                words = [w.decode(errors="replace") for w in f.read().split(b"\0")]
        except OSError:
            continue
        if "udptime" in words and any("twist" in os.path.basename(w) for w in words):
            return [w for w in words[words.index("udptime") + 1 :] if w]
    raise LookupError("no running twistd udptime process")


def _processIds() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def optionValue(arguments: Sequence[str], long: str, short: str = "") -> str | None:
    """
    The last value given to C{--long} (or C{-short}) in C{arguments}, in
    any of the forms twistd accepts: C{--long V}, C{--long=V}, C{-s V},
    C{-sV}.
    """
    value = None
    words = list(arguments)
    for index, word in enumerate(words):
        following = words[index + 1] if index + 1 < len(words) else None
        if word == f"--{long}" or (short and word == f"-{short}"):
            value = following
        elif word.startswith(f"--{long}="):
            value = word.split("=", 1)[1]
        elif short and word.startswith(f"-{short}") and not word.startswith("--"):
            value = word[2:]
    return value


def localAddress(interface: str | None) -> str:
    """
    The address to reach a server listening on C{interface} from inside its
    container: loopback for a wildcard.
    """
    if interface is None or interface in WILDCARDS:
        return "127.0.0.1"
    return interface


def checkHealthz(address: str, port: int, timeout: float = 3.0) -> bool:
    """
    Whether C{/healthz} at C{address}:C{port} answers 200.
    """
    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def udpCheckCommand(arguments: Sequence[str], client: str) -> list[str]:
    """
    The C{udptime} client command that asks the server run with
    C{arguments}: its text service, or its NTP service when the text
    service is off.

    @raise LookupError: the server runs neither.
    """
    host = localAddress(optionValue(arguments, "interface", "i"))
    port = optionValue(arguments, "port", "p") or "5000"
    protocol = "text"
    if int(port) == 0:
        port = optionValue(arguments, "ntp-port") or "0"
        protocol = "ntp"
    if int(port) == 0:
        raise LookupError("the server runs neither the text nor the NTP service")
    return [client, "-P", protocol, "-p", port, "-t", "2", "-r", "2", host]


def health(pid: int | None, environment: Mapping[str, str]) -> int:
    """
    Check the running server as the module docstring says; return the exit
    status (0 healthy, 1 not), having said why on standard error when not.
    """
    try:
        arguments = serverArguments(pid)
    except LookupError as error:
        sys.stderr.write(f"udptime health: {error}\n")
        return 1
    metricsPort = optionValue(arguments, "metrics-port")
    mode = environment.get("UDPTIME_HEALTHCHECK", "").strip() or "auto"
    if mode == "auto":
        mode = "healthz" if metricsPort and int(metricsPort) else "udp"
    if mode == "healthz":
        if not metricsPort:
            sys.stderr.write("udptime health: the server has no --metrics-port\n")
            return 1
        address = localAddress(optionValue(arguments, "metrics-interface"))
        if checkHealthz(address, int(metricsPort)):
            return 0
        sys.stderr.write(f"udptime health: /healthz on port {metricsPort} is not 200\n")
        return 1
    if mode != "udp":
        sys.stderr.write(
            f"udptime health: UDPTIME_HEALTHCHECK={mode!r}: healthz or udp\n"
        )
        return 1
    client = os.path.join(os.path.dirname(sys.executable), "udptime")
    try:
        command = udpCheckCommand(arguments, client)
    except (LookupError, ValueError) as error:
        sys.stderr.write(f"udptime health: {error}\n")
        return 1
    done = subprocess.run(command, stdin=subprocess.DEVNULL, timeout=15)
    return 0 if done.returncode == 0 else 1


def main(argv: Sequence[str]) -> int:
    """
    C{run [OPTIONS...]} or C{health [--pid N]}.
    """
    if argv[:1] == ["run"]:
        return run(argv[1:])
    if argv[:1] == ["health"]:
        rest = list(argv[1:])
        if rest[:1] == ["--pid"] and len(rest) == 2 and rest[1].isdigit():
            return health(int(rest[1]), os.environ)
        if not rest:
            return health(None, os.environ)
    sys.stderr.write("usage: container.py run [OPTIONS...] | health [--pid N]\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
