"""A shared run (`cbtui serve`): the folder one presenter and its viewers meet in.

    run.jsonl       the presenter's run, written as it goes (the `--record` format)
    presenter.json  what the presenter's screen shows: run state, the step in view, the selected
                    request, and which run this is (r starts a new one)
    viewers/        one file per viewer (terminal or browser tab) while it watches
    server.log      the web server's output

Files, not sockets: a viewer is a read-only dashboard that follows the recording, so no viewer
ever runs an engine, and one in an SSH session needs nothing but read access to the folder.

The folder may be anyone's, so neither side trusts it (#30). The presenter writes only in a folder
it owns that no one else can write (`create` refuses any other, in one line), works in it through
one open descriptor (a renamed or swapped path changes nothing), never follows a link there, and
makes each file new (a link, FIFO or device under a session file's name is refused, never opened).
A viewer opens nothing but regular files, without following links and without blocking, reads at
most MAX_STATE_BYTES of presenter.json, and takes from it only the values the presenter writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from engine.records.memory_reading import GpuMemory, MemoryReading

from .lessons import LESSONS

RECORDING = "run.jsonl"
STATE = "presenter.json"
VIEWERS = "viewers"
SERVER_LOG = "server.log"
ENDED = "ended"  # the presenter's state once it has quit
# What a presenter's state may say (engine_fed's run_state, and ENDED): any other is a stranger's.
STATES = ("starting", "running", "paused", "finished", "failed", ENDED)
MAX_STATE_BYTES = 16 << 10  # presenter.json is ~150 bytes; a viewer reads no more than this
MAX_URL_CHARS = 2048
MAX_GPUS = 64
# Opening a file in the session folder: never through a link, never waiting on a FIFO's writer.
NO_FOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class SessionError(Exception):
    """The folder cannot hold a session safely; the message says why and what to do (one line)."""


def open_regular(path: str | Path, dir_fd: int | None = None) -> int:
    """A read-only descriptor on `path` when it is a regular file (not a link, FIFO, device or
    folder); OSError otherwise (ELOOP for a link). Never blocks."""
    fd = os.open(path, os.O_RDONLY | NO_FOLLOW, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small(path: str | Path, limit: int) -> bytes | None:
    """The whole of a regular file of at most `limit` bytes; None for anything else."""
    try:
        fd = open_regular(path)
    except OSError:
        return None
    try:
        data = os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) <= limit else None


def _printable(text: str, limit: int) -> bool:
    return len(text) <= limit and text.isprintable()


@dataclass(frozen=True)
class PresenterState:
    run: int = 0  # counts the presenter's (re)starts: a new number means the recording began anew
    state: str = "starting"  # running, paused, finished, failed, ended
    viewing: int | None = None  # the step on the presenter's screen; None: the newest
    selected: int | None = None  # the request the presenter selected
    speed: float | None = None  # steps per second; None: as fast as the engine goes
    url: str = ""  # where browsers watch
    zoomed: bool = False  # the presenter's mask shows the selected request alone
    # The presenter's live memory reading (GPUs, or the process RSS), which a viewer shows in place of
    # its own: the class sees the presenting machine's figures, not "no live reading".
    memory: MemoryReading | None = None
    lesson: int | None = None  # `cbtui serve --lesson N`: the lesson the class follows (its text on screen)
    folded: bool = False  # the presenter folded the lesson's text to its title line
    break_step: int | None = None  # the step a breakpoint paused the presenter's run on, and why
    break_why: str = ""

    @classmethod
    def from_json(cls, text: str) -> PresenterState | None:
        """None for anything that is not a state this module wrote (a file mid-replace, a stranger's:
        a state or url with escape sequences in it, JSON nested thousands deep, a huge number)."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict):
            return None
        ints = ("run", "viewing", "selected", "lesson", "break_step")
        if any(data.get(k) is not None and type(data.get(k)) is not int for k in ints):
            return None
        if data.get("state", "starting") not in STATES:
            return None
        url, why = data.get("url", ""), data.get("break_why", "")
        if not isinstance(url, str) or not _printable(url, MAX_URL_CHARS):
            return None
        if not isinstance(why, str) or not _printable(why, MAX_URL_CHARS):
            return None
        speed = data.get("speed")
        if speed is not None and (type(speed) not in (int, float) or not speed > 0):
            return None
        if any(type(data.get(k, False)) is not bool for k in ("zoomed", "folded")):
            return None
        lesson = data.get("lesson")
        if lesson is not None and not 1 <= lesson <= len(LESSONS):
            return None
        memory = data.get("memory")
        if memory is not None:
            memory = _memory_reading(memory)
            if memory is None:
                return None
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**{**fields, "memory": memory})


