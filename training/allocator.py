"""Keep the C allocator from handing big tensors back to the kernel between steps.

glibc's malloc serves large requests (above a threshold it adapts, at most 32 MiB)
with a fresh `mmap` and returns them with `munmap` when freed, and it trims the top
of the heap as soon as 128 KiB are free. A DPO step allocates and frees hundreds of
activations of a few MiB each; every one of them then costs a system call and a page
fault per 4 KiB page on first touch (the kernel zeroes each page). Measured on one
bf16-mixed step of the benchmark batch (benchmarks/dpo_step_profile.py, 2-core Xeon),
this churn was about a fifth of the step: 5.5-5.8 s with glibc's defaults against
4.4-4.7 s with large requests served from the heap and the heap kept. PyTorch's CPU
performance guide recommends jemalloc or tcmalloc for the same reason; this needs
neither, only `mallopt`.

The heap is never trimmed while training. An earlier threshold of 1 GiB still let a
float32 step's freed top of the heap go back to the kernel: on the 2-core Xeon, passes
over batches already seen took 0.6-1.0M page faults and 8-10 s of system time each
(`benchmarks/dpo_passes.py`), against 36k faults and 1 s with no trimming, and a pass ran
53 s instead of 56. `release_freed_memory()` hands the free heap back once training ends.

The memory kept is memory the process already used at its peak: peak RSS is
unchanged, but RSS no longer falls back between steps. Set ALIGNLOOP_MALLOC_TUNING=0
to keep glibc's defaults. A no-op off glibc (macOS, musl) and after the first call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
# M_TRIM_THRESHOLD -1: never trim (mallopt(3))
_SETTINGS = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, -1), (_M_TOP_PAD, 64 << 20))
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for training (see the module docstring), once per process;
    True when the settings are in force."""
    global _done
    if _done is None:
        _done = _apply()
    return _done


def release_freed_memory() -> bool:
    """Give the heap's free memory back to the kernel (`malloc_trim`) once training is
    done; True when it did (the tuning was in force), False otherwise."""
    if not _done:
        return False
    _libc().malloc_trim(0)
    return True


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def _apply() -> bool:
    if os.environ.get("ALIGNLOOP_MALLOC_TUNING", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = _libc()
    return all(libc.mallopt(option, value) == 1 for option, value in _SETTINGS)
