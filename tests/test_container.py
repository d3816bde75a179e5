"""
Tests for the container image's entry point and health check
(C{deploy/container.py}): C{UDPTIME_*} variables to options, checked with a
stand-in twistd that prints its command line, and with the real one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from tests.support import (
    CONTAINER_SCRIPT,
    containerScript,
    freePort,
    udpQuery,
    waitFor,
)

CONTAINER = CONTAINER_SCRIPT

FAKE_TWISTD = """\
import json, sys
json.dump(sys.argv, sys.stdout)
"""


container = containerScript()


def cleanEnvironment(**variables: str) -> dict[str, str]:
    """
    This process's environment without its C{UDPTIME_*} variables, plus
    C{variables}.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("UDPTIME_")}
    environment.update(variables)
    return environment


class EntryPointTests(SynchronousTestCase):
    """
    C{container.py run} with a stand-in twistd that prints its arguments.
    """

    def setUp(self) -> None:
        directory = tempfile.mkdtemp(prefix="udptime-container-")
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", directory], check=False))
        self.twistd = os.path.join(directory, "twistd")
        with open(self.twistd, "w") as f:
            f.write(f"#!{sys.executable}\n{FAKE_TWISTD}")
        os.chmod(self.twistd, 0o755)

    def entry(
        self, *arguments: str, **variables: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, CONTAINER, "run", *arguments],
            env=cleanEnvironment(UDPTIME_TWISTD=self.twistd, **variables),
            capture_output=True,
            text=True,
            timeout=30,
        )

    def command(self, *arguments: str, **variables: str) -> list[str]:
        done = self.entry(*arguments, **variables)
        self.assertEqual(done.returncode, 0, done.stderr)
        words: list[str] = json.loads(done.stdout)
        return words

    def test_defaults(self) -> None:
        """
        With no variables: twistd in the foreground, no pid file, the log
        on standard output, udptime with its defaults.
        """
        self.assertEqual(
            self.command(),
            [self.twistd, "-n", "--pidfile=", "--logfile=-", "udptime"],
        )

    def test_everyOption(self) -> None:
        """
        Every variable of a one-value option gives that option, in the
        table's order; the command's own arguments come last.
        """
        variables = {
            container.variableName(option): f"v{i}"
            for i, option in enumerate(container.VALUE_OPTIONS)
        }
        words = self.command("--rate", "5", **variables)
        self.assertEqual(
            words[5:],
            [f"--{o}=v{i}" for i, o in enumerate(container.VALUE_OPTIONS)]
            + ["--rate", "5"],
        )
        self.assertIn("--ntp-port=v2", words)
        self.assertIn("--nts-key-file=v19", words)
        self.assertIn("--nts-key-rotation=v20", words)
        self.assertIn("--metrics-port=v23", words)

    def test_everyValueOptionHasItsVariable(self) -> None:
        """
        Every option of C{twistd udptime} that takes a value has its
        variable (or its list variable), but those only udptime gives.
        """
        from udptime.tap import Options

        names = {parameter[0] for parameter in Options.optParameters}
        covered = set(container.VALUE_OPTIONS) | set(container.LIST_OPTIONS)
        self.assertEqual(names - covered, set(container.INTERNAL_OPTIONS))
        methods = {n for n in covered if hasattr(Options, "opt_" + n.replace("-", "_"))}
        self.assertEqual(covered - names - methods, set())

    def test_lists(self) -> None:
        """
        C{UDPTIME_ALLOW}, C{UDPTIME_DENY} and C{UDPTIME_UPSTREAM} give one
        option per word.
        """
        words = self.command(
            UDPTIME_ALLOW="ntp=10.0.0.0/8  2001:db8::/32",
            UDPTIME_DENY="192.0.2.66",
            UDPTIME_UPSTREAM="ntp1.example ntp2.example",
        )
        self.assertEqual(
            words[5:],
            [
                "--allow=ntp=10.0.0.0/8",
                "--allow=2001:db8::/32",
                "--deny=192.0.2.66",
                "--upstream=ntp1.example",
                "--upstream=ntp2.example",
            ],
        )

    def test_flagsAndArgs(self) -> None:
        """
        C{UDPTIME_VERBOSE}, C{UDPTIME_KERNEL_TIMESTAMPS} (both ways) and
        the shell-quoted words of C{UDPTIME_ARGS}, before the command's
        arguments; empty variables count as unset.
        """
        words = self.command(
            "--burst",
            "8",
            UDPTIME_VERBOSE="yes",
            UDPTIME_KERNEL_TIMESTAMPS="0",
            UDPTIME_ARGS="--timezone 'Europe/Paris' --refid=GPS",
            UDPTIME_PORT="",
        )
        self.assertEqual(
            words[5:],
            [
                "--verbose",
                "--no-kernel-timestamps",
                "--timezone",
                "Europe/Paris",
                "--refid=GPS",
                "--burst",
                "8",
            ],
        )
        self.assertIn(
            "--kernel-timestamps", self.command(UDPTIME_KERNEL_TIMESTAMPS="1")
        )

    def test_serviceLinkNamesIgnored(self) -> None:
        """
        The variables Kubernetes makes for a Service called C{udptime} are
        not taken for options.
        """
        words = self.command(
            UDPTIME_SERVICE_HOST="10.0.0.5",
            UDPTIME_SERVICE_PORT="5000",
            UDPTIME_PORT_5000_UDP="udp://10.0.0.5:5000",
            UDPTIME_PORT_5000_UDP_ADDR="10.0.0.5",
        )
        self.assertEqual(words[5:], [])

    def assertRefused(self, message: str, *arguments: str, **variables: str) -> None:
        done = self.entry(*arguments, **variables)
        self.assertEqual(done.returncode, 2)
        self.assertEqual(done.stdout, "", "twistd must not run")
        self.assertEqual(done.stderr.count("\n"), 1, done.stderr)
        self.assertIn(message, done.stderr)

    def test_unknownVariable(self) -> None:
        """
        A misspelt variable is refused, not ignored.
        """
        self.assertRefused(
            "udptime container: unknown variable UDPTIME_NTP_PROT",
            UDPTIME_NTP_PROT="123",
        )

    def test_serviceLinkValue(self) -> None:
        """
        A Service called C{udptime-ntp} sets C{UDPTIME_NTP_PORT} to a URL in
        every pod that has service links: refused, with what to do.
        """
        self.assertRefused(
            "looks like a Kubernetes service link, not a value: set"
            " enableServiceLinks: false",
            UDPTIME_NTP_PORT="udp://10.0.0.7:123",
        )

    def test_badFlagAndQuoting(self) -> None:
        self.assertRefused(
            "UDPTIME_VERBOSE='MAYBE': give 1 or 0", UDPTIME_VERBOSE="MAYBE"
        )
        self.assertRefused("UDPTIME_ARGS: No closing quotation", UDPTIME_ARGS="'x")

    def test_usage(self) -> None:
        done = subprocess.run(
            [sys.executable, CONTAINER, "start"], capture_output=True, text=True
        )
        self.assertEqual(done.returncode, 2)
        self.assertIn("usage: container.py run", done.stderr)


