"""A shared run (`cbtui serve`): the folder one presenter and its viewers meet in.

    run.jsonl       the presenter's run, written as it goes (the `--record` format)
    presenter.json  what the presenter's screen shows: run state, the step in view, the selected
                    request, and which run this is (r starts a new one)
    viewers/        one file per viewer (terminal or browser tab) while it watches

Files, not sockets: a viewer is a read-only dashboard that follows the recording, so no viewer
ever runs an engine, and one in an SSH session needs nothing but read access to the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

RECORDING = "run.jsonl"
STATE = "presenter.json"
VIEWERS = "viewers"
ENDED = "ended"  # the presenter's state once it has quit


@dataclass(frozen=True)
class PresenterState:
    run: int = 0  # counts the presenter's (re)starts: a new number means the recording began anew
    state: str = "starting"  # running, paused, finished, failed, ended
    viewing: int | None = None  # the step on the presenter's screen; None: the newest
    selected: int | None = None  # the request the presenter selected
    speed: float | None = None  # steps per second; None: as fast as the engine goes
    url: str = ""  # where browsers watch

    @classmethod
    def from_json(cls, text: str) -> PresenterState | None:
        """None for anything that is not a state this module wrote (a file mid-replace, a stranger's)."""
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        ints = ("run", "viewing", "selected")
        if any(data.get(k) is not None and type(data.get(k)) is not int for k in ints):
            return None
        if any(not isinstance(data.get(k, ""), str) for k in ("state", "url")):
            return None
        speed = data.get("speed")
        if speed is not None and (type(speed) not in (int, float) or not speed > 0):
            return None
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class Session:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    @property
    def recording_path(self) -> Path:
        return self.dir / RECORDING

    @property
    def viewers_dir(self) -> Path:
        return self.dir / VIEWERS

    def create(self) -> None:
        """The folder and its viewers/ (for the presenter); stale viewer files from an earlier run go."""
        self.viewers_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.viewers_dir.iterdir():
            with contextlib.suppress(OSError):
                stale.unlink()

    # -- the presenter's state ------------------------------------------------------------------
    def publish(self, state: PresenterState) -> None:
        """Replaced at once (write aside, then rename), so a viewer never reads half a file."""
        aside = self.dir / f".{STATE}.{os.getpid()}"
        aside.write_text(json.dumps(asdict(state)), encoding="utf-8")
        os.replace(aside, self.dir / STATE)

    def read_state(self) -> PresenterState | None:
        try:
            return PresenterState.from_json((self.dir / STATE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            return None

    # -- who is watching ------------------------------------------------------------------------
    def register_viewer(self) -> Path | None:
        """A file in viewers/ named by this process while it watches (None: the folder is not
        writable for this user; they watch uncounted)."""
        path = self.viewers_dir / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            path.touch(exist_ok=False)
        except OSError:
            return None
        return path

    @staticmethod
    def unregister_viewer(path: Path | None) -> None:
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()

    def count_viewers(self) -> int:
        """Viewers whose process is alive; a file left by one that was killed is removed."""
        try:
            entries = list(self.viewers_dir.iterdir())
        except OSError:
            return 0
        alive = 0
        for entry in entries:
            pid = entry.name.split("-", 1)[0]
            if pid.isdigit() and _alive(int(pid)):
                alive += 1
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
        return alive


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's viewer (over SSH): alive
        return True
    return True
