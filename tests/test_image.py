"""
The container image, built and run for real (opt-in: C{UDPTIME_IMAGE_TEST=1};
it needs root, C{dockerd} and C{mmdebstrap}, which C{tests/install-peers.sh}
installs when that variable is set).

The test starts a Docker daemon of its own (no bridge, no iptables, its own
data and exec roots and socket in a temporary directory, stopped by its
process id), builds the image with C{deploy/build-image.sh} (the base made
from Debian's packages: no image registry), runs it with the host's network
on a free loopback port, read-only, with every capability dropped, asks it
the time, waits for its health check, and stops it; then runs it again
with NTS as the Kubernetes manifests configure it (read-only mounted
certificate and key file) and asks it for authenticated time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.certificates import makeCertificates
from tests.support import freePort, missing, requirePeer, udptimePath, waitFor
from tests.tcp import freeTCPPort

BUILD_SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "deploy", "build-image.sh"
)
TAG = "udptime:test"
USER = "10123:10123"


class DockerDaemon:
    """
    A C{dockerd} of the test's own, clashing with nothing on the machine.
    """

    def __init__(self, dockerd: str, docker: str) -> None:
        self.directory = tempfile.mkdtemp(prefix="udptime-dockerd-")
        self.socket = os.path.join(self.directory, "docker.sock")
        self.docker = [docker, "-H", f"unix://{self.socket}"]
        self.logPath = os.path.join(self.directory, "dockerd.log")
        with open(self.logPath, "wb") as log:
            self.process = subprocess.Popen(
                [
                    dockerd,
                    "--bridge=none",
                    "--iptables=false",
                    "--ip6tables=false",
                    "-H", f"unix://{self.socket}",
                    "--data-root", os.path.join(self.directory, "data"),
                    "--exec-root", os.path.join(self.directory, "exec"),
                    "--pidfile", os.path.join(self.directory, "dockerd.pid"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def ready(self) -> bool:
        """
        Whether the daemon answers (or raise when it has exited).
        """
        if self.process.poll() is not None:
            raise RuntimeError(f"dockerd exited:\n{self.log()}")
        return self.command("version", check=False).returncode == 0

    def command(
        self, *arguments: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """
        Run C{docker ARGUMENTS...} against this daemon.
        """
        done = subprocess.run(
            [*self.docker, *arguments],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and done.returncode:
            raise AssertionError(f"docker {' '.join(arguments)}: {done.stderr}")
        return done

    def log(self) -> str:
        with open(self.logPath, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        """
        Stop the daemon by its process id (it stops its containerd), unmount
        what it left mounted in its directory (the network namespace file
        C{exec/netns/default} stays bound after it exits), and remove the
        directory.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for mountPoint in sorted(self.mounts(), reverse=True):
            subprocess.run(["umount", mountPoint], capture_output=True, check=False)
        leftover = self.mounts()
        if leftover:
            raise AssertionError(f"cannot unmount {leftover}; {self.directory} kept")
        shutil.rmtree(self.directory)

    def mounts(self) -> list[str]:
        """
        The mount points inside the daemon's directory.
        """
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
        return [p for p in points if p.startswith(self.directory + "/")]


