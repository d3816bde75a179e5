"""
Readiness notification for systemd services of C{Type=notify}
(C{sd_notify(3)}), without a dependency.

systemd gives the service the address of a datagram socket in
C{NOTIFY_SOCKET}: a file system path, or a name in Linux's abstract
namespace when it starts with C{@}.  The service sends it newline-separated
assignments: C{READY=1} once it serves, C{STOPPING=1} as it stops,
C{STATUS=...} for C{systemctl status}.

twistd can report readiness this way: with C{--nodaemon} (as a unit of
C{Type=notify} runs it) the process systemd started is the one that serves,
so the default C{NotifyAccess=main} accepts its messages.  A service calls
L{notifyReady} once every one of its sockets listens.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """
    Send C{message} (C{"READY=1"}, C{"STATUS=..."}, several separated by
    newlines) to the service manager.

    @param environ: the environment to find C{NOTIFY_SOCKET} in
        (L{os.environ} by default).
    @return: whether it was sent: C{False} when the process was not started
        by a service manager that listens (no C{NOTIFY_SOCKET}).
    @raise OSError: C{NOTIFY_SOCKET} names a socket that cannot be reached.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        raise OSError(f"NOTIFY_SOCKET={address!r} is neither a path nor @name")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.sendto(message.encode("utf-8"), address)
    return True


def notifyReady(status: str = "", environ: Mapping[str, str] | None = None) -> bool:
    """
    Tell the service manager that the service is ready (C{READY=1}), with
    an optional one-line C{STATUS}.

    @return: whether it was sent (see L{notify}).
    """
    message = "READY=1"
    if status:
        message += "\nSTATUS=" + status.replace("\n", " ")
    return notify(message, environ)


def notifyStopping(environ: Mapping[str, str] | None = None) -> bool:
    """
    Tell the service manager that the service is stopping (C{STOPPING=1}).

    @return: whether it was sent (see L{notify}).
    """
    return notify("STOPPING=1", environ)
