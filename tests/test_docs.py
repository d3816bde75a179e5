"""
The documentation: the README and NEWS are valid reST, every command-line
option is in the manual's option lists, and the manual's examples run.

Nothing here builds the manual (CI does, with Sphinx); these tests need
docutils only, which the C{test} extra installs.
"""

from __future__ import annotations

import configparser
import importlib.util
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import TwistdServer, freePort
from udptime import cli, tap

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.rst"
NEWS = ROOT / "NEWS.rst"


def loadExtension(name: str) -> ModuleType:
    """
    Import the documentation's extension C{docs/_ext/NAME.py}.
    """
    path = DOCS / "_ext" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"udptime_docs_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def strictProblems(path: Path) -> list[str]:
    """
    What docutils reports about the reST file C{path} at level "info" and
    above, as PyPI's renderer and C{python -m docutils --strict} would see
    it.
    """
    from docutils.core import publish_doctree
    from docutils.utils import SystemMessage

    warnings = io.StringIO()
    try:
        publish_doctree(
            path.read_text(encoding="utf-8"),
            source_path=str(path),
            settings_overrides={
                "halt_level": 5,
                "report_level": 1,
                "warning_stream": warnings,
                "file_insertion_enabled": False,
                "raw_enabled": False,
            },
        )
    except SystemMessage as error:
        return [str(error)]
    return [
        line
        for line in warnings.getvalue().splitlines()
        if re.search(r"\((INFO|WARNING|ERROR|SEVERE)/", line)
    ]


