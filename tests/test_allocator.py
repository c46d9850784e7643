"""The trainer's process-level speed settings: glibc malloc tuning and fused AdamW."""

from __future__ import annotations

import platform

import pytest
import torch
from alignloop.training import allocator
from alignloop.training.trainer import _fused_adamw


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(allocator, "_done", None)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_tuning_is_applied_on_glibc_once(fresh, monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "_apply", lambda real=allocator._apply: calls.append(1) or real())
    assert allocator.keep_freed_memory() is True
    assert allocator.keep_freed_memory() is True
    assert calls == [1]


def test_malloc_tuning_can_be_turned_off(fresh, monkeypatch):
    monkeypatch.setenv("ALIGNLOOP_MALLOC_TUNING", "0")
    assert allocator.keep_freed_memory() is False


def test_fused_adamw_updates_as_the_per_tensor_loop_does():
    torch.manual_seed(0)
    shapes = [(64, 32), (32,), (7, 5, 3)]
    base = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(3)]
    results = {}
    for fused in (False, True):
        params = [b.clone().requires_grad_() for b in base]
        assert _fused_adamw(params)
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, fused=fused,
                                foreach=None if fused else False)
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            opt.step()
        results[fused] = [p.detach() for p in params]
    for a, b in zip(results[False], results[True], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_fused_adamw_is_not_asked_for_integer_parameters():
    assert not _fused_adamw([torch.zeros(3, dtype=torch.int64)])


_HEAP_PROBE = r"""
import ctypes, sys
from alignloop.training import allocator

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

assert allocator.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
chunk = 100 << 20                       # under the mmap threshold: served from the heap
blocks = [libc.malloc(chunk) for _ in range(12)]
for b in blocks:
    libc.memset(b, 1, chunk)
peak = rss_mb()
for b in reversed(blocks):             # 1.2 GB free at the top of the heap
    libc.free(b)
kept = rss_mb()
allocator.release_freed_memory()
print(peak, kept, rss_mb())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_heap_is_kept_while_training_and_released_after():
    """More than 1 GiB freed at the top of the heap stays with the process (a threshold
    of 1 GiB gave it back, and a float32 pass paid ~1M page faults to fetch it again);
    `release_freed_memory` returns it."""
    import subprocess
    import sys

    env = {**__import__("os").environ, "ALIGNLOOP_MALLOC_TUNING": "1"}
    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True,
                         check=True, env=env).stdout
    peak, kept, released = map(float, out.split())
    assert peak - released > 1000            # the probe did grow the heap by 1.2 GB
    assert kept > peak - 50                  # nothing handed back when freed
    assert released < peak - 1000            # handed back on release
