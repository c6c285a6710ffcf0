"""One run, a whole class (`cbtui serve SCENARIO`): the presenter's dashboard runs the one engine
and writes its run to a session folder as it goes (session.py); a web server (textual-serve, in its
own process) gives each browser tab a read-only viewer of that folder (watch.py), and `cbtui watch
DIR` gives one to a terminal. No viewer runs an engine. The presenter's header says how many watch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from engine.records.memory_reading import MemoryReading
from engine.records.step_lines import RecordingWriter
from engine.records.text import visible

from ..apps.dashboard import DashboardApp
from ..run.controller import MAX_SPEED
from .lesson_app import LessonApp
from .lessons import LESSONS
from .session import ENDED, RECORDING, SERVER_LOG, PresenterState, Session, SessionError

PUBLISH_S = 0.1  # how often the presenter's state is written when it changed
COUNT_S = 1.0  # how often the viewers are counted
SERVER_START_S = 30.0  # the longest the web server may take to listen
SERVER_STOP_S = 3.0  # the longest it may take to close its viewers and end, before it is killed
INSTALL = "pip install 'cbtui[serve]' (or: pip install textual-serve)"


class ServeError(Exception):
    """The class cannot be served as asked; the message says why and what to do."""


class SessionRecording(RecordingWriter):
    """The presenter's recording, counting its starts: r begins the file anew, and viewers learn of
    it from the run number the presenter publishes after the file was emptied."""

    def __init__(self, session: Session):
        super().__init__(session.recording_path, session.new_file(RECORDING))
        self.run = 0

    def start(self, header=None) -> None:
        super().start(header)
        self.run += 1


@dataclass
class Audience:
    """What the presenter's title says: how many watch, and where."""

    url: str
    watch_command: str
    watching: int = 0


class PresentedScenario:
    """The scenario as the presenter's dashboard shows it: its help says where the class watches."""

    def __init__(self, scenario, audience: Audience):
        self._scenario = scenario
        self._audience = audience

    @property
    def title(self) -> str:
        return self._scenario.title

    @property
    def description(self) -> str:
        a = self._audience
        return (f"{self._scenario.description}\n\nThis run is shared: browsers watch it at {a.url}, terminals "
                f"with `{a.watch_command}`. They see what this screen shows (the step, the selected request) "
                f"and cannot change it.")

    @property
    def question(self) -> str:
        return self._scenario.question


class PresenterApp(DashboardApp):
    def __init__(self, scenario, engine, *, session: Session, audience: Audience, **kwargs):
        super().__init__(PresentedScenario(scenario, audience), engine, **kwargs)
        self.session = session
        self.audience = audience
        self._published: PresenterState | None = None

    def on_mount(self) -> None:  # (DashboardApp.on_mount runs too: Textual calls each class's handler)
        self.set_interval(PUBLISH_S, self.publish)
        self.set_interval(COUNT_S, self.count_viewers)

    def state(self, run_state: str | None = None) -> PresenterState:
        record = None if self.history.live else self.history.current()
        recording = self.session_recording
        return PresenterState(run=recording.run if recording else 0, state=run_state or self.run_state(),
                              viewing=None if record is None else record.step, selected=self.selected,
                              speed=None if self.speed == MAX_SPEED else self.speed, url=self.audience.url,
                              zoomed=self.zoomed, memory=self._live_reading(),
                              break_step=self.break_hit[0] if self.break_hit else None,
                              break_why=visible(self.break_hit[1]) if self.break_hit else "")

    def _live_reading(self) -> MemoryReading | None:
        reading = self.memory_reading
        return reading if reading is not None and reading.source in ("nvml", "rss") else None

    @property
    def session_recording(self) -> SessionRecording | None:
        recording = getattr(self, "_recording", None)
        return recording if isinstance(recording, SessionRecording) else None

    def publish(self, run_state: str | None = None) -> None:
        state = self.state(run_state)
        if state != self._published:
            self._published = state
            try:
                self.session.publish(state)
            except OSError as exc:  # the folder went away: the class sees nothing new, the run goes on
                self.notify(f"cannot write {self.session.dir}: {exc.strerror or exc}", severity="error")

    def _header_info(self, record):
        """How many watch, first on the header's line (a long title is what an 80-column line cuts)."""
        info = super()._header_info(record)
        return replace(info, run=f"{self.audience.watching} watching  {info.run}".rstrip())

    def count_viewers(self) -> None:
        watching = self.session.count_viewers()
        if watching != self.audience.watching:
            self.audience.watching = watching
            self._draw()

    def on_unmount(self) -> None:
        self.publish(ENDED)


