"""A small seccomp filter for the sandbox: memory the code could fill outside its capped tmpfs.

`memfd_create` (and `memfd_secret`) files and System V shared memory (`shmget`) live in RAM
but on no filesystem: neither the session's tmpfs size nor RLIMIT_AS (once unmapped) bounds
them. They are refused with ENOSYS, as on a kernel without them, so libraries fall back.
Only x86_64 is covered (elsewhere no filter is installed; see docs/code_interpreter.md);
on x86_64 the other system call ABIs (i386, x32) are refused as a whole, so the numbers
below can't be reached under other names.
"""

from __future__ import annotations

import errno
import os
import platform
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
REFUSED = {"shmget": 29, "memfd_create": 319, "memfd_secret": 447}  # x86_64 numbers

_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000
_NR, _ARCH = 0, 4  # offsets in struct seccomp_data


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program() -> bytes:
    """The filter as classic BPF, what `bwrap --seccomp FD` reads."""
    numbers = list(REFUSED.values())
    deny = 4 + len(numbers) + 1  # index of the final "refuse" instruction
    insns = [_insn(_LD_W_ABS, _ARCH), _insn(_JEQ_K, AUDIT_ARCH_X86_64, 0, deny - 2),
             _insn(_LD_W_ABS, _NR), _insn(_JGE_K, X32_SYSCALL_BIT, deny - 4, 0)]
    for number in numbers:
        insns.append(_insn(_JEQ_K, number, deny - len(insns) - 1, 0))
    insns += [_insn(_RET_K, _ALLOW), _insn(_RET_K, _ERRNO | errno.ENOSYS)]
    return b"".join(insns)


def supported() -> bool:
    return platform.machine() == "x86_64"


def program_fd() -> int | None:
    """A readable fd holding the program (for bwrap's --seccomp), or None where unsupported.
    The caller passes it to the child and closes it."""
    if not supported():
        return None
    fd = os.memfd_create("assistd-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
