"""
Sockets passed by systemd socket activation (C{sd_listen_fds(3)}).

systemd (or C{systemd-socket-activate}) binds the sockets a C{.socket} unit
lists, starts the service with them as descriptors 3, 4, ... and describes
them in the environment:

  - C{LISTEN_PID}: the process the sockets are for (a child that inherits
    the environment must not take them);
  - C{LISTEN_FDS}: how many descriptors, from 3;
  - C{LISTEN_FDNAMES}: their names, separated by colons, from each socket
    unit's C{FileDescriptorName=} (by default the socket unit's own name,
    such as C{udptime.socket}).

L{activatedSockets} reads them, checks every descriptor, and adopts it as a
Python socket by name.  A name is the service the socket is for: C{text},
C{ntp}, C{time}, C{daytime} and C{echo} take datagram sockets, C{nts-ke} and
C{metrics} stream sockets; several sockets may carry one name (say, one on
IPv4 and one on IPv6).  Twisted's own C{ListenFDs.fromEnvironment()} is not
used: it gives nothing at all when C{LISTEN_FDNAMES} is missing, and
forgets the environment on first read.

Unnamed sockets: when C{LISTEN_FDNAMES} is missing, or a socket carries
systemd's default name (C{unknown}, or the socket unit's name ending in
C{.socket}), the socket is taken for the one service expected of its type
(datagram or stream) when there is exactly one such socket and one such
service; otherwise it is an error that asks for C{FileDescriptorName=}.
Guessing which of several unnamed sockets is NTP would be worse than
refusing to start.

Every problem is an L{ActivationError} whose message is one line for the
operator.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Collection, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Final

LISTEN_FDS_START: Final = 3
"""The first descriptor systemd passes (C{SD_LISTEN_FDS_START})."""

DATAGRAM_SERVICES: Final = frozenset({"text", "ntp", "time", "daytime", "echo"})
"""Names of the services that take datagram (UDP) sockets."""

STREAM_SERVICES: Final = frozenset({"nts-ke", "metrics"})
"""Names of the services that take stream (TCP) sockets."""

ENVIRONMENT: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
"""The variables of socket activation, removed once read."""

_MAX_FDS: Final = 1024


class ActivationError(Exception):
    """
    The sockets passed by socket activation cannot be used as they are; the
    message is one line, for the operator.
    """


@dataclass(frozen=True, slots=True)
class ActivatedSocket:
    """
    One adopted socket.

    @ivar name: the service it is for.
    @ivar socket: the socket, non-blocking, owned by the caller.
    @ivar descriptor: the descriptor systemd passed (now closed).
    """

    name: str
    socket: socket.socket
    descriptor: int

    @property
    def address(self) -> tuple[str, int]:
        """
        The address and port the socket is bound to.
        """
        host, port = self.socket.getsockname()[:2]
        return str(host), int(port)


def _isDefaultName(name: str) -> bool:
    return name in ("", "unknown") or name.endswith(".socket")


def _kind(sockType: int) -> str:
    return "datagram" if sockType == socket.SOCK_DGRAM else "stream"


def activatedSockets(
    environ: MutableMapping[str, str] | None = None,
    expected: Collection[str] | None = None,
    pid: int | None = None,
    start: int = LISTEN_FDS_START,
    unnamed: Collection[str] | None = None,
) -> dict[str, list[ActivatedSocket]]:
    """
    Adopt the sockets systemd passed to this process, by service name.

    The variables of socket activation are removed from C{environ}, so that
    processes started later do not take the sockets for theirs; the
    descriptors systemd passed are closed, and each socket lives on as a
    duplicate in its L{ActivatedSocket} (non-blocking, close-on-exec).

    @param environ: the environment (L{os.environ} by default).
    @param expected: the services this process runs, or L{None} for any:
        a socket for another service is an error, and an unnamed socket is
        taken for the only expected service of its type.
    @param pid: this process's id (L{os.getpid} by default).
    @param start: the first descriptor (systemd's is always 3).
    @param unnamed: the services an unnamed socket may be for, when they
        are not C{expected} (L{None}: C{expected}).

    @return: the sockets by name; empty when the process was not started
        by socket activation (no C{LISTEN_FDS}, or C{LISTEN_PID} names
        another process).

    @raise ActivationError: a variable is malformed, a descriptor is not an
        IPv4 or IPv6 socket bound to a port, a name is unknown, unexpected
        or ambiguous, or a socket is of the wrong type for its service.
    """
    env = os.environ if environ is None else environ
    values = {name: env.get(name) for name in ENVIRONMENT}
    for name in ENVIRONMENT:
        env.pop(name, None)
    listenPid, listenFds, listenNames = values.values()
    if listenFds is None or listenPid is None:
        return {}
    if not listenPid.isdigit():
        raise ActivationError(f"LISTEN_PID={listenPid!r} is not a process id")
    if int(listenPid) != (os.getpid() if pid is None else pid):
        return {}
    if not listenFds.isdigit() or not 0 < int(listenFds) <= _MAX_FDS:
        raise ActivationError(f"LISTEN_FDS={listenFds!r} is not a number of sockets")
    count = int(listenFds)
    if listenNames is None:
        names = [""] * count
    else:
        names = listenNames.split(":")
        if len(names) != count:
            raise ActivationError(
                f"LISTEN_FDNAMES has {len(names)} names for {count} sockets"
            )
    descriptors = range(start, start + count)
    named = dict(zip(descriptors, names, strict=True))
    types = {fd: _socketType(fd, name) for fd, name in named.items()}
    resolved = _resolveNames(
        named, types, expected, expected if unnamed is None else unnamed
    )
    for fd in descriptors:
        _check(fd, resolved[fd])
    adopted: dict[str, list[ActivatedSocket]] = {}
    for fd in descriptors:
        name = resolved[fd]
        adopted.setdefault(name, []).append(_adopt(fd, name))
    return adopted


def _socketType(fd: int, name: str) -> int:
    """
    The type (C{SOCK_DGRAM} or C{SOCK_STREAM}) of the socket at C{fd}.

    @raise ActivationError: C{fd} is not an open socket.
    """
    label = f"descriptor {fd}" + (f" ({name})" if name else "")
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        raise ActivationError(f"{label} is not open: {e.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ActivationError(f"{label} is not a socket")
    probe = socket.socket(fileno=os.dup(fd))
    try:
        sockType = probe.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    finally:
        probe.close()
    if sockType not in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        raise ActivationError(f"{label} is neither a datagram nor a stream socket")
    return int(sockType)


def _resolveNames(
    names: Mapping[int, str],
    types: Mapping[int, int],
    expected: Collection[str] | None,
    unnamed: Collection[str] | None,
) -> dict[int, str]:
    """
    The service of every descriptor: its name, checked, or for an unnamed
    one the only expected service of its type.
    """
    known = DATAGRAM_SERVICES | STREAM_SERVICES
    resolved: dict[int, str] = {}
    for fd, name in names.items():
        if _isDefaultName(name):
            resolved[fd] = _onlyService(fd, name, names, types, unnamed)
            continue
        if name not in known:
            raise ActivationError(
                f"socket {name!r} (descriptor {fd}) names no udptime service;"
                f" name it one of {', '.join(sorted(known))} with"
                " FileDescriptorName="
            )
        if expected is not None and name not in expected:
            raise ActivationError(
                f"socket {name!r} (descriptor {fd}) is for a service that is"
                " not enabled"
            )
        datagram = name in DATAGRAM_SERVICES
        wanted = socket.SOCK_DGRAM if datagram else socket.SOCK_STREAM
        if types[fd] != wanted:
            directive = "ListenDatagram=" if datagram else "ListenStream="
            raise ActivationError(
                f"socket {name!r} (descriptor {fd}) is a {_kind(types[fd])} socket;"
                f" the {name} service needs a {_kind(wanted)} socket ({directive})"
            )
        resolved[fd] = name
    return resolved


def _onlyService(
    fd: int,
    name: str,
    names: Mapping[int, str],
    types: Mapping[int, int],
    expected: Collection[str] | None,
) -> str:
    """
    The service an unnamed socket is for: the only expected one of its
    type, when it is the only unnamed socket of that type.
    """
    sockType = types[fd]
    family = DATAGRAM_SERVICES if sockType == socket.SOCK_DGRAM else STREAM_SERVICES
    candidates = sorted(family if expected is None else family & set(expected))
    unnamed = [
        other
        for other, otherName in names.items()
        if _isDefaultName(otherName) and types[other] == sockType
    ]
    label = f"{name!r}" if name else "without a name"
    if len(candidates) == 1 and len(unnamed) == 1:
        return candidates[0]
    raise ActivationError(
        f"{_kind(sockType)} socket {label} (descriptor {fd}): name each socket"
        " after its service with FileDescriptorName= (one of"
        f" {', '.join(sorted(family))})"
    )


def _check(fd: int, name: str) -> None:
    """
    Check that the socket at C{fd} can serve C{name}: an IPv4 or IPv6
    socket bound to a port (and listening, for a stream socket).
    """
    probe = socket.socket(fileno=os.dup(fd))
    try:
        if probe.family not in (socket.AF_INET, socket.AF_INET6):
            raise ActivationError(
                f"socket {name!r} (descriptor {fd}) is not an IPv4 or IPv6 socket"
            )
        if not probe.getsockname()[1]:
            raise ActivationError(
                f"socket {name!r} (descriptor {fd}) is not bound to a port"
            )
        if probe.type == socket.SOCK_STREAM and not probe.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            raise ActivationError(
                f"socket {name!r} (descriptor {fd}) is a stream socket that"
                " does not listen"
            )
    finally:
        probe.close()


def _adopt(fd: int, name: str) -> ActivatedSocket:
    """
    Take the socket at C{fd} for service C{name}: make it non-blocking
    (inherited sockets are blocking; a reactor needs them not to be), and
    close C{fd}, keeping a duplicate.
    """
    sock = socket.socket(fileno=os.dup(fd))
    sock.setblocking(False)
    os.close(fd)
    return ActivatedSocket(name, sock, fd)
