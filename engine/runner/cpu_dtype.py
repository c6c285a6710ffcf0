"""The dtype a model runs in on the CPU when none is asked for (dtype = "auto").

bfloat16 halves the bytes every decode step streams through the cores (a decode step of a few
requests reads all the weights for little arithmetic), and CPUs with bf16 dot-product instructions
(avx512_bf16, AMX) multiply it faster than float32 too: `cbtui bench real --compare-dtype float32`
measures both. Random presets stay in float32: their outputs are what the exactness tests check.
"""

from __future__ import annotations

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_flags() -> list[str]:
    """The bf16 instruction sets this CPU has (empty: none, or not Linux)."""
    return sorted(cpu_flags() & set(BF16_FLAGS))


def default_cpu_dtype(model: str) -> str:
    from ..models.source import is_preset

    return "bfloat16" if not is_preset(model) and bf16_flags() else "float32"
