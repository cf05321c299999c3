"""Return freed memory to the operating system promptly (glibc only).

A state-of-the-world push builds one large response per proxy; with glibc's
default, the threshold above which allocations are mapped (and unmapped when
freed) grows after such frees, so later large responses come from the heap,
and the process keeps its high-water mark as resident memory. Pinning the
threshold keeps large, short-lived buffers out of the heap.
https://man7.org/linux/man-pages/man3/mallopt.3.html
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["pin_mmap_threshold"]

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 1024
log = logging.getLogger(__name__)


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; return whether it took effect."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    log.debug("memory.mmap_threshold", extra={"bytes": threshold, "applied": applied})
    return applied
