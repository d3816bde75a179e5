"""
Private network namespaces for tests that need more than loopback: named
namespaces (C{ip netns}) linked by veth pairs, whose addresses exist only
inside them, and sockets opened inside them from the test process.

Nothing here touches the host's own network namespace: every link is
created with both ends already inside namespaces made by the test, so no
datagram sent in them can leave them.  Names are unique per run, and a
namespace is deleted only by the object that created it.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import socket
import subprocess
from collections.abc import Sequence

from twisted.trial.unittest import SynchronousTestCase

from tests.support import missing, requirePeer

CLONE_NEWNET = 0x40000000
"""C{setns(2)}'s flag for a network namespace."""

_libc = ctypes.CDLL(None, use_errno=True)


def requireNamespaces() -> str:
    """
    The path of C{ip}, when this process may create network namespaces and
    links (root, iproute2); otherwise skip (or fail under
    C{UDPTIME_REQUIRE_PEERS=1}).
    """
    if os.geteuid() != 0:
        missing("network namespaces (ip netns) need root")
    return requirePeer("ip", "iproute2, for network namespaces")


def uniquePrefix() -> str:
    """
    A prefix for namespace names that no other run on this machine uses:
    C{udptime-PID-RANDOM}.
    """
    return f"udptime-{os.getpid()}-{secrets.token_hex(3)}"


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"setns: {os.strerror(number)}")


class NetworkNamespace:
    """
    A named network namespace (C{ip netns add NAME}) with its loopback up.

    @ivar name: the namespace's name, as C{ip netns list} shows it.
    @ivar ip: the path of the C{ip} program.
    """

    def __init__(self, name: str, ip: str) -> None:
        self.name = name
        self.ip = ip
        self.deleted = False
        run([ip, "netns", "add", name])
        try:
            self.run(ip, "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise

    @classmethod
    def create(cls, case: SynchronousTestCase, name: str, ip: str) -> NetworkNamespace:
        """
        A new namespace called C{name}, deleted when C{case} is cleaned up
        (after what is started in it later, since cleanups run last first).
        """
        namespace = cls(name, ip)
        case.addCleanup(namespace.delete)
        return namespace

    def command(self, *arguments: str) -> list[str]:
        """
        The command line that runs C{arguments} inside this namespace
        (C{ip netns exec NAME ...}, which execs the program: its process id
        is the one C{subprocess} reports).
        """
        return [self.ip, "netns", "exec", self.name, *arguments]

    def run(self, *arguments: str, check: bool = True) -> str:
        """
        Run a command inside this namespace; return its standard output.

        @raise RuntimeError: it failed (exit status not 0) and C{check}.
        """
        return run(self.command(*arguments), check=check)

    def sysctl(self, name: str, value: str) -> None:
        """
        Set a network sysctl of this namespace only.
        """
        self.run("sysctl", "-q", "-w", f"{name}={value}")

    def socket(
        self, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM
    ) -> socket.socket:
        """
        A socket opened inside this namespace (the calling thread enters it
        for the call only, with C{setns(2)}, and comes back): it sends and
        receives there for its whole life.
        """
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                _setns(target)
                try:
                    return socket.socket(family, type)
                finally:
                    _setns(home)
            finally:
                os.close(target)
        finally:
            os.close(home)

    def enter(self) -> None:
        """
        Move the calling thread into this namespace for good (for a thread
        that works only there; other threads stay where they are).
        """
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)

    def delete(self) -> None:
        """
        Delete the namespace (once); its links and nftables tables go with it.
        """
        if self.deleted:
            return
        self.deleted = True
        run([self.ip, "netns", "delete", self.name], check=False)


def link(
    a: NetworkNamespace,
    aName: str,
    aAddress: str,
    b: NetworkNamespace,
    bName: str,
    bAddress: str,
) -> None:
    """
    Link two namespaces with a veth pair created with both ends already in
    place (never in the host's namespace), give each end its address (CIDR
    notation) and bring both up.
    """
    run(
        [
            a.ip, "-n", a.name, "link", "add", aName, "type", "veth",
            "peer", "name", bName, "netns", b.name,
        ]
    )  # fmt: skip
    for namespace, name, address in ((a, aName, aAddress), (b, bName, bAddress)):
        namespace.run(namespace.ip, "address", "add", address, "dev", name)
        namespace.run(namespace.ip, "link", "set", name, "up")


def run(
    command: Sequence[str],
    check: bool = True,
    timeout: float = 20.0,
    input: str | None = None,
) -> str:
    """
    Run C{command} (bounded in time), with C{input} as its standard input;
    return its standard output.

    @raise RuntimeError: it failed and C{check}, with its standard error.
    """
    done = subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {done.returncode}: {done.stderr.strip()}"
        )
    return done.stdout


def namespaceNames() -> set[str]:
    """
    The names C{ip netns list} shows now.
    """
    output = run(["ip", "netns", "list"], check=False)
    return {line.split()[0] for line in output.splitlines() if line.strip()}