def _count(value) -> bool:
    return type(value) is int and 0 <= value < 1 << 62


def _memory_reading(data) -> MemoryReading | None:
    """A presenter's reading as PresenterState.memory wrote it; None for anything else."""
    if not isinstance(data, dict) or set(data) - {"gpus", "rss_bytes", "note", "source"}:
        return None
    gpus, note = data.get("gpus", []), data.get("note", "")
    if not isinstance(gpus, list) or len(gpus) > MAX_GPUS or not isinstance(note, str) or not _printable(note, 200):
        return None
    if data.get("source") not in ("nvml", "rss") or not _count(data.get("rss_bytes", 0)):
        return None
    devices = []
    for gpu in gpus:
        if not isinstance(gpu, dict) or set(gpu) != {"index", "name", "used_bytes", "total_bytes"}:
            return None
        if not (isinstance(gpu["name"], str) and _printable(gpu["name"], 200)
                and all(_count(gpu[k]) for k in ("index", "used_bytes", "total_bytes"))):
            return None
        devices.append(GpuMemory(**gpu))
    return MemoryReading(gpus=tuple(devices), rss_bytes=data.get("rss_bytes", 0), note=note, source=data["source"])


class Session:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self._fd: int | None = None  # the presenter's: the folder, once create() has checked it
        self._viewers_fd: int | None = None

    @property
    def recording_path(self) -> Path:
        return self.dir / RECORDING

    @property
    def viewers_dir(self) -> Path:
        return self.dir / VIEWERS

    # -- the presenter's side -------------------------------------------------------------------
    def create(self) -> None:
        """The presenter's: makes the folder (or checks the one there), its viewers/, and clears
        stale viewer files from an earlier run. SessionError when the folder is not safe to write in:
        not a folder, someone else's, writable by others, or holding a link (or FIFO, device, folder)
        under one of a session's names."""
        where = f"--session {self.dir}"
        try:
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.dir, 0o755)
            link = os.lstat(self.dir)
            if stat.S_ISLNK(link.st_mode) and link.st_uid != os.geteuid():
                raise SessionError(f"{where}: a link owned by someone else (uid {link.st_uid}); give your own folder")
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except NotADirectoryError:
            raise SessionError(f"{where}: not a folder; give a folder (it is made if missing)") from None
        except OSError as exc:
            raise SessionError(f"{where}: cannot use it ({exc.strerror or exc})") from None
        try:
            self._check_folder(fd, where)
            for name in (RECORDING, STATE, SERVER_LOG):
                self._check_entry(fd, name, where, want=stat.S_ISREG)
            self._check_entry(fd, VIEWERS, where, want=stat.S_ISDIR)
            with contextlib.suppress(FileExistsError):
                os.mkdir(VIEWERS, 0o755, dir_fd=fd)
            viewers = os.open(VIEWERS, os.O_RDONLY | os.O_DIRECTORY | NO_FOLLOW, dir_fd=fd)
        except SessionError:
            os.close(fd)
            raise
        except OSError as exc:
            os.close(fd)
            raise SessionError(f"{where}: cannot write there ({exc.strerror or exc})") from None
        self.close()
        self._fd, self._viewers_fd = fd, viewers
        for stale in os.listdir(viewers):
            with contextlib.suppress(OSError):
                os.unlink(stale, dir_fd=viewers)  # the entry itself (a link's target is untouched)

    @staticmethod
    def _check_folder(fd: int, where: str) -> None:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise SessionError(f"{where}: the folder belongs to someone else (uid {info.st_uid}), who could "
                               f"change its files under you; give a folder of your own")
        if info.st_mode & 0o022:
            raise SessionError(f"{where}: others can write in this folder (mode {stat.filemode(info.st_mode)}), "
                               f"so they could plant links in it; `chmod go-w` it or give another folder")

    @staticmethod
    def _check_entry(fd: int, name: str, where: str, want) -> None:
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not want(info.st_mode):
            kind = "a link" if stat.S_ISLNK(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) else \
                "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            expected = "a folder" if want is stat.S_ISDIR else "a file cbtui writes"
            raise SessionError(f"{where}: {name} is {kind}, not {expected}; remove it or give another folder")

    def _dir_fd(self) -> int:
        if self._fd is None:
            raise SessionError(f"{self.dir}: the session was not created (Session.create)")
        return self._fd

    def new_file(self, name: str) -> BinaryIO:
        """A new, empty regular file `name` in the folder, open to read and write: what was there under
        that name goes first (its entry only; a link's target or another hard link is untouched)."""
        fd = self._dir_fd()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=fd)  # refuses a folder (IsADirectoryError)
        made = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | NO_FOLLOW, 0o644, dir_fd=fd)
        return os.fdopen(made, "w+b")

    def close(self) -> None:
        for fd in (self._fd, self._viewers_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._viewers_fd = None

    def publish(self, state: PresenterState) -> None:
        """Replaced at once (write aside, then rename), so a viewer never reads half a file."""
        fd = self._dir_fd()
        aside = f".{STATE}.{os.getpid()}"
        with self.new_file(aside) as f:
            f.write(json.dumps(asdict(state)).encode("utf-8"))
        os.replace(aside, STATE, src_dir_fd=fd, dst_dir_fd=fd)  # replaces the entry, never through a link

    # -- a viewer's side ------------------------------------------------------------------------
    def read_state(self) -> PresenterState | None:
        data = read_small(self.dir / STATE, MAX_STATE_BYTES)
        if data is None:
            return None
        try:
            return PresenterState.from_json(data.decode("utf-8"))
        except UnicodeDecodeError:
            return None

    # -- who is watching ------------------------------------------------------------------------
    def register_viewer(self) -> Path | None:
        """A file in viewers/ named by this process while it watches (None: the folder is not
        writable for this user, or viewers/ is not a folder; they watch uncounted)."""
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            viewers = os.open(self.viewers_dir, os.O_RDONLY | os.O_DIRECTORY | NO_FOLLOW)
        except OSError:
            return None
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW, 0o644, dir_fd=viewers))
        except OSError:
            return None
        finally:
            os.close(viewers)
        return self.viewers_dir / name

    @staticmethod
    def unregister_viewer(path: Path | None) -> None:
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()  # unlink never follows a link: at worst a stranger's entry goes

    def count_viewers(self) -> int:
        """Viewers whose process is alive; a file left by one that was killed is removed (the entry
        in viewers/, never what a link there points to)."""
        viewers = self._viewers_fd
        if viewers is None:
            return 0
        try:
            entries = os.listdir(viewers)
        except OSError:
            return 0
        alive = 0
        for entry in entries:
            pid = entry.split("-", 1)[0]
            if pid.isdigit() and len(pid) < 10 and _alive(int(pid)):
                alive += 1
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry, dir_fd=viewers)
        return alive


def _alive(pid: int) -> bool:
    if pid <= 0:  # 0 and -1 would signal a group or everyone
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's viewer (over SSH): alive
        return True
    return True
