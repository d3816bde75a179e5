"""
Run a command under two of the restrictions of udptime.service, as systemd
would apply them, for the tests (run as C{python hardened.py COMMAND ...}):

  - C{MemoryDenyWriteExecute=yes}: no memory both writable and executable,
    no memory made executable later (the kernel's C{PR_SET_MDWE}, which
    newer systemd uses, and which the command inherits across C{execve});
  - C{ProtectClock=yes}: the system calls of systemd's C{@clock} group
    (C{adjtimex}, C{clock_adjtime}, C{clock_settime}, C{settimeofday}) fail
    with C{EPERM}, whatever their arguments (a seccomp filter through
    libseccomp).

Exits with status 2 and a message when the kernel or libseccomp cannot
apply them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000
CLOCK_CALLS = (b"adjtimex", b"clock_adjtime", b"clock_settime", b"settimeofday")


def denyWriteExecute() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE")


def protectClock() -> None:
    seccomp = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = (ctypes.c_uint32,)
    seccomp.seccomp_rule_add.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
    )
    seccomp.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    seccomp.seccomp_load.argtypes = (ctypes.c_void_p,)
    seccomp.seccomp_release.argtypes = (ctypes.c_void_p,)
    context = seccomp.seccomp_init(SCMP_ACT_ALLOW)
    if not context:
        raise OSError("seccomp_init failed")
    try:
        for name in CLOCK_CALLS:
            number = seccomp.seccomp_syscall_resolve_name(name)
            result = seccomp.seccomp_rule_add(
                context, SCMP_ACT_ERRNO | errno.EPERM, number, 0
            )
            if result != 0:
                raise OSError(-result, f"seccomp_rule_add {name.decode()}")
        result = seccomp.seccomp_load(context)
        if result != 0:
            raise OSError(-result, "seccomp_load")
    finally:
        seccomp.seccomp_release(context)


def main() -> None:
    try:
        denyWriteExecute()
        protectClock()
    except OSError as e:
        sys.stderr.write(f"hardened: cannot restrict: {e}\n")
        raise SystemExit(2) from None
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