class OptionValueTests(SynchronousTestCase):
    """
    L{container.optionValue} reads options as twistd accepts them.
    """

    def test_forms(self) -> None:
        value = container.optionValue
        self.assertEqual(value(["--port", "6000"], "port", "p"), "6000")
        self.assertEqual(value(["--port=6000"], "port", "p"), "6000")
        self.assertEqual(value(["-p", "6000"], "port", "p"), "6000")
        self.assertEqual(value(["-p6000"], "port", "p"), "6000")
        self.assertEqual(value(["--port=1", "-p", "2"], "port", "p"), "2")
        self.assertIsNone(value(["--ntp-port", "123"], "port", "p"))
        self.assertEqual(value(["--ntp-port", "123"], "ntp-port"), "123")
        self.assertIsNone(value(["--verbose"], "metrics-port"))

    def test_udpCheckCommand(self) -> None:
        """
        The health check asks the text service on loopback, or the NTP
        service when the text service is off, or the address listened on.
        """
        check = container.udpCheckCommand
        self.assertEqual(
            check([], "udptime"),
            ["udptime", "-P", "text", "-p", "5000", "-t", "2", "-r", "2", "127.0.0.1"],
        )
        self.assertEqual(
            check(["--port=0", "--ntp-port", "123", "-i", "::1"], "u")[1:5]
            + check(["--port=0", "--ntp-port", "123", "-i", "::1"], "u")[-1:],
            ["-P", "ntp", "-p", "123", "::1"],
        )
        self.assertRaises(LookupError, check, ["--port", "0"], "u")


