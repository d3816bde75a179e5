"""
The one thing setup.cfg cannot say: udptime's optional C extension, the
compiled send step of NTP replies (udptime/_sendstep.c, see
udptime.sendstep).  Where it cannot be compiled (no C compiler, no Python
headers, not Linux), the installation goes on without it and udptime sends
with its Python step.
"""

import sys

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "udptime._sendstep",
            ["udptime/_sendstep.c"],
            optional=True,
        )
    ]
    if sys.platform == "linux"
    else [],
)
