"""Memory-allocator tuning for diffim's own processes (the CLI and batch workers).

By default glibc gives every allocation above a (dynamic) threshold its own ``mmap`` and
unmaps it on free, so each batch of candidate stamps and each FFT tile of a subtraction
starts on fresh pages, and their page faults cost about 10 % of a 2048² subtraction on a
2-core VM.  `keep_freed_memory` raises the thresholds so that freed memory is reused; the
peak memory stays the same.  A library does not change its host's allocator: only the
``diffim`` command and `diffim.batch`'s worker tasks call it.
"""

from __future__ import annotations

import ctypes

__all__ = ["keep_freed_memory"]

#: glibc ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Allocations below this many bytes come from the reusable heap: glibc's largest mmap
#: threshold on 64-bit systems.
THRESHOLD_BYTES = 32 * 2**20


def keep_freed_memory() -> None:
    """Let glibc reuse freed memory for large arrays instead of mapping fresh pages.

    A no-op where the C library has no ``mallopt`` (not glibc).
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, 2 * THRESHOLD_BYTES)
    except (OSError, AttributeError, TypeError):
        pass
