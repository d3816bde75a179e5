"""
Hypothesis settings of the NTS property tests: C{UDPTIME_FUZZ_EXAMPLES}
examples per property (as in C{tests/test_fuzz.py}), a small number by
default so that the suite stays quick; set it high for a long run::

    UDPTIME_FUZZ_EXAMPLES=20000 python -m pytest -q tests/test_nts.py
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("UDPTIME_FUZZ_EXAMPLES", "300"))
"""Examples per property."""

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
"""The settings of each property."""
