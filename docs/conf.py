"""
Sphinx configuration of udptime's documentation.
"""

from __future__ import annotations

import os
import sys

# Local extensions, docs/_ext/.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext"))

project = "udptime"
author = "udptime's authors"
copyright = "udptime's authors"
root_doc = "index"
exclude_patterns = ["_build", "_generated/**"]
extensions: list[str] = []

# The benchmark's published results (docs/data/) as tables and charts.
extensions.append("benchreport")