class RealServerTests(SynchronousTestCase):
    """
    C{container.py run} and C{health} with the real twistd.
    """

    def start(self, **variables: str) -> subprocess.Popen[bytes]:
        directory = tempfile.mkdtemp(prefix="udptime-container-")
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", directory], check=False))
        self.logPath = os.path.join(directory, "stdout")
        with open(self.logPath, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, CONTAINER, "run"],
                env=cleanEnvironment(**variables),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )

        def stop() -> None:
            if process.poll() is None:
                process.kill()
                process.wait()

        self.addCleanup(stop)
        listening = variables.get("UDPTIME_PORT", "5000") != "0"
        count = int(listening) + int("UDPTIME_NTP_PORT" in variables)
        waitFor(lambda: self.log().count("service listening on") >= count, "listening")
        return process

    def log(self) -> str:
        with open(self.logPath, errors="replace") as f:
            return f.read()

    def health(self, pid: int, **variables: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, CONTAINER, "health", "--pid", str(pid)],
            env=cleanEnvironment(**variables),
            capture_output=True,
            text=True,
            timeout=30,
        )

    def test_serveHealthStop(self) -> None:
        """
        The entry point becomes twistd (same process), which serves the
        port its variables say, logs to standard output, passes the UDP
        health check, and stops on SIGTERM with status 0.
        """
        port = freePort()
        process = self.start(UDPTIME_PORT=str(port), UDPTIME_INTERFACE="127.0.0.1")
        with open(f"/proc/{process.pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
        self.assertIn(b"udptime", words)
        self.assertTrue(any(w.endswith(b"twistd") for w in words), words)
        self.assertRegex(udpQuery(b"unix", "127.0.0.1", port), rb"^\d+\.\d{6}\n$")

        done = self.health(process.pid)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(f"127.0.0.1:{port}", done.stdout)
        done = self.health(process.pid, UDPTIME_HEALTHCHECK="healthz")
        self.assertEqual(done.returncode, 1)
        self.assertIn("the server has no --metrics-port", done.stderr)

        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(15), 0)
        self.assertIn("Server Shut Down.", self.log())

    def test_healthNTP(self) -> None:
        """
        With the text service off, the health check asks NTP; a server
        that does not answer is unhealthy.
        """
        port = freePort()
        process = self.start(
            UDPTIME_PORT="0",
            UDPTIME_NTP_PORT=str(port),
            UDPTIME_INTERFACE="127.0.0.1",
            UDPTIME_LOCAL_STRATUM="10",
        )
        done = self.health(process.pid)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("stratum 10", done.stdout)
        process.send_signal(signal.SIGSTOP)  # alive, but answers nothing
        self.addCleanup(process.send_signal, signal.SIGCONT)
        done = self.health(process.pid)
        self.assertEqual(done.returncode, 1)
        self.assertIn("no reply", done.stderr)

    def test_noServer(self) -> None:
        done = self.health(os.getpid())
        self.assertEqual(done.returncode, 1)
        self.assertIn("no running twistd udptime process", done.stderr)
