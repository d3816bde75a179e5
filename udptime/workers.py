"""
Worker processes: C{twistd udptime --workers N} serves on every core.

Python runs one thread of Python code at a time, so one process uses one
core.  With C{--workers N} the twistd process becomes a supervisor:

  - before it drops privileges it binds, for every service, N sockets on the
    service's address and port with C{SO_REUSEPORT}; the kernel spreads
    datagrams over them by a hash of the client's address and port;
  - it starts N worker processes (C{python -m twisted udptime ...} with the
    same options, and C{--worker} saying which worker each is, see
    L{WorkerSetting}), each inheriting one socket per service, which it serves
    through C{adoptDatagramPort}-style adoption (L{UDPListenService} with an
    inherited socket) with the whole policy of a single process;
  - with twistd's C{--uid}/C{--gid}, the workers are started before twistd
    drops the supervisor's privileges, and drop them to the same user and
    group themselves before they serve anything (a worker started again
    later is started by the unprivileged supervisor, so the interpreter
    must be one that user may run: C{twistd udptime} checks before it
    starts, and refuses to start when the user cannot);
  - it relays the workers' log events into its own log, each marked with
    the worker's number;
  - it starts a worker that died again (after a short delay that grows while
    workers keep dying quickly); the socket stays bound in the supervisor,
    and until the new worker listens on it the dead worker's clients are
    steered to the other workers (L{steeringProgram}'s C{serving}), so that
    a worker that cannot be started again leaves no client unanswered;
  - on SIGTERM it stops the workers (SIGTERM, then SIGKILL after
    L{STOP_TIMEOUT} seconds) and exits once they have.  A worker whose
    supervisor dies without stopping it gets SIGTERM from the kernel
    (C{PR_SET_PDEATHSIG}), so no worker outlives its supervisor.

Each worker keeps its own rate-limit tables and counters.  So that one
client still meets one limit, the supervisor steers datagrams by source
address rather than by the kernel's default hash of address and port: a
classic BPF program attached to each service's socket group
(C{SO_ATTACH_REUSEPORT_CBPF}, L{steerBySource}) picks the worker from the
client's IPv4 address, or from the IPv6 prefix the rate limit groups
clients by, so that every datagram of one client reaches the same worker.
Where the kernel refuses the program (not Linux, or too old), the default
hash applies and a client that changes its source port can be limited by
each worker separately; the log says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
import re
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from twisted.application.reactors import getReactorTypes
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.util import switchUID

from udptime.address import formatAddress
from udptime.briefing import lineFormat
from udptime.service import (
    LISTENING,
    ServiceCannotListen,
    UDPListenService,
    listeningSocket,
    logCannotListen,
)

MAX_WORKERS = 256
"""The most worker processes C{--workers} starts (each is a Python process)."""

STOP_TIMEOUT = 10.0
"""Seconds a worker has to exit after SIGTERM before it is killed."""

RESTART_DELAY = 0.1
"""Seconds before a worker that died is started again, at first."""

MAX_RESTART_DELAY = 10.0
"""The longest delay before a restart, reached while workers keep dying."""

STABLE_AFTER = 10.0
"""A worker that ran this long resets the restart delay when it dies."""

_FIRST_FD = 3
_PR_SET_PDEATHSIG = 1

_SO_ATTACH_REUSEPORT_CBPF = 51
"""<asm-generic/socket.h>: attach a classic BPF socket selector to a
SO_REUSEPORT group (Linux 4.5 and later)."""

# Classic BPF (<linux/filter.h>).
_BPF_LD_B_ABS = 0x30
_BPF_LD_W_ABS = 0x20
_BPF_ALU_AND_K = 0x54
_BPF_ALU_RSH_K = 0x74
_BPF_ALU_MUL_K = 0x24
_BPF_ALU_MOD_K = 0x94
_BPF_ALU_XOR_X = 0xAC
_BPF_MISC_TAX = 0x07
_BPF_JMP_JEQ_K = 0x15
_BPF_JMP_JA = 0x05
_BPF_RET_A = 0x16
_BPF_RET_K = 0x06
_BPF_ST = 0x02
_BPF_LD_MEM = 0x60
_BPF_ALU_DIV_K = 0x34
_SKF_NET_OFF = -0x100000
"""Offset of the network (IP) header for loads from a socket selector,
whose packet data starts at the UDP payload."""

_HASH_MULTIPLIER = 0x9E3779B1
"""Fibonacci hashing: spreads addresses that differ in any bits."""


def _mask(bits: int) -> int:
    """
    The 32-bit mask of the first C{bits} bits (0 to 32).
    """
    bits = max(0, min(bits, 32))
    return (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF


def steeringProgram(
    count: int, ipv6Prefix: int, serving: Collection[int] | None = None
) -> bytes:
    """
    A classic BPF program that picks one of C{count} sockets of a
    C{SO_REUSEPORT} group from the datagram's source: the IPv4 address, or
    the first C{ipv6Prefix} bits (at most 64) of the IPv6 address, hashed.
    Datagrams of one client (as the rate limit counts clients) always go to
    the same socket.

    @param serving: the indexes (from 0) of the sockets whose workers serve
        them, when some do not (a worker died): the clients of the others
        are spread over these by another bit of the same hash, and the
        clients of these keep their socket.  L{None}, or every socket (or
        none), for all of them.
    """

    def op(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)

    net = _SKF_NET_OFF
    hashed = [
        op(_BPF_LD_B_ABS, net),  # 0: A = first byte of the IP header
        op(_BPF_ALU_RSH_K, 4),  # 1: A = IP version
        op(_BPF_JMP_JEQ_K, 6, 0, 7),  # 2: IPv6? on to 3, else to 10
        op(_BPF_LD_W_ABS, net + 8),  # 3: A = source bits 0-31
        op(_BPF_ALU_AND_K, _mask(ipv6Prefix)),  # 4
        op(_BPF_MISC_TAX),  # 5: X = A
        op(_BPF_LD_W_ABS, net + 12),  # 6: A = source bits 32-63
        op(_BPF_ALU_AND_K, _mask(ipv6Prefix - 32)),  # 7
        op(_BPF_ALU_XOR_X),  # 8: A ^= X
        op(_BPF_JMP_JA, 1),  # 9: to 11
        op(_BPF_LD_W_ABS, net + 12),  # 10: IPv4: A = source address
        op(_BPF_ALU_MUL_K, _HASH_MULTIPLIER),  # 11
        op(_BPF_ALU_RSH_K, 16),  # 12: A = the client's hash
    ]
    live = sorted({index for index in serving or () if 0 <= index < count})
    if not live or len(live) == count:
        return b"".join(
            [*hashed, op(_BPF_ALU_MOD_K, count), op(_BPF_RET_A)]  # the index
        )
    dead = [index for index in range(count) if index not in live]
    # M[0] = hash; A = hash % count; a dead socket's client goes on to the
    # fallback, which picks live[(hash / count) % len(live)].
    checks = []
    for n, index in enumerate(dead):
        checks.append(op(_BPF_JMP_JEQ_K, index, 0, 1))
        toFallback = 2 * (len(dead) - n - 1) + 1
        checks.append(op(_BPF_JMP_JA, toFallback))
    fallback = [
        op(_BPF_LD_MEM, 0),
        op(_BPF_ALU_DIV_K, count),
        op(_BPF_ALU_MOD_K, len(live)),
    ]
    for n, index in enumerate(live):
        fallback += [op(_BPF_JMP_JEQ_K, n, 0, 1), op(_BPF_RET_K, index)]
    fallback.append(op(_BPF_RET_K, live[0]))
    return b"".join(
        [
            *hashed,
            op(_BPF_ST, 0),
            op(_BPF_ALU_MOD_K, count),
            *checks,
            op(_BPF_RET_A),
            *fallback,
        ]
    )


def steerBySource(
    sock: socket.socket,
    count: int,
    ipv6Prefix: int,
    serving: Collection[int] | None = None,
) -> None:
    """
    Make the C{SO_REUSEPORT} group of C{sock}, whose C{count} sockets were
    bound in order, deliver each client's datagrams to one socket (see
    L{steeringProgram}), of those in C{serving} if given.  Attaching a
    program again replaces the group's program.

    @raise OSError: the kernel refused the program.
    """
    program = steeringProgram(count, ipv6Prefix, serving)
    instructions = len(program) // 8
    buffer = ctypes.create_string_buffer(program, len(program))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("@HP", instructions, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, fprog)


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} ")


def workerCount(value: str) -> int:
    """
    The C{--workers} option: a number of processes (0: serve in this
    process), or C{auto} for one per CPU this process may run on, up to
    L{MAX_WORKERS}.
    """
    if value.strip().lower() == "auto":
        cpus = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
        return min(cpus, MAX_WORKERS)
    try:
        count = int(value)
    except ValueError:
        count = -1
    if not 0 <= count <= MAX_WORKERS:
        raise ValueError(f"{value!r} is not a number from 0 to {MAX_WORKERS}, or auto")
    return count


workerCount.coerceDoc = f"A number up to {MAX_WORKERS}, or auto: one per CPU."  # type: ignore[attr-defined]


@dataclass(frozen=True)
class WorkerSetting:
    """
    What a worker process is told by its supervisor, on its command line:
    C{twistd udptime --worker INDEX:SUPERVISOR:NAME=FD,...[:UID:GID:EUID]}
    (L{toOption}, L{fromOption}).  The option is for the supervisor's use
    only: C{--help} does not list it.

    @ivar index: the worker's number, from 1.
    @ivar supervisor: the supervisor's process id.
    @ivar descriptors: the descriptor of each service's socket, by name.
    @ivar privileges: the user and group to switch to, and whether to
        switch the effective ones only, as twistd's C{--uid}, C{--gid} and
        C{--euid}; L{None} to keep the worker's.
    """

    index: int
    supervisor: int
    descriptors: dict[str, int]
    privileges: Privileges | None = None

    def toOption(self) -> str:
        """
        The setting as the value of C{--worker}: the index, the
        supervisor's process id and the descriptors, then, when privileges
        are to be dropped, the user id, the group id (each empty for
        L{None}) and 1 or 0 for the effective ones only, all separated by
        colons.
        """
        fields = [
            str(self.index),
            str(self.supervisor),
            ",".join(f"{name}={fd}" for name, fd in sorted(self.descriptors.items())),
        ]
        privileges = self.privileges
        if privileges is not None:
            fields += [
                "" if privileges.uid is None else str(privileges.uid),
                "" if privileges.gid is None else str(privileges.gid),
                str(int(privileges.euid)),
            ]
        return ":".join(fields)

    @classmethod
    def fromOption(cls, value: str) -> WorkerSetting:
        """
        Read the value of C{--worker} (see L{toOption}).

        @raise ValueError: C{value} is not a worker setting.
        """
        fields = value.split(":")
        try:
            if len(fields) not in (3, 6):
                raise ValueError
            index, supervisor = int(fields[0]), int(fields[1])
            descriptors = {}
            for pair in fields[2].split(","):
                name, _, fd = pair.partition("=")
                descriptors[name] = int(fd)
            privileges = None
            if len(fields) == 6:
                uid, gid, euid = fields[3:]
                privileges = Privileges(
                    int(uid) if uid else None,
                    int(gid) if gid else None,
                    euid == "1",
                )
        except ValueError:
            raise ValueError(
                f"{value!r} is not INDEX:SUPERVISOR:NAME=FD,...[:UID:GID:EUID]"
            ) from None
        return cls(index, supervisor, descriptors, privileges)


workerSetting = WorkerSetting.fromOption
"""The C{--worker} option's coercer."""