class ReadmeTests(SynchronousTestCase):
    """
    The README is the package's long description and the landing page.
    """

    def test_validRestructuredText(self) -> None:
        """
        The README is reST without a single warning, not even an info
        message (duplicate implicit targets and the like).
        """
        self.assertEqual(strictProblems(README), [])

    def test_strictCommandLine(self) -> None:
        """
        C{python -m docutils --strict} accepts the README, as it would
        accept the package's long description.
        """
        done = subprocess.run(
            [sys.executable, "-m", "docutils", "--strict", str(README), os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)

    def test_longDescription(self) -> None:
        """
        The package's long description is the README, as reST.
        """
        config = configparser.ConfigParser()
        config.read(ROOT / "setup.cfg")
        self.assertEqual(config["metadata"]["long_description"], "file: README.rst")
        self.assertEqual(
            config["metadata"]["long_description_content_type"], "text/x-rst"
        )

    def test_short(self) -> None:
        """
        The README is a landing page, not the manual.
        """
        self.assertLessEqual(len(README.read_text(encoding="utf-8").splitlines()), 200)

    def test_commands(self) -> None:
        """
        The README's first command installs and starts the server, and its
        second is the test command CI runs, word for word.
        """
        readme = README.read_text(encoding="utf-8")
        self.assertIn(
            "\n    python3 -m venv .venv && .venv/bin/pip install . && "
            ".venv/bin/twistd -n udptime\n",
            readme,
        )
        ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
        [command] = [
            line
            for line in ci.splitlines()
            if line.startswith("sh tests/install-peers.sh")
        ]
        self.assertIn(f"\n    {command}\n", readme)

    def test_linksToTheManual(self) -> None:
        """
        Every relative link of the README names a file of the checkout.
        """
        readme = README.read_text(encoding="utf-8")
        targets = re.findall(r"<([^<>:]+\.rst)>`_", readme)
        self.assertIn("docs/server.rst", targets)
        for target in targets:
            self.assertTrue((ROOT / target).is_file(), target)


class NewsTests(SynchronousTestCase):
    """
    NEWS.rst, which the manual includes.
    """

    def test_validRestructuredText(self) -> None:
        """
        NEWS is reST without a warning, and starts with the unreleased
        changes.
        """
        self.assertEqual(strictProblems(NEWS), [])
        self.assertIn("\nUnreleased\n==========\n", NEWS.read_text(encoding="utf-8"))


def helpOptions(helpText: str, optionLine: str) -> set[str]:
    """
    The option names (C{-p}, C{--port}) on the lines of C{helpText} that
    match C{optionLine}: the option column of a C{--help}.
    """
    names = set()
    for line in helpText.splitlines():
        match = re.match(optionLine, line)
        if match:
            names.update(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", match.group(0)))
    return names


def documentedOptions(optionsText: list[str]) -> set[str]:
    """
    The option names in the signatures of the C{option} directives of the
    reST C{optionsText}.
    """
    names = set()
    for line in optionsText:
        if line.startswith(".. option:: "):
            names.update(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", line))
    return names


class OptionListTests(SynchronousTestCase):
    """
    The manual lists the options of C{twistd udptime} and C{udptime} with
    the directives of C{docs/_ext/optionlists.py}, from the code that parses
    them: every option in C{--help} is documented.
    """

    def setUp(self) -> None:
        self.extension = loadExtension("optionlists")

    def test_serverOptions(self) -> None:
        """
        Every option of C{twistd udptime --help} (its option column, short
        and long names) is in the list the server page shows, with a
        description.
        """
        usage = tap.Options().getUsage(width=200)
        expected = helpOptions(usage, r"^\s{2}(?:-\w, |\s{4})--[\w-]+")
        self.assertIn("--ntp-port", expected)
        self.assertIn("-p", expected)
        self.assertIn("--allow", expected)
        text = self.extension.optionsText(
            "twistd udptime", self.extension.usageOptions(tap.Options)
        )
        self.assertEqual(documentedOptions(text), expected)
        self.assertNotIn("(No description.)", "\n".join(text))

    def test_clientOptions(self) -> None:
        """
        Every option and argument of C{udptime --help} is in the list the
        client page shows, with a description.
        """
        parser = cli.buildParser()
        helpText = parser.format_help()
        expected = helpOptions(helpText, r"^\s{2}-[^\s].*?(?=\s{2}|$)")
        self.assertIn("--protocol", expected)
        self.assertIn("-j", expected)
        options = self.extension.argparseOptions(parser)
        text = self.extension.optionsText("udptime", options)
        self.assertEqual(documentedOptions(text) - {"HOST", "WORDS"}, expected)
        positional = {name for option in options for name in option.names}
        self.assertTrue({"HOST", "WORDS"} <= positional)
        self.assertNotIn("(No description.)", "\n".join(text))

    def test_pagesUseTheDirectives(self) -> None:
        """
        The server and client pages show the generated lists.
        """
        self.assertIn(
            ".. usage-options:: udptime.tap.Options\n   :program: twistd udptime\n",
            (DOCS / "server.rst").read_text(encoding="utf-8"),
        )
        self.assertIn(
            ".. argparse-options:: udptime.cli.buildParser\n   :program: udptime\n",
            (DOCS / "client.rst").read_text(encoding="utf-8"),
        )

    def test_defaultsAndPlaceholders(self) -> None:
        """
        An option's default and the placeholder of its value are shown.
        """
        text = "\n".join(
            self.extension.optionsText(
                "twistd udptime", self.extension.usageOptions(tap.Options)
            )
        )
        self.assertIn(".. option:: -p <port>, --port <port>\n", text)
        self.assertIn("Default: ``5000``.", text)
        self.assertIn(".. option:: --allow <rule>\n", text)

    def test_escaped(self) -> None:
        """
        Help text that would mean something in reST is shown as written.
        """
        option = self.extension.Option(("--x",), "", "a *b* `c` d_ |e|")
        [line] = [
            line
            for line in self.extension.optionsText("p", [option])
            if line.startswith("   ")
        ]
        self.assertEqual(line, r"   A \*b\* \`c\` d\_ \|e\|.")


class TacExampleTests(SynchronousTestCase):
    """
    The C{.tac} file of the manual's page on embedding runs with C{twistd},
    and the client script beside it gets the time from it.
    """

    def test_embeddingPageShowsThem(self) -> None:
        """
        The page includes the files these tests run.
        """
        page = (DOCS / "embedding.rst").read_text(encoding="utf-8")
        self.assertIn(".. literalinclude:: examples/udptime.tac", page)
        self.assertIn(".. literalinclude:: examples/ask.py", page)

    def test_tacAnswers(self) -> None:
        """
        C{twistd -n -y udptime.tac} serves the text protocol and NTP (at
        the local stratum the file sets), C{ask.py} gets both times with
        the client codecs, and SIGTERM stops the server after a clean
        shutdown.
        """
        textPort, ntpPort = freePort(), freePort()
        while ntpPort == textPort:
            ntpPort = freePort()
        work = tempfile.mkdtemp(prefix="udptime-tac-")
        self.addCleanup(shutil.rmtree, work, True)
        tac = (DOCS / "examples" / "udptime.tac").read_text(encoding="utf-8")
        # The file's own ports are fixed; the test's must be free ones.
        for name, port in [("TEXT_PORT", textPort), ("NTP_PORT", ntpPort)]:
            tac, found = re.subn(rf"(?m)^{name} = \d+$", f"{name} = {port}", tac)
            self.assertEqual(found, 1, name)
        tacPath = os.path.join(work, "udptime.tac")
        with open(tacPath, "w", encoding="utf-8") as f:
            f.write(tac)

        server = TwistdServer([], twistdArguments=["-y", tacPath], plugin=None)
        self.addCleanup(server.cleanup)
        server.start(listeners=2)
        done = subprocess.run(
            [
                sys.executable,
                str(DOCS / "examples" / "ask.py"),
                "127.0.0.1",
                str(textPort),
                str(ntpPort),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        lines = done.stdout.splitlines()
        self.assertEqual(len(lines), 2, done.stdout)
        self.assertRegex(lines[0], r"^text: \d{4}-\d\d-\d\dT[\d:.]+\+00:00  delay ")
        self.assertRegex(lines[1], r"^ntp: \d{4}-\d\d-\d\dT[\d:.]+\+00:00  delay ")
        self.assertTrue(lines[1].endswith("  stratum 10"), lines[1])
        # twistd ends an application on SIGTERM by raising the signal again
        # once it has shut down (twistd udptime's top service exits 0).
        self.assertEqual(server.stop(), -signal.SIGTERM, server.log())
        self.assertIn("Server Shut Down.", server.log())


class NewProtocolExampleTests(TestCase):
    """
    The development page's smallest new protocol, C{docs/examples/unixtime.py},
    is a working service entry: its server answers over a real socket, with
    the policy its profile gives, and its client codec reads the answer.
    """

    def setUp(self) -> None:
        path = DOCS / "examples" / "unixtime.py"
        spec = importlib.util.spec_from_file_location("udptime_docs_unixtime", path)
        assert spec is not None and spec.loader is not None
        self.example = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.example)

    def test_developmentPageShowsIt(self) -> None:
        """
        The page includes the file this test runs.
        """
        page = (DOCS / "development.rst").read_text(encoding="utf-8")
        self.assertIn(".. literalinclude:: examples/unixtime.py", page)

    async def test_answers(self) -> None:
        """
        A server made by the entry answers an empty datagram with the Unix
        time, which the entry's client codec reads; the entry's policy is
        a loop-guarded one, as for any service that answers any datagram.
        """
        from twisted.internet import reactor

        from udptime.client import query

        service = self.example.SERVICE
        server = service.makeServer({"verbose": False})
        server.policy = service.policy()
        port = reactor.listenUDP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        before = int(time.time())
        result = await query(
            reactor,
            "127.0.0.1",
            service.clientCodec(),
            port=port.getHost().port,
            timeout=5.0,
        )
        self.assertEqual(result.protocol, "unixtime")
        self.assertRegex(result.reply, rb"^\d+\n$")
        assert result.serverTime is not None
        self.assertGreaterEqual(result.serverTime, before)
        self.assertLessEqual(result.serverTime, int(time.time()))
        self.assertIn(7, server.policy.loopPorts)
        self.assertEqual(server.counters.answered, 1)
