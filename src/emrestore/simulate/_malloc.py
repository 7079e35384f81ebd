"""Keep freed memory in the process heap: the simulator's arrays stop paying page faults.

Each distortion step allocates a few arrays of 0.25-1 MB. glibc returns such blocks to the kernel
on ``free`` (they are above its mmap/trim thresholds), so the next allocation of the same size
faults in fresh zeroed pages: on a 256² pair that is ~40 % of the post-processing time. Raising
the thresholds keeps the pages in the heap. This is a process-wide setting, so nothing calls it
on import: call :func:`retain_freed_memory` once in a data-generation process (a pool worker's
initializer, a benchmark). The same effect from the shell:
``MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=536870912``.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def retain_freed_memory(mmap_threshold_bytes: int = 256 << 20,
                        trim_threshold_bytes: int = 512 << 20,
                        top_pad_bytes: int = 64 << 20) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where unsupported."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold_bytes)) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, int(trim_threshold_bytes)) == 1
    ok &= mallopt(_M_TOP_PAD, int(top_pad_bytes)) == 1
    return bool(ok)
