"""Raised malloc thresholds (engine/runner/cpu_memory.py): large tensors made after others are
freed reuse their memory instead of faulting in fresh pages; the user's own settings are kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import engine.runner.cpu_memory as cpu_memory

# A chain of elementwise ops on a prefill-sized activation, as a layer runs them: each op's output
# is a new tensor of a few MB, freed an op or two later. Prints the page faults of 20 such chains,
# with raised thresholds or glibc's starting ones.
FAULTS = """
import ctypes, resource, sys, torch
from engine.runner import cpu_memory
if sys.argv[1] == "raised":
    assert cpu_memory.keep_freed_memory()
else:  # glibc's starting thresholds, held there (its defaults move them as blocks are freed)
    mallopt = ctypes.CDLL(None).mallopt
    assert mallopt(cpu_memory.M_MMAP_THRESHOLD, 128 << 10) and mallopt(cpu_memory.M_TRIM_THRESHOLD, 128 << 10)
x = torch.ones(2048, 1536, dtype=torch.bfloat16)
def chain():
    h = x.float()
    y = h * 2
    z = (y + 1).to(torch.bfloat16)
    return torch.nn.functional.silu(z) * x
for _ in range(3):
    chain()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    chain()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in cpu_memory.USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, timeout=120, env=env,
                         check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    low, raised = _faults("low"), _faults("raised")
    pages = 20 * 57 * 2**20 // 4096  # the chains' tensors: ~57 MB each time
    assert low > pages // 2, low  # every tensor in fresh pages
    assert raised * 10 < low, (raised, low)


def test_the_users_malloc_settings_are_kept(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_done", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")

    class NoCalls:
        def __getattr__(self, name):
            raise AssertionError("mallopt called despite the user's setting")
    monkeypatch.setattr(cpu_memory.ctypes, "CDLL", lambda name: NoCalls())
    assert cpu_memory.keep_freed_memory() is False
    assert cpu_memory.keep_freed_memory() is False  # decided once


def test_a_c_library_without_mallopt_is_left_alone(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_done", None)
    for name in cpu_memory.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)

    class NoMallopt:
        pass
    monkeypatch.setattr(cpu_memory.ctypes, "CDLL", lambda name: NoMallopt())
    assert cpu_memory.keep_freed_memory() is False
