"""
A real Prometheus for the metrics tests: started on a free loopback port
with a temporary configuration and data directory, scraping one target every
second, stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from tests.support import requirePeer, stopProcess

CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: udptime
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


def freeTCPPort() -> int:
    """
    A TCP port free on 127.0.0.1 right now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrometheusServer:
    """
    A Prometheus process scraping C{127.0.0.1:targetPort}.

    @ivar apiPort: the port of its HTTP API.
    """

    def __init__(self, targetPort: int) -> None:
        self.path = requirePeer("prometheus", "scrapes the metrics endpoint")
        self.directory = tempfile.mkdtemp(prefix="udptime-prometheus-")
        config = os.path.join(self.directory, "prometheus.yml")
        with open(config, "w") as f:
            f.write(CONFIG.format(port=targetPort))
        self.apiPort = freeTCPPort()
        self.logPath = os.path.join(self.directory, "log")
        with open(self.logPath, "wb") as log:
            self.process = subprocess.Popen(
                [
                    self.path,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.directory}/data",
                    f"--web.listen-address=127.0.0.1:{self.apiPort}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.directory,
            )

    def queryURL(self, expression: str) -> str:
        """
        The URL of an instant query of C{expression}.
        """
        return f"http://127.0.0.1:{self.apiPort}/api/v1/query?" + urlencode(
            {"query": expression}
        )

    def log(self) -> str:
        """
        What Prometheus wrote so far.
        """
        with open(self.logPath, errors="replace") as f:
            return f.read()

    def checkRunning(self) -> None:
        """
        @raise AssertionError: Prometheus exited.
        """
        if self.process.poll() is not None:
            raise AssertionError("prometheus exited:\n" + self.log())

    def query(self, expression: str) -> list[dict[str, Any]] | None:
        """
        The result of an instant query (blocking), or L{None} while the API
        does not answer yet.
        """
        self.checkRunning()
        try:
            with urllib.request.urlopen(self.queryURL(expression), timeout=5) as r:
                body = json.loads(r.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
        if body.get("status") != "success":
            raise AssertionError(f"query {expression!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expression: str) -> float | None:
        """
        The single value of an instant query, or L{None} when there is not
        exactly one.
        """
        result = self.query(expression)
        if result is None or len(result) != 1:
            return None
        return float(result[0]["value"][1])

    def waitForValue(
        self, expression: str, check: Callable[[float], bool], timeout: float = 60.0
    ) -> float:
        """
        Query until the value satisfies C{check}, for at most C{timeout}
        seconds; return it.
        """
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = self.value(expression)
            if last is not None and check(last):
                return last
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{expression} is {last}, still, after {timeout} s"
                )
            time.sleep(0.2)  # polling, bounded by the deadline

    def stop(self) -> None:
        """
        Stop Prometheus by its PID and remove its files.
        """
        stopProcess(self.process, 20.0)
        shutil.rmtree(self.directory, ignore_errors=True)
