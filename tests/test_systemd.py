"""
Tests for the systemd units in C{contrib/systemd}: C{systemd-analyze verify}
finds nothing to say, C{systemd-analyze security} scores the service at or
below L{MAX_EXPOSURE} with only the documented exposures left, and udptime
works under the restrictions that touch it (C{MemoryDenyWriteExecute=} and
C{ProtectClock=}, applied by C{tests/hardened.py} as systemd applies them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support import (
    TwistdServer,
    freePort,
    missing,
    requirePeer,
    twistdPath,
    udpQuery,
    waitFor,
)
from tests.test_ntp_interop import ReferenceServer
from tests.test_operations import NTP_REQUEST
from udptime.ntp import NTPPacket

UNITS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "contrib", "systemd")
UNIT_FILES = ("udptime.service", "udptime.socket", "udptime-metrics.socket")
HARDENED = os.path.join(os.path.dirname(__file__), "hardened.py")

MAX_EXPOSURE = 1.1
"""The exposure C{systemd-analyze security} gives udptime.service (Debian's
chrony.service: 3.7)."""

REMAINING = {
    # A network service needs the host's network, IPv4 and IPv6 sockets (the
    # query to the upstream daemon opens one), and AF_UNIX for sd_notify.
    "PrivateNetwork=",
    "RestrictAddressFamilies=~AF_(INET|INET6)",
    "RestrictAddressFamilies=~AF_UNIX",
    # A public time server answers any address; restrict with IPAddressDeny=
    # and IPAddressAllow= where the clients are known.
    "IPAddressDeny=",
    # ProtectClock= itself allows reading the real-time clock device.
    "DeviceAllow=",
    # udptime runs the host's Python and Twisted, not an image of its own.
    "RootDirectory=/RootImage=",
}
"""The checks the service does not pass, and why (see the operations
page)."""


def unitDirectory(case: SynchronousTestCase) -> str:
    """
    A copy of the units whose C{ExecStart=} runs the test's own twistd (the
    units name C{/usr/bin/twistd}, which C{verify} wants to exist).
    """
    directory = tempfile.mkdtemp(prefix="udptime-units-")
    case.addCleanup(shutil.rmtree, directory, True)
    for name in UNIT_FILES:
        with open(os.path.join(UNITS, name)) as f:
            text = f.read()
        text = text.replace("ExecStart=/usr/bin/twistd ", f"ExecStart={twistdPath()} ")
        with open(os.path.join(directory, name), "w") as f:
            f.write(text)
    return directory


def analyze(*arguments: str) -> subprocess.CompletedProcess[str]:
    command = requirePeer("systemd-analyze", "checks the systemd units")
    return subprocess.run(
        [command, *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tempfile.gettempdir(),
    )


def runHardened(*command: str) -> subprocess.CompletedProcess[str]:
    """
    Run C{command} under C{tests/hardened.py}'s restrictions; skip when the
    kernel cannot apply them (C{PR_SET_MDWE} needs Linux 6.3), and treat a
    missing libseccomp (which install-peers.sh installs with systemd) as a
    missing peer.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    result = subprocess.run(
        [sys.executable, HARDENED, *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    if result.returncode == 2 and "cannot restrict" in result.stderr:
        if "PR_SET_MDWE" in result.stderr:
            raise SkipTest(result.stderr.strip())
        missing(result.stderr.strip())
    return result


class UnitTests(SynchronousTestCase):
    """
    The unit files, as systemd reads them.
    """

    def test_execStart(self) -> None:
        """
        The service runs twistd in the foreground, without a pid file,
        logging to standard output (the journal).
        """
        with open(os.path.join(UNITS, "udptime.service")) as f:
            [execStart] = [line for line in f if line.startswith("ExecStart=")]
        self.assertTrue(
            execStart.startswith(
                "ExecStart=/usr/bin/twistd --nodaemon --pidfile= --logfile=- udptime "
            ),
            execStart,
        )

    def test_verify(self) -> None:
        """
        C{systemd-analyze verify} has nothing to say.
        """
        directory = unitDirectory(self)
        result = analyze(
            "verify", *(os.path.join(directory, name) for name in UNIT_FILES)
        )
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr), (0, "", ""), result
        )

    def test_security(self) -> None:
        """
        C{systemd-analyze security --offline=true} scores the service at
        most L{MAX_EXPOSURE}, failing only the documented checks.
        """
        directory = unitDirectory(self)
        result = analyze(
            "security",
            "--offline=true",
            "--no-pager",
            os.path.join(directory, "udptime.service"),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        match = re.search(
            r"Overall exposure level for udptime\.service: ([0-9.]+)", result.stdout
        )
        assert match is not None, result.stdout
        self.assertLessEqual(float(match.group(1)), MAX_EXPOSURE, result.stdout)
        failed = {
            line.split()[1]
            for line in result.stdout.splitlines()
            if line.startswith("✗")
        }
        self.assertEqual(failed, REMAINING, result.stdout)


class HardenedTests(SynchronousTestCase):
    """
    udptime under C{MemoryDenyWriteExecute=} and C{ProtectClock=}.
    """

    def hardened(self, *command: str) -> subprocess.CompletedProcess[str]:
        return runHardened(*command)

    def test_restrictions(self) -> None:
        """
        Under the launcher, memory cannot be writable and executable, and
        the kernel's clock state cannot be read, not even with adjtimex's
        read-only mode 0 (so without C{--upstream} udptime needs
        C{ProtectClock=no}); ctypes calls and callbacks still work.
        """
        program = """
import ctypes, mmap
from udptime.clock import readKernelClock, measurePrecision
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except OSError:
    print("write-execute refused")
print("kernel", readKernelClock())
callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
print("callback", callback(1), "precision", measurePrecision() < 0)
"""
        result = self.hardened(sys.executable, "-c", program)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            result.stdout.splitlines(),
            ["write-execute refused", "kernel None", "callback 2 precision True"],
        )

    def test_serves(self) -> None:
        """
        A twistd udptime so restricted serves NTP through its batched
        (recvmmsg, ctypes) port.
        """
        port = freePort()
        probe = self.hardened(sys.executable, "-c", "pass")
        self.assertEqual(probe.returncode, 0, probe.stderr)
        server = TwistdServer(
            ["--port", "0", "--ntp-port", str(port), "--local-stratum", "10"],
            preexec=[sys.executable, HARDENED],
            env={"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        )
        self.addCleanup(server.cleanup)
        server.start()
        request = NTPPacket(leap=0, version=4, mode=3, transmitTimestamp=12345)
        reply = NTPPacket.fromBytes(udpQuery(request.toBytes(), "127.0.0.1", port))
        self.assertEqual((reply.mode, reply.stratum, reply.leap), (4, 10, 0))
        self.assertEqual(reply.originTimestamp, 12345)
        # The server is the launcher's process, now twistd, under the filter.
        with open(f"/proc/{server.pid}/status") as f:
            self.assertIn("Seccomp:\t2\n", f.read())


class UnitCommandTests(SynchronousTestCase):
    """
    The service's command, run as the units run it: its socket passed by
    socket activation as C{udptime.socket} names it, under the unit's
    C{ProtectClock=} and C{MemoryDenyWriteExecute=}, asking a real chronyd.
    """

    def test_unitCommand(self) -> None:
        """
        udptime serves NTP on the passed socket with the upstream daemon's
        stratum: it needs neither a port of its own nor the kernel's clock
        state.
        """
        with open(os.path.join(UNITS, "udptime.service")) as f:
            [execStart] = [line for line in f if line.startswith("ExecStart=")]
        arguments = execStart.split(" udptime ", 1)[1].split()
        with open(os.path.join(UNITS, "udptime.socket")) as f:
            socketUnit = f.read()
        self.assertIn("FileDescriptorName=ntp\n", socketUnit)
        chronyd = ReferenceServer(stratum=3)
        self.addCleanup(chronyd.cleanup)
        chronyd.start()
        arguments = [
            argument.replace("127.0.0.1:11123", f"127.0.0.1:{chronyd.port}")
            for argument in arguments
        ]
        self.assertIn(f"127.0.0.1:{chronyd.port}", arguments)
        activate = requirePeer("systemd-socket-activate", "socket activation")
        port = freePort()
        probe = runHardened(sys.executable, "-c", "pass")
        self.assertEqual(probe.returncode, 0, probe.stderr)
        server = TwistdServer(
            arguments,
            preexec=[
                activate,
                "--datagram",
                "-l",
                f"127.0.0.1:{port}",
                "--fdname=ntp",
                sys.executable,
                HARDENED,
            ],
            env={"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        )
        self.addCleanup(server.cleanup)
        server.start(listeners=0)
        waitFor(lambda: "Listening on" in server.stderr(), "the socket")

        def ask() -> NTPPacket:
            return NTPPacket.fromBytes(
                udpQuery(NTP_REQUEST, "127.0.0.1", port, timeout=30.0)
            )

        def synchronised() -> NTPPacket | None:
            reply = ask()
            return reply if reply.leap != 3 else None

        # The first request starts the server, which answers it, perhaps
        # before the upstream daemon answered its first poll (then as
        # unsynchronised, LI 3).  Once it has logged the daemon's
        # synchronised answer, its state says so within a second (see
        # udptime.upstream): asked twice a second, well within its rate
        # limits (a burst of 32, then 1 a second), which a faster poll could
        # spend and be dropped.
        ask()
        waitFor(
            lambda: (
                f"upstream 127.0.0.1:{chronyd.port} is synchronised" in server.log()
            ),
            "the upstream daemon's synchronised answer",
            timeout=90.0,
        )
        reply = waitFor(
            synchronised,
            "a synchronised reply",
            timeout=10.0,
            interval=0.5,
        )
        self.assertEqual(reply.stratum, 3)
        self.assertNotIn("Traceback", server.log())
        self.assertEqual(server.stop(), 0)