class Privileges(NamedTuple):
    """
    A user and group to run as (twistd's C{--uid}, C{--gid}, C{--euid}).
    """

    uid: int | None
    gid: int | None
    euid: bool


def twistdPrivileges(options: Any) -> Privileges | None:
    """
    The privileges twistd will drop to, read from C{options}' parent (the
    twistd command line), resolved as twistd resolves them; L{None} when
    they stay as they are (or the parent is not twistd).
    """
    parent = getattr(options, "parent", None)
    if parent is None:
        return None
    uid, gid = parent.get("uid"), parent.get("gid")
    if uid is None and gid is None:
        return None
    if uid is not None and gid is None:
        gid = pwd.getpwuid(uid).pw_gid
    return Privileges(uid, gid, bool(parent.get("euid")))


def cannotRunAs(
    privileges: Privileges, command: Sequence[str], environment: dict[str, str]
) -> str | None:
    """
    Why a process switched to C{privileges} could not run C{command} (the
    last line of its error output, or its exit status), or L{None} when it
    can.  Run as root before privileges are dropped: it tells whether the
    unprivileged supervisor will be able to start a worker again.
    """
    if privileges.uid is None:
        user: int | None = None
        groups: list[int] | None = None
    else:
        user = privileges.uid
        gid = pwd.getpwuid(user).pw_gid if privileges.gid is None else privileges.gid
        groups = os.getgrouplist(pwd.getpwuid(user).pw_name, gid)
    try:
        result = subprocess.run(
            command,
            env=environment,
            user=user,
            group=privileges.gid,
            extra_groups=groups,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as failure:
        return str(failure)
    if result.returncode == 0:
        return None
    lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def becomeWorker(setting: WorkerSetting, listeners: Sequence[UDPListenService]) -> None:
    """
    Make this process the worker C{setting} describes: each of C{listeners}
    serves the socket its supervisor handed down for its service, the
    process switches to the worker's user and group, and it will end with
    its supervisor.

    @raise KeyError: a listener's service has no socket in C{setting}.
    """
    for listener in listeners:
        fd = setting.descriptors[str(listener.name)]
        listener.boundSocket = socket.socket(fileno=fd)
    if setting.privileges is not None:
        switchUID(*setting.privileges)
    dieWithParent(setting.supervisor)


def dieWithParent(supervisor: int) -> None:
    """
    Ask the kernel to send this process SIGTERM when its parent dies, and
    exit now if the parent is already not C{supervisor} (it died first).
    (Call it after any change of user or group, which clears the request.)
    """
    if sys.platform == "linux":
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor:
        raise SystemExit(f"udptime worker: supervisor {supervisor} is gone")


class WorkerWatcher(Protocol):
    """
    Told of the workers' lives by a L{WorkerSupervisor} (the metrics'
    L{SupervisorReports<udptime.operations.SupervisorReports>}).
    """

    def workerStarted(self, index: int) -> None:
        """
        A process for worker C{index} started.
        """

    def workerEnded(self, index: int) -> None:
        """
        The process of worker C{index} ended.
        """

    def workerLine(self, index: int, line: str) -> bool:
        """
        A line of worker C{index}'s output: whether the watcher took it (it
        is then not logged).
        """


def reactorName(reactor: Any) -> str | None:
    """
    The name C{--reactor} knows C{reactor}'s kind by, or L{None}.
    """
    module = type(reactor).__module__
    for kind in getReactorTypes():
        if getattr(kind, "moduleName", None) == module:
            return str(kind.shortName)
    return None


class WorkerSupervisor(Service):
    """
    Bind the sockets of the services of C{ports} on C{interface}, run
    C{count} workers on them, keep them running and stop them with the
    service.

    The sockets are bound and the workers started in
    L{privilegedStartService}, before twistd drops privileges; workers
    switch to C{privileges} themselves.

    @ivar workers: the running workers' L{WorkerProcess}es by number.
    @ivar briefing: what each worker reads first on its standard input, a
        pipe from the supervisor: the last line of each kind (the NTS server
        keys, the upstream daemon's answer), by kind, see L{brief} and
        L{udptime.briefing}.
    @ivar watcher: told of the workers' starts, ends and output lines, or
        L{None}.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        ports: Mapping[str, int],
        interface: str,
        count: int,
        arguments: Sequence[str],
        privileges: Privileges | None = None,
        ipv6Prefix: int = 64,
        watcher: WorkerWatcher | None = None,
    ) -> None:
        """
        @param ports: the port of each service, by name.
        @param interface: the address they listen on.
        @param count: how many workers to run.
        @param arguments: the worker's command line after C{udptime}: the
            supervisor's own (see L{workerCommand}).
        @param privileges: the user and group the workers switch to.
        @param ipv6Prefix: how IPv6 clients are grouped, to steer each
            client to one worker (see L{steerBySource}).
        @param watcher: told of the workers' lives (see L{WorkerWatcher}).
        """
        self.reactor = reactor
        self.ports = dict(ports)
        self.interface = interface
        self.count = count
        self.arguments = list(arguments)
        self.privileges = privileges
        self.ipv6Prefix = ipv6Prefix
        self.watcher = watcher
        self.setName("workers")
        self.sockets: dict[int, dict[str, socket.socket]] = {}
        self.workers: dict[int, WorkerProcess] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._delays: dict[int, float] = {}
        self._stopping = False
        self.briefing: dict[str, bytes] = {}
        self.serving: set[int] = set(range(1, count + 1))
        self._steered: set[str] = set()

    def adopt(self, sockets: Mapping[str, socket.socket]) -> None:
        """
        Serve C{sockets} (bound already: passed by socket activation), by
        service, instead of binding sockets: every worker inherits the same
        socket, and the kernel hands each datagram to one of them (not
        steered by client: each worker's rate limit sees some of a client's
        datagrams).
        """
        self.sockets = {index: dict(sockets) for index in range(1, self.count + 1)}

    def bind(self) -> None:
        """
        Bind every socket now, if they are not bound yet.

        @raise ServiceCannotListen: a socket cannot be bound (those bound
            already are closed).
        """
        if self.sockets:
            return
        try:
            self._bindAll()
        except ServiceCannotListen:
            self._closeSockets(None)
            raise

    def unbind(self) -> None:
        """
        Close the sockets L{bind} bound, if the service has not started.
        """
        self._closeSockets(None)

    def _bindAll(self) -> None:
        for name, port in self.ports.items():
            for index in range(1, self.count + 1):
                sock = listeningSocket(
                    name,
                    self.interface,
                    port,
                    reusePort=True,
                    # The group is ours alone: no other process's socket may
                    # be on the port when its first socket is bound.
                    mustBeFree=index == 1,
                )
                port = sock.getsockname()[1]  # port 0: the others follow
                self.sockets.setdefault(index, {})[name] = sock
            self._steer(name, sock)

    def privilegedStartService(self) -> None:
        """
        Bind every socket (unless L{bind} did) and start the workers
        (before twistd drops privileges).
        """
        try:
            self.bind()
        except ServiceCannotListen as failure:
            logCannotListen(failure)
            raise
        for name, sock in self.sockets[1].items():
            self.log.info(
                "udptime {service} service listening on {where} (UDP), {workers}",
                service=name,
                where=formatAddress(*sock.getsockname()[:2]),
                workers="1 worker" if self.count == 1 else f"{self.count} workers",
            )
        Service.privilegedStartService(self)
        self._stopping = False
        for index in range(1, self.count + 1):
            self.startWorker(index)
        self._checkRestarts()

    def restartProblem(self) -> str | None:
        """
        Why a worker that ends could not be started again, or L{None}.

        The first workers are started as root; once twistd has dropped the
        supervisor's privileges, a worker that ends is started again by the
        unprivileged user, which must be able to run the worker's
        interpreter and import udptime (not so, say, for a virtualenv under
        C{/root}).  Ask as root, before privileges are dropped.
        """
        privileges = self.privileges
        if privileges is None or privileges.uid in (None, 0) or os.geteuid() != 0:
            # Root runs whatever it started.
            return None
        command = [sys.executable, "-c", "import udptime.tap"]
        reason = cannotRunAs(privileges, command, self.workerEnvironment())
        if reason is None:
            return None
        return (
            f"user {privileges.uid} cannot run {sys.executable} ({reason}): a "
            "worker that ended could not be started again; install udptime "
            "where that user can run it"
        )

    def _checkRestarts(self) -> None:
        """
        Say at once when a worker that ends could not be started again (see
        L{restartProblem}), rather than when the first worker ends.
        (C{twistd udptime} refuses to start then.)
        """
        problem = self.restartProblem()
        if problem is not None:
            self.log.warn("{problem}", problem=problem)

    def _steer(self, name: str, sock: socket.socket) -> None:
        """
        Send every client's datagrams to one worker (see L{steerBySource}),
        or say why the kernel's hash of address and port applies instead.
        """
        if self.count < 2:
            return
        try:
            steerBySource(sock, self.count, self.ipv6Prefix)
            self._steered.add(name)
        except OSError as refused:
            self.log.warn(
                "{service}: datagrams are spread over the workers by source "
                "address and port, not by client ({error}); a client that "
                "changes its port meets each worker's rate limit separately",
                service=name,
                error=refused,
            )

    def _resteer(self) -> None:
        """
        Steer each service's clients to the workers in L{serving} (all of
        them when none is): the clients of a worker that is not serving
        go to the others meanwhile.
        """
        serving = [index - 1 for index in sorted(self.serving)]
        for name in sorted(self._steered):
            try:
                steerBySource(
                    self.sockets[1][name], self.count, self.ipv6Prefix, serving
                )
            except (OSError, KeyError) as refused:
                self.log.warn(
                    "{service}: the workers' clients could not be steered again "
                    "({error})",
                    service=name,
                    error=refused,
                )

    def workerListening(self, index: int) -> None:
        """
        Worker C{index} listens on all its sockets: steer its clients back
        to it.
        """
        if index in self.serving or self._stopping:
            return
        self.serving.add(index)
        self._resteer()
        if self._steered:
            self.log.info("worker {index} serves its clients again", index=index)

    def startService(self) -> None:
        if not self.sockets:
            self.privilegedStartService()
        Service.startService(self)

    def workerCommand(self, setting: WorkerSetting) -> list[str]:
        """
        The command line of the worker C{setting} describes: the
        supervisor's options, and C{--worker}.
        """
        # -P: the working directory (twistd's, often a shared one such as
        # /tmp, and the process may be root) is not put on the module
        # search path: a worker imports what this process imported.
        command = [sys.executable, "-P", "-m", "twisted", "--log-format", "json"]
        name = reactorName(self.reactor)
        if name is not None:
            command += ["--reactor", name]
        return [*command, "udptime", "--worker", setting.toOption(), *self.arguments]

    def workerEnvironment(self) -> dict[str, str]:
        """
        The environment of a worker: this process's, with its module search
        path.
        """
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        return environment

    def startWorker(self, index: int) -> None:
        """
        Start worker C{index} on its sockets.
        """
        self._restarts.pop(index, None)
        sockets = self.sockets[index]
        childFDs: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        descriptors = {}
        for offset, (name, sock) in enumerate(sorted(sockets.items())):
            childFDs[_FIRST_FD + offset] = sock.fileno()
            descriptors[name] = _FIRST_FD + offset
        setting = WorkerSetting(index, os.getpid(), descriptors, self.privileges)
        worker = WorkerProcess(self, index)
        try:
            self.reactor.spawnProcess(
                worker,
                sys.executable,
                self.workerCommand(setting),
                env=self.workerEnvironment(),
                childFDs=childFDs,
            )
        except OSError as failure:
            self.log.error(
                "worker {index} could not start: {error}", index=index, error=failure
            )
            self._scheduleStart(index, 0.0)
            return
        self.workers[index] = worker
        if self.briefing and worker.transport is not None:
            worker.transport.write(b"".join(self.briefing.values()))
        if self.watcher is not None:
            self.watcher.workerStarted(index)
        self.log.info("worker {index} started (pid {pid})", index=index, pid=worker.pid)

    def brief(self, line: bytes) -> None:
        """
        Make C{line} the L{briefing} of its kind (see
        L{udptime.briefing.lineFormat}) for workers started from now on, and
        write it to the standard input of every running worker (the pipe
        that only the supervisor and that worker hold).  The kinds are
        written to a new worker in the order they first came: the NTS keys,
        which a worker reads before it serves, come first.
        """
        self.briefing[lineFormat(line) or ""] = line
        for worker in self.workers.values():
            if worker.transport is not None:
                worker.transport.write(line)

    def workerEnded(self, worker: WorkerProcess, reason: Failure) -> None:
        """
        Worker C{worker} exited: start it again unless the service stops.
        """
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
            if self.watcher is not None:
                self.watcher.workerEnded(worker.index)
        if self._stopping:
            return
        self.log.warn(
            "worker {index} (pid {pid}) ended: {why}",
            index=worker.index,
            pid=worker.pid,
            why=reason.getErrorMessage(),
        )
        if worker.index in self.serving and self.count > 1:
            self.serving.discard(worker.index)
            self._resteer()
            if self._steered and self.serving:
                self.log.info(
                    "worker {index}'s clients are served by the other workers "
                    "until it listens again",
                    index=worker.index,
                )
        self._scheduleStart(worker.index, self.reactor.seconds() - worker.started)

    def _scheduleStart(self, index: int, ranFor: float) -> None:
        """
        Start worker C{index} again after a delay that doubles, up to
        L{MAX_RESTART_DELAY}, while it keeps ending within L{STABLE_AFTER}
        seconds.
        """
        delay = self._delays.get(index, RESTART_DELAY)
        if ranFor >= STABLE_AFTER:
            delay = RESTART_DELAY
        self._delays[index] = min(delay * 2, MAX_RESTART_DELAY)
        self.log.info(
            "starting worker {index} again in {delay:.1f} s", index=index, delay=delay
        )
        self._restarts[index] = self.reactor.callLater(delay, self.startWorker, index)

    def stopService(self) -> Deferred[Any]:
        """
        Stop every worker (SIGTERM, SIGKILL after L{STOP_TIMEOUT} seconds);
        fires once all have exited and the sockets are closed.
        """
        Service.stopService(self)
        self._stopping = True
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        ended = [worker.stop() for worker in list(self.workers.values())]
        done: Deferred[Any] = DeferredList(ended)
        done.addBoth(self._closeSockets)
        return done

    def _closeSockets(self, result: object) -> None:
        for sockets in self.sockets.values():
            for sock in sockets.values():
                sock.close()
        self.sockets.clear()


class WorkerProcess(ProcessProtocol):
    """
    One worker, seen from its supervisor: its log events are relayed, its
    end reported.

    @ivar index: the worker's number.
    @ivar pid: its process id.
    @ivar started: when it started, in the reactor's time.
    """

    log = Logger()

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.pid: int | None = None
        self.started = supervisor.reactor.seconds()
        self._buffers: dict[int, bytes] = {1: b"", 2: b""}
        self._ended: Deferred[None] = Deferred()
        self._kill: IDelayedCall | None = None
        self._listeningOn: set[str] = set()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffered = self._buffers.get(childFD, b"") + data
        *lines, rest = buffered.split(b"\n")
        self._buffers[childFD] = rest
        for line in lines:
            self.relay(line)

    def relay(self, line: bytes) -> None:
        """
        Put one line of the worker's output in the supervisor's log: a JSON
        log event keeps its level and fields, anything else (say, Python's
        own complaints before logging starts) is logged as text.
        """
        text = line.decode("utf-8", "replace").strip("\x1e\r\n ")
        if not text:
            return
        watcher = self.supervisor.watcher
        if watcher is not None and watcher.workerLine(self.index, text):
            return
        if text.startswith("{"):
            try:
                event = eventFromJSON(text)
            except ValueError:
                event = None
            if isinstance(event, dict) and "log_format" in event:
                if event["log_format"] == LISTENING:
                    self._listening(event.get("service"))
                # The number goes in as text: the event's fields may come
                # pre-formatted (log_flattened) and cannot take a new one.
                event["log_format"] = f"worker {self.index}: " + str(
                    event["log_format"] or ""
                )
                globalLogPublisher(event)
                return
        self.log.warn(
            "worker {index}: {line}",
            index=self.index,
            line=_TIMESTAMP.sub("", text),
        )

    def _listening(self, service: object) -> None:
        """
        The worker said it listens on the socket of C{service}: once it
        listens on all of its sockets, tell the supervisor.
        """
        self._listeningOn.add(str(service))
        sockets = self.supervisor.sockets.get(self.index, {})
        if set(sockets) <= self._listeningOn:
            self.supervisor.workerListening(self.index)

    def processEnded(self, reason: Failure) -> None:
        for rest in self._buffers.values():
            if rest:
                self.relay(rest)
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        self.supervisor.workerEnded(self, reason)
        self._ended.callback(None)

    def stop(self) -> Deferred[None]:
        """
        Ask the worker to stop; fires once it has exited.
        """
        if not self._ended.called and self.transport is not None:
            try:
                self.transport.signalProcess("TERM")
            except (ProcessExitedAlready, OSError):
                pass
            else:
                self._kill = self.supervisor.reactor.callLater(
                    STOP_TIMEOUT, self._forceStop
                )
        return self._ended

    def _forceStop(self) -> None:
        assert self.transport is not None
        self.log.warn("worker {index} did not stop: killing it", index=self.index)
        self.transport.signalProcess("KILL")
