"""
Packaging: a copy of the checkout installed into a fresh virtualenv with
C{pip install .}, then (after uninstalling it) with C{pip install -e .}.
Each time C{twistd --help} must list the plugin, and the installed server
and console script must work.  The copy keeps build artefacts out of the
checkout; pip's download cache keeps the installs short.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from tests.support import TwistdServer, freePort, udpQuery

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Never copied: version control, virtualenvs, and every build or test
# artefact a working checkout may hold.
IGNORED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "_trial_temp*",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    "dropin.cache",
    "results",
    # The compiled send step, built into a checkout by pip install -e.
    "*.so",
)

PIP_TIMEOUT = 600


def canCompile() -> bool:
    """
    Whether C{pip install} can build the compiled send step here: Linux, a
    C compiler, and the test interpreter's headers (a Python built by
    pyenv has them; Debian's needs C{python3-dev}).
    """
    headers = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    return (
        sys.platform == "linux"
        and shutil.which(os.environ.get("CC", "cc")) is not None
        and os.path.exists(headers)
    )


class VenvTwistd(TwistdServer):
    """
    A L{TwistdServer} running the C{twistd} of another virtualenv.
    """

    def __init__(self, twistd: str, arguments: list[str]) -> None:
        super().__init__(arguments)
        self.twistd = twistd

    def command(self) -> list[str]:
        return [self.twistd, *super().command()[1:]]


class InstallTests(SynchronousTestCase):
    """
    C{pip install .} and C{pip install -e .} in a fresh virtualenv.
    """

    def setUp(self) -> None:
        self.work = tempfile.mkdtemp(prefix="udptime-packaging-")
        self.addCleanup(shutil.rmtree, self.work, True)
        self.source = os.path.join(self.work, "udptime")
        shutil.copytree(ROOT, self.source, ignore=IGNORED, symlinks=True)
        self.venv = os.path.join(self.work, "venv")
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", self.venv],
            check=True,
            timeout=120,
        )
        self.bin = os.path.join(self.venv, "bin")

    def pip(self, *arguments: str, environment: dict[str, str] | None = None) -> str:
        """
        Run the test interpreter's pip on the new virtualenv (with the
        environment variables C{environment} set, if any).
        """
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                os.path.join(self.bin, "python"),
                "--disable-pip-version-check",
                *arguments,
            ],
            cwd=self.source,
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT,
            env=None if environment is None else {**os.environ, **environment},
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        return done.stdout

    def sendStep(self) -> str:
        """
        What the installed package says about its compiled send step:
        C{"built"}, or why it cannot be used.
        """
        return self.python(
            "from udptime import sendstep; print(sendstep.unavailable() or 'built')"
        )

    def python(self, code: str) -> str:
        """
        Run C{code} with the virtualenv's Python, from outside the source
        tree, and return what it printed, stripped.
        """
        done = subprocess.run(
            [os.path.join(self.bin, "python"), "-c", code],
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    def checkInstalled(self) -> None:
        """
        C{twistd --help} lists the plugin; the server starts and answers
        plain sockets and the installed console script.
        """
        twistd = os.path.join(self.bin, "twistd")
        done = subprocess.run(
            [twistd, "--help"], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertRegex(done.stdout, r"(?m)^\s+udptime\s+UDP time service")

        port = freePort()
        server = VenvTwistd(twistd, ["--port", str(port), "--timezone", "UTC"])
        self.addCleanup(server.cleanup)
        server.start()
        self.assertRegex(
            udpQuery(b"Hello world", "127.0.0.1", port),
            rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00\n$",
        )
        client = subprocess.run(
            [os.path.join(self.bin, "udptime"), "::1", "-p", str(port), "month", "2"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(client.returncode, 0, client.stderr)
        self.assertRegex(client.stdout, rf"^\[::1\]:{port}  February  delay ")
        self.assertEqual(server.stop(), 0)

    def installedFiles(self) -> list[str]:
        listing = self.pip("show", "--files", "udptime")
        return [line.strip() for line in listing.split("Files:", 1)[1].splitlines()]

    def test_installThenEditable(self) -> None:
        """
        A regular install ships the drop-in and never Twisted's own
        C{__init__.py} files, so uninstalling leaves C{twistd} working; an
        editable install of the same tree (setuptools' strict mode) is seen
        by C{twistd} too, and runs the tree's code.
        """
        self.pip("install", "-q", ".")
        files = self.installedFiles()
        self.assertIn("twisted/plugins/udptime_plugin.py", files)
        self.assertIn("udptime/py.typed", files)
        self.assertNotIn("twisted/plugins/__init__.py", files)
        self.assertNotIn("twisted/__init__.py", files)
        self.assertFalse([f for f in files if f.startswith("tests/")], files)
        self.assertIn("udptime/_sendstep.pyi", files)
        built = [f for f in files if re.fullmatch(r"udptime/_sendstep\..*\.so", f)]
        if canCompile():
            self.assertTrue(built, files)
            self.assertEqual(self.sendStep(), "built")
        self.checkInstalled()

        self.pip("uninstall", "-q", "-y", "udptime")
        twistd = os.path.join(self.bin, "twistd")
        done = subprocess.run(
            [twistd, "--help"], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertNotIn("udptime", done.stdout)

        self.pip("install", "-q", "-e", ".")
        self.checkInstalled()
        where = self.python(
            "import os, udptime.tap; print(os.path.realpath(udptime.tap.__file__))"
        )
        self.assertEqual(where, os.path.join(self.source, "udptime", "tap.py"))
        if canCompile():
            self.assertEqual(self.sendStep(), "built")

    def test_withoutCompiler(self) -> None:
        """
        Where the compiled send step cannot be built (here: a C compiler
        that always fails), the installation goes on without it, and the
        server works.
        """
        self.pip("install", "-q", ".", environment={"CC": "false"})
        files = self.installedFiles()
        self.assertFalse([f for f in files if f.endswith(".so")], files)
        self.assertIn("udptime._sendstep is not built", self.sendStep())
        self.checkInstalled()


class SourceDistributionTests(SynchronousTestCase):
    """
    The sdist, built from a copy of the checkout with C{python -m build}.
    """

    def test_contents(self) -> None:
        """
        The sdist holds what running the tests and the benchmarks from the
        unpacked tarball needs (the README's test command included), the
        documentation's sources, and the licence, but no build artefact.
        """
        work = tempfile.mkdtemp(prefix="udptime-sdist-")
        self.addCleanup(shutil.rmtree, work, True)
        source = os.path.join(work, "udptime")
        shutil.copytree(ROOT, source, ignore=IGNORED, symlinks=True)
        for built in ("bench/build/loadgen", "docs/_generated/benchreport/x.png"):
            os.makedirs(os.path.dirname(os.path.join(source, built)), exist_ok=True)
            open(os.path.join(source, built), "w").close()
        done = subprocess.run(
            [sys.executable, "-m", "build", "--sdist", "--outdir", work, source],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT,
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        [archive] = [name for name in os.listdir(work) if name.endswith(".tar.gz")]
        with tarfile.open(os.path.join(work, archive)) as sdist:
            names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
        for needed in [
            "LICENSE",
            "README.rst",
            "udptime/py.typed",
            "udptime/_sendstep.c",
            "udptime/_sendstep.pyi",
            "setup.py",
            "twisted/plugins/udptime_plugin.py",
            "tests/__init__.py",
            "tests/support.py",
            "tests/install-peers.sh",
            "bench/run.py",
            "bench/loadgen.c",
            "contrib/systemd/udptime.service",
            "contrib/grafana/udptime.json",
            "docs/operations-metrics.rst",
            "deploy/container.py",
            "deploy/kubernetes/deployment.yaml",
            "docs/_ext/benchreport.py",
            "docs/data/throughput.json",
            "NEWS.rst",
            "docs/conf.py",
            "docs/_ext/optionlists.py",
            "docs/examples/udptime.tac",
        ]:
            self.assertIn(needed, names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertFalse(
            [
                n
                for n in names
                if n.startswith(("bench/build", "docs/_build", "docs/_generated"))
                or "__pycache__" in n
            ],
            sorted(names),
        )


class IgnoredFilesTests(SynchronousTestCase):
    """
    Build artefacts are never committed.
    """

    def test_gitignore(self) -> None:
        """
        C{.gitignore} covers the plugin cache, build trees, egg-info and
        the virtualenv the README creates.
        """
        with open(os.path.join(ROOT, ".gitignore")) as f:
            patterns = set(f.read().split())
        for pattern in ("dropin.cache", "build/", "*.egg-info/", ".venv/", "dist/"):
            self.assertIn(pattern, patterns)

    def test_notTracked(self) -> None:
        """
        No tracked file is a build artefact (checked when the tests run in a
        git checkout).
        """
        if not os.path.isdir(os.path.join(ROOT, ".git")) or not shutil.which("git"):
            self.skipTest("not a git checkout (an unpacked sdist?)")
        done = subprocess.run(
            ["git", "ls-files"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        artefact = re.compile(
            r"(^|/)(dropin\.cache|build/|dist/|[^/]*\.egg-info/|__pycache__/|\.venv/)"
        )
        self.assertEqual(
            [f for f in done.stdout.splitlines() if artefact.search(f)], []
        )