class ImageTests(SynchronousTestCase):
    def setUp(self) -> None:
        if os.environ.get("UDPTIME_IMAGE_TEST") != "1":
            raise SkipTest(
                "building the container image takes a minute or more: set"
                " UDPTIME_IMAGE_TEST=1 to run it"
            )
        if os.geteuid() != 0:
            missing("a Docker daemon of the test's own needs root")
        dockerd = requirePeer("dockerd", "docker.io, the container engine")
        docker = requirePeer("docker", "docker.io, the container engine's client")
        requirePeer("mmdebstrap", "to make the base image from Debian's packages")
        self.daemon = DockerDaemon(dockerd, docker)
        self.addCleanup(self.daemon.stop)
        waitFor(self.daemon.ready, "dockerd to answer", timeout=60)

    def test_buildRunStop(self) -> None:
        """
        The image builds with no registry; as a read-only container with no
        capabilities it runs twistd as PID 1 under a numeric unprivileged
        user, answers on the port its variable gives, becomes healthy, and
        stops on C{docker stop} by its SIGTERM handler: status 0, not the
        137 of a kill once the grace period is over.
        """
        environment = dict(os.environ)
        environment["DOCKER"] = " ".join(self.daemon.docker)
        environment["PYTHON"] = sys.executable
        build = subprocess.run(
            ["sh", BUILD_SCRIPT, "--tag", TAG],
            env=environment,
            capture_output=True,
            text=True,
            timeout=900,
            stdin=subprocess.DEVNULL,
        )
        self.assertEqual(build.returncode, 0, build.stdout + build.stderr)
        self.assertEqual(
            self.daemon.command(
                "image", "inspect", "--format", "{{.Config.User}}", TAG
            ).stdout.strip(),
            USER,
        )

        port = freePort()
        name = f"udptime-test-{os.getpid()}"
        self.daemon.command(
            "run", "--detach", "--name", name,
            "--network", "host", "--read-only", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            "--health-interval", "1s", "--health-start-period", "30s",
            "--env", f"UDPTIME_PORT={port}", "--env", "UDPTIME_INTERFACE=127.0.0.1",
            TAG,
        )  # fmt: skip
        self.addCleanup(self.daemon.command, "rm", "--force", name, check=False)

        def healthy() -> bool:
            form = "{{.State.Status}} {{.State.Health.Status}}"
            inspected = self.daemon.command("inspect", "--format", form, name)
            state = inspected.stdout.split()
            if state[0] != "running":
                raise AssertionError(f"container {state}: {self.containerLog(name)}")
            return state[1] == "healthy"

        waitFor(healthy, "the container's health check", timeout=60)
        asked = subprocess.run(
            [udptimePath(), "127.0.0.1", "-p", str(port), "unix"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(asked.returncode, 0, asked.stderr)
        self.assertIn(f"127.0.0.1:{port}", asked.stdout)

        pid = self.daemon.command(
            "inspect", "--format", "{{.State.Pid}}", name
        ).stdout.strip()
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f.read().splitlines())
        self.assertEqual(status["Uid"].split()[0], USER.split(":")[0])
        self.assertEqual(status["CapEff"].strip(), "0000000000000000")
        self.assertEqual(status["NSpid"].split()[-1], "1", "twistd is PID 1")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            self.assertIn(b"/opt/udptime/bin/twistd", f.read().split(b"\0"))

        self.daemon.command("stop", "--time", "30", name)
        self.assertEqual(
            self.daemon.command(
                "inspect", "--format", "{{.State.ExitCode}}", name
            ).stdout.strip(),
            "0",
        )
        log = self.containerLog(name)
        self.assertIn(f"udptime text service listening on 127.0.0.1:{port}", log)
        self.assertIn("Received SIGTERM, shutting down.", log)
        self.assertIn("Server Shut Down.", log)
        self.checkNTS()

    def checkNTS(self) -> None:
        """
        NTS as the Kubernetes manifests configure it: the certificate, its
        key and the NTS key file mounted read-only, readable by the image's
        group only (as a Secret with C{fsGroup} and mode 0440 is), and no
        rotation by the server.  udptime's client makes a key exchange and
        gets authenticated time.
        """
        directory = tempfile.mkdtemp(prefix="udptime-image-nts-")
        self.addCleanup(shutil.rmtree, directory, True)
        tls = os.path.join(directory, "tls")
        keys = os.path.join(directory, "nts-keys")
        os.mkdir(tls)
        os.mkdir(keys)
        files = makeCertificates(tls)
        keyFile = os.path.join(keys, "nts.keys")
        subprocess.run(
            [sys.executable, "-m", "udptime.ntskeys", "new", keyFile],
            check=True,
            capture_output=True,
            timeout=60,
        )
        group = int(USER.split(":")[1])
        for path in (files.certificate, files.key, keyFile):
            os.chown(path, 0, group)
            os.chmod(path, 0o440)
        os.chmod(directory, 0o755)

        ntpPort, kePort = freePort(), freeTCPPort()
        name = f"udptime-test-nts-{os.getpid()}"
        self.daemon.command(
            "run", "--detach", "--name", name,
            "--network", "host", "--read-only", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            "--volume", f"{tls}:/etc/udptime/tls:ro",
            "--volume", f"{keys}:/etc/udptime/nts-keys:ro",
            "--env", "UDPTIME_PORT=0", "--env", "UDPTIME_INTERFACE=127.0.0.1",
            "--env", f"UDPTIME_NTP_PORT={ntpPort}",
            "--env", "UDPTIME_LOCAL_STRATUM=10",
            "--env", f"UDPTIME_NTS_KE_PORT={kePort}",
            "--env", "UDPTIME_NTS_CERTIFICATE=/etc/udptime/tls/server-chain.pem",
            "--env", "UDPTIME_NTS_PRIVATE_KEY=/etc/udptime/tls/server-key.pem",
            "--env", "UDPTIME_NTS_KEY_FILE=/etc/udptime/nts-keys/nts.keys",
            "--env", "UDPTIME_NTS_KEY_ROTATION=0",
            TAG,
        )  # fmt: skip
        self.addCleanup(self.daemon.command, "rm", "--force", name, check=False)
        waitFor(
            lambda: "udptime nts-ke service listening on" in self.containerLog(name),
            "the container's NTS-KE service",
            timeout=60,
        )
        asked = subprocess.run(
            [
                udptimePath(), "--nts", "--nts-ke-port", str(kePort),
                "--nts-ca", files.ca, "127.0.0.1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        self.assertEqual(asked.returncode, 0, asked.stderr + self.containerLog(name))
        self.assertIn(f"127.0.0.1:{ntpPort}", asked.stdout)
        self.assertIn("NTS-authenticated", asked.stdout)
        self.daemon.command("stop", "--time", "30", name)

    def containerLog(self, name: str) -> str:
        done = self.daemon.command("logs", name, check=False)
        return done.stdout + done.stderr
