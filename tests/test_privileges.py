"""
Standard ports as root, then an unprivileged server: C{twistd --uid/--gid}
binds NTP (123), Time (37) and Daytime (13) in a private network namespace
and must go on answering as user nobody.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import struct
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.support import TwistdServer, missing, requirePeer

QUERY = r"""
import socket, struct, sys
def ask(port, payload):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(payload, ("127.0.0.1", port))
        return s.recvfrom(2048)[0]
request = struct.pack("!B47x", 0x23)[:40] + struct.pack("!Q", 0x1122334455667788)
sys.stdout.write(ask(123, request).hex() + "\n")
sys.stdout.write(ask(37, b"").hex() + "\n")
sys.stdout.write(ask(13, b"").hex() + "\n")
"""


class PrivilegeTests(SynchronousTestCase):
    def test_standardPortsThenNobody(self) -> None:
        """
        Started as root in a private network namespace with --uid nobody
        --gid nogroup, the server binds ports 123, 37 and 13, runs as
        nobody, and answers on all three.
        """
        if os.geteuid() != 0:
            missing("binding ports below 1024 and unshare need root")
        unshare = requirePeer("unshare", "util-linux, for a private network namespace")
        nsenter = requirePeer("nsenter", "util-linux, to query inside the namespace")
        ip = requirePeer("ip", "iproute2, to bring the namespace's loopback up")
        probe = subprocess.run([unshare, "-n", "true"], capture_output=True)
        if probe.returncode:
            missing(f"unshare -n is not permitted here: {probe.stderr!r}")
        nobody = pwd.getpwnam("nobody")
        nogroup = grp.getgrgid(nobody.pw_gid)
        server = TwistdServer(
            [
                "--port", "0",
                "--ntp-port", "123",
                "--time-port", "37",
                "--daytime-port", "13",
                "--local-stratum", "2",
                "--interface", "127.0.0.1",
            ],
            twistdArguments=["--uid", nobody.pw_name, "--gid", nogroup.gr_name],
            preexec=[
                unshare, "-n", "--",
                "sh", "-c", f'{ip} link set lo up && exec "$@"', "sh",
            ],
        )  # fmt: skip
        self.addCleanup(server.cleanup)
        os.chmod(server.directory, 0o755)
        server.start(listeners=3)

        with open(f"/proc/{server.pid}/status") as f:
            status = f.read()
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", status, re.MULTILINE)
        gids = re.search(r"^Gid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", status, re.MULTILINE)
        assert uids is not None and gids is not None
        self.assertEqual({int(u) for u in uids.groups()}, {nobody.pw_uid})
        self.assertEqual({int(g) for g in gids.groups()}, {nobody.pw_gid})
        self.assertNotEqual(
            os.readlink(f"/proc/{server.pid}/ns/net"), os.readlink("/proc/self/ns/net")
        )

        done = subprocess.run(
            [nsenter, f"--net=/proc/{server.pid}/ns/net", sys.executable, "-c", QUERY],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(done.returncode, 0, done.stderr + server.log())
        ntpReply, timeReply, daytimeReply = (
            bytes.fromhex(line) for line in done.stdout.split()
        )
        self.assertEqual(len(ntpReply), 48)
        self.assertEqual(ntpReply[0] & 7, 4)
        self.assertEqual(ntpReply[1], 2)
        self.assertEqual(struct.unpack("!Q", ntpReply[24:32])[0], 0x1122334455667788)
        self.assertEqual(len(timeReply), 4)
        self.assertRegex(daytimeReply, rb"^\d\d [A-Z]{3} \d{4} \d\d:\d\d:\d\d UTC\r\n$")
        self.assertEqual(server.stop(), 0)
        self.assertNotIn("Traceback", server.log())
