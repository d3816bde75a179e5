"""
udptime's NTS-KE service on a free loopback port, for tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import reactor

from tests.certificates import CertificateFiles
from udptime.ntscookie import CookieKeys
from udptime.ntskeserver import NTSKEService, ntsKEService


async def startKEService(
    keys: CookieKeys,
    files: CertificateFiles,
    addCleanup: Callable[..., object] | None = None,
    **settings: Any,
) -> tuple[NTSKEService, int]:
    """
    Start an NTS-KE service with C{keys} and the certificate of C{files} on
    127.0.0.1 (unless C{settings} name an interface), port 0; the service
    and its port.  With C{addCleanup} (a test's), the service is stopped
    after the test.
    """
    settings.setdefault("interface", "127.0.0.1")
    service = ntsKEService(reactor, 0, files.certificate, files.key, keys, **settings)
    service.startService()
    if addCleanup is not None:
        addCleanup(service.stopService)
    listening = service._waitingForPort
    assert listening is not None
    port = await listening
    return service, port.getHost().port
