"""
Tests for L{udptime.services}: the one table of services, and what the
plugin's options, service tree and policies, and the client's codecs,
derive from it.
"""

from __future__ import annotations

import re
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.test_security import documentedFactors
from udptime.policy import LOOPED, ReplyMemory
from udptime.server import UDPServerProtocol
from udptime.services import SERVICES
from udptime.tap import Options, makeService

NOW = 1_800_000_000.0


def parse(*arguments: str) -> Options:
    options = Options()
    options.parseOptions(list(arguments))
    return options


class TableTests(SynchronousTestCase):
    """
    Each entry of L{SERVICES} is complete and consistent.
    """

    def test_names(self) -> None:
        """
        The table holds udptime's five services, each under its name.
        """
        self.assertEqual(list(SERVICES), ["text", "ntp", "time", "daytime", "echo"])
        for name, service in SERVICES.items():
            self.assertEqual(service.name, name)

    def test_servers(self) -> None:
        """
        Each entry makes its service's protocol, which logs and counts
        under the service's name.
        """
        options = parse()
        for name, service in SERVICES.items():
            with self.subTest(name=name):
                protocol = service.makeServer(options)
                self.assertIsInstance(protocol, UDPServerProtocol)
                self.assertEqual(protocol.serviceName, name)

    def test_codecs(self) -> None:
        """
        Each entry makes its protocol's client codec, which asks the
        standard port; words are refused by a protocol whose request takes
        none.
        """
        for name, service in SERVICES.items():
            with self.subTest(name=name):
                codec = service.clientCodec()
                self.assertEqual(codec.name, name)
                self.assertEqual(codec.defaultPort, service.standardPort)
                if service.takesWords:
                    service.clientCodec("month 3")
                else:
                    self.assertRaises(ValueError, service.clientCodec, "month 3")

    def test_amplification(self) -> None:
        """
        Each entry's amplification note states the factor the README's
        security section documents (and tests/test_security.py measures).
        """
        documented = documentedFactors()
        for name, service in SERVICES.items():
            with self.subTest(name=name):
                found = re.search(r"\(factor (\d+\.\d\d)\)$", service.amplification)
                assert found is not None, service.amplification
                self.assertEqual(float(found.group(1)), documented[name])

    def test_noReactor(self) -> None:
        """
        Importing the table imports no reactor (the client and the twistd
        plugin scan import it before a reactor is chosen).
        """
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, udptime.services; "
                "sys.exit('twisted.internet.reactor' in sys.modules)",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)


class DerivedTests(SynchronousTestCase):
    """
    The plugin's options, service tree and policies come from the table.
    """

    def test_portOptions(self) -> None:
        """
        Each service's port option exists, with the entry's default; the
        services with a port run.
        """
        options = parse()
        for service in SERVICES.values():
            self.assertEqual(options[service.portOption], service.defaultPort)
        self.assertEqual(options.enabledPorts(), {"text": 5000})
        options = parse(
            *(f"--{s.portOption}=1{i}00" for i, s in enumerate(SERVICES.values()))
        )
        self.assertEqual(
            options.enabledPorts(),
            {name: int(f"1{i}00") for i, name in enumerate(SERVICES)},
        )

    def test_tree(self) -> None:
        """
        L{makeService} runs one listener per enabled service, serving the
        protocol its entry makes, with the policy of its profile.
        """
        ports = [f"--{s.portOption}=1{i}00" for i, s in enumerate(SERVICES.values())]
        top = makeService(parse(*ports))
        for name in SERVICES:
            with self.subTest(name=name):
                protocol = top.getServiceNamed(name).protocol  # type: ignore[attr-defined]
                self.assertEqual(protocol.serviceName, name)
                profile = SERVICES[name].profile
                policy = protocol.policy
                self.assertEqual(
                    policy.admit(("192.0.2.1", 7), NOW) is LOOPED, profile.loopGuard
                )
                self.assertEqual(
                    isinstance(policy.replyMemory, ReplyMemory), profile.replyMemory
                )
                assert policy.limiter is not None
                self.assertEqual(policy.limiter.kodInterval > 0, profile.kissOfDeath)
