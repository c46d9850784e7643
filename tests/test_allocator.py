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