class LessonPresenterApp(LessonApp, PresenterApp):
    """`cbtui serve --lesson N`: the lesson presented. Its text, its pause and its layout go to the
    class with the rest of the presenter's state; one lesson a session (], [ and l say so)."""

    LESSON_KEYS = "fold"

    def __init__(self, scenario, engine, *, lesson_number: int, **kwargs):
        for run_option in ("paused", "speed", "breakpoints"):  # the lesson's own: full speed to its pause
            kwargs.pop(run_option, None)
        super().__init__(scenario, engine, LESSONS[lesson_number - 1], lesson_number, [], **kwargs)

    def state(self, run_state: str | None = None) -> PresenterState:
        return replace(super().state(run_state), lesson=self.number, folded=self.folded)

    def action_lesson(self, delta: int) -> None:
        self._one_lesson()

    def action_lessons_menu(self) -> None:
        self._one_lesson()

    def _one_lesson(self) -> None:
        self.notify("A served class follows one lesson: q ends it; serve the next with cbtui serve --lesson N.",
                    timeout=6)


def check_host_port(host: str, port: int) -> None:
    """Fails now, with one line, when the server could not listen there."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServeError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); give another --port") from None


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_server(session: Session, host: str, port: int, public_url: str, title: str, *,
                 max_viewers: int | None = None, temporary: bool = False) -> subprocess.Popen:
    """The web server, in its own process group (so its viewers can be ended with it), listening
    once this returns; its output goes to server.log in the session folder. It ends, with its
    viewers, when this process does (even by kill -9), removing the session folder if `temporary`;
    at most `max_viewers` browsers watch at once (None: as many as the machine's memory holds)."""
    from .serve_web import default_max_viewers

    if importlib.util.find_spec("textual_serve") is None:
        raise ServeError(f"cbtui serve needs textual-serve for the browsers: {INSTALL}")
    check_host_port(host, port)
    log_path = session.dir / SERVER_LOG
    try:
        log = session.new_file(SERVER_LOG)  # new, in the checked folder: never through a planted link
    except OSError as exc:
        raise ServeError(f"cannot write {log_path} ({exc.strerror or exc})") from None
    with log:
        server = subprocess.Popen(
            [sys.executable, "-m", "cbtui.classroom.serve_web", str(session.dir), host, str(port), public_url, title,
             str(os.getpid()), str(max_viewers or default_max_viewers()), "1" if temporary else "0"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        connect_to = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
        deadline = time.monotonic() + SERVER_START_S
        while not _listening(connect_to, port):
            if server.poll() is not None or time.monotonic() > deadline:
                stop_server(server)
                log.seek(0)
                tail = log.read(1 << 20).decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise ServeError(f"the web server did not start ({tail[0].strip()}); see {log_path}")
            time.sleep(0.1)
    return server


def stop_server(server: subprocess.Popen) -> None:
    """Asks the server to end (it closes each browser's viewer), then ends its whole process group."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(SERVER_STOP_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(server.pid, signal.SIGKILL)  # viewers that outlived it (the group is the server's own)
    if server.poll() is None:
        server.wait(SERVER_STOP_S)


def url_for(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def serve(scenario, engine, header, *, host: str, port: int, public_url: str | None, session_dir: str | None,
          run_options: dict, max_viewers: int | None = None, lesson: int | None = None) -> int:
    """Runs the presenter's dashboard (lesson `lesson`'s, when given) with the web server beside it;
    returns the exit code."""
    from ..apps.dashboard import run_dashboard

    temporary = session_dir is None
    directory = Path(tempfile.mkdtemp(prefix="cbtui-serve-") if session_dir is None else session_dir)
    session = Session(directory)
    try:
        session.create()
        recording = SessionRecording(session)
    except SessionError as exc:
        raise ServeError(str(exc)) from None
    except OSError as exc:
        session.close()
        raise ServeError(f"--session {directory}: cannot write there ({exc.strerror or exc})") from None
    url = public_url or url_for(host, port)
    audience = Audience(url=url, watch_command=f"cbtui watch {directory}")
    server = None
    try:
        recording.start(header)
        session.publish(PresenterState(run=recording.run, url=url))
        server = start_server(session, host, port, url, header.title, max_viewers=max_viewers, temporary=temporary)
        print(f"cbtui serve: browsers watch at {url}; terminals: {audience.watch_command}", file=sys.stderr)
        app_class = partial(PresenterApp, session=session, audience=audience) if lesson is None else \
            partial(LessonPresenterApp, session=session, audience=audience, lesson_number=lesson)
        code = run_dashboard(scenario, engine, recording=recording, app_class=app_class, **run_options)
    finally:
        with_state = session.read_state()
        if with_state is not None and with_state.state != ENDED:
            session.publish(PresenterState(run=with_state.run, state=ENDED, url=url))
        if server is not None:
            stop_server(server)
        session.close()
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
    return code
