"""Where cbtui keeps what it fetched or converted: $CBTUI_CACHE_DIR, else $XDG_CACHE_HOME/cbtui, else
~/.cache/cbtui. Pulled models go under models/, GGUF files converted to our loader's format under
converted/. Everything is written to a temporary name in the same folder and renamed into place, so
an interrupted write leaves nothing that looks finished.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cbtui"


def cache_dir() -> Path:
    override = os.environ.get("CBTUI_CACHE_DIR")
    return Path(os.path.expanduser(override)) if override else default_cache_dir()


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """A temporary folder beside `final`, renamed to `final` when the block ends without an error,
    removed otherwise."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        if final.exists():  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
