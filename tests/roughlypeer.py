"""
The roughly peer (PyPI C{roughly[cli]}, a Roughtime client and server in
Python 3.12+), which C{tests/install-peers.sh} installs into a virtualenv of
its own: where it is, and running it.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import tempfile
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support import freePort, missing, waitFor
from udptime import roughtime as rt


def roughlyVenv() -> str:
    """
    The virtualenv C{tests/install-peers.sh} puts roughly in.
    """
    default = os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "udptime-peers",
        "roughly-venv",
    )
    return os.environ.get("UDPTIME_ROUGHLY_VENV") or default


def roughlyPath() -> str:
    """
    The C{roughly} program, or skip (fail under C{UDPTIME_REQUIRE_PEERS=1}).
    """
    path = os.path.join(roughlyVenv(), "bin", "roughly")
    if not os.access(path, os.X_OK):
        missing(
            f"roughly is not installed in {roughlyVenv()}: run tests/install-peers.sh"
        )
    return path


def roughlyPython() -> str:
    roughlyPath()
    return os.path.join(roughlyVenv(), "bin", "python")


LIBRARY_QUERY = """
import asyncio, base64, sys
import roughly.client, roughly.errors
host, port, key, versions = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
versions = tuple(int(v, 0) for v in versions.split(","))
key = base64.b64decode(key)
async def main():
    query = roughly.client.send_request(host, port, key, versions=versions)
    return await asyncio.wait_for(query, 2)
try:
    response = asyncio.run(main())
except roughly.errors.RoughtimeError as e:
    print("rejected", type(e).__name__, e)
    sys.exit(1)
print("verified", response.signed_response.midpoint, response.version)
"""
"""A script for roughly's Python: one verified query offering given versions."""


class RoughlyServer:
    """
    C{roughly server run} on a free port of 127.0.0.1, with a key made for
    the test.

    @ivar port: its port.
    @ivar publicKey: its long-term public key.
    """

    def __init__(self, grease: float | None = None) -> None:
        """
        @param grease: the fraction of responses it greases; L{None} for
            C{--no-grease}.
        """
        self.grease = grease
        self.seed = os.urandom(32)
        key = Ed25519PrivateKey.from_private_bytes(self.seed)
        self.publicKey = key.public_key().public_bytes_raw()
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)

    def start(self) -> RoughlyServer:
        """
        Start the server and wait (bounded) until it answers a request.
        """
        self.port = freePort()
        command = [
            roughlyPath(),
            "server",
            "run",
            "--host",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--private-key",
            base64.b64encode(self.seed).decode(),
        ]
        if self.grease is None:
            command.append("--no-grease")
        else:
            command += ["--grease-probability", str(self.grease)]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        waitFor(self._answers, "roughly's server to answer", timeout=30)
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"roughly's server exited: {self.output()}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            sock.sendto(
                rt.buildRequest(self.publicKey).packet, ("127.0.0.1", self.port)
            )
            try:
                sock.recvfrom(2048)
            except TimeoutError:
                return False
        return True

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        """
        Stop the server (by its PID) and wait for it.
        """
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.log.close()


def blockingQuery(
    port: int, publicKey: bytes, versions: tuple[int, ...] = (1,), timeout: float = 2.0
) -> tuple[rt.ClientRequest, bytes]:
    """
    Send one request to 127.0.0.1:C{port}; the request and the first
    response.

    @raise TimeoutError: no response in C{timeout} seconds.
    """
    request = rt.buildRequest(publicKey, versions)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(request.packet, ("127.0.0.1", port))
        sock.settimeout(timeout)
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data, addr = sock.recvfrom(65535)
            if addr[1] == port:
                return request, data
