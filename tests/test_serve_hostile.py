"""#30, safe to open and safe to serve: a session folder planted by another local user, and a viewer
pointed at a hostile folder. Every hostile folder is built here; each case must end in one line
(SessionError / RecordingError, or exit 2 from the command line), in bounded time and memory,
leaving every file outside the folder as it was."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dashboard_helpers import DATA

from cbtui.classroom.serve import ServeError, SessionRecording, serve
from cbtui.classroom.session import PresenterState, Session, SessionError

RECORDED = DATA / "mixed_load.jsonl"
STRANGER = 65534  # nobody
BOUND_S = 20.0  # seconds any hostile case may take, a subprocess's start included
MEMORY_CAP = 1 << 30  # address space of a checking subprocess: a reader of /dev/zero would hit it


# -- a planted folder -----------------------------------------------------------------------------
def victim_files(base: Path) -> dict[Path, bytes]:
    """Files outside the session folder that a planted link points at: they must survive."""
    some_dir = base / "some_dir"
    some_dir.mkdir()
    files = {some_dir / "thesis.tex": b"years of work", some_dir / "notes.txt": b"notes",
             base / "some_file": b"precious", base / "other_file": b"also precious"}
    for path, data in files.items():
        path.write_bytes(data)
    return files


def intact(files: dict[Path, bytes]) -> bool:
    return all(path.is_file() and path.read_bytes() == data for path, data in files.items())


def plant_links(folder: Path, base: Path) -> None:
    (folder / "viewers").symlink_to(base / "some_dir")
    (folder / "run.jsonl").symlink_to(base / "some_file")
    (folder / "server.log").symlink_to(base / "other_file")
    (folder / "presenter.json").symlink_to(base / "some_file")


def as_stranger(path: Path) -> None:
    os.lchown(path, STRANGER, STRANGER)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="making a folder someone else owns needs root")


@needs_root
def test_a_world_writable_folder_of_another_user_is_refused_and_its_links_not_followed(tmp_path):
    """The issue's case: 0777, someone else's, viewers -> some_dir, run.jsonl -> some_file,
    server.log -> other_file. create() refused it: nothing in some_dir deleted, no file overwritten."""
    files = victim_files(tmp_path)
    folder = tmp_path / "class"
    folder.mkdir()
    plant_links(folder, tmp_path)
    for path in (folder, *folder.iterdir()):
        as_stranger(path)
    folder.chmod(0o777)
    session = Session(folder)
    with pytest.raises(SessionError, match="belongs to someone else") as caught:
        session.create()
    assert "\n" not in str(caught.value)
    assert intact(files) and sorted(p.name for p in folder.iterdir()) == sorted(
        ["viewers", "run.jsonl", "server.log", "presenter.json"])


def test_a_folder_others_can_write_is_refused(tmp_path):
    files = victim_files(tmp_path)
    folder = tmp_path / "class"
    folder.mkdir()
    plant_links(folder, tmp_path)
    for mode in (0o777, 0o775, 0o1777):
        folder.chmod(mode)
        with pytest.raises(SessionError, match="others can write"):
            Session(folder).create()
    assert intact(files)


@needs_root
def test_a_folder_that_is_a_strangers_link_is_refused(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "run.jsonl").write_text("my run")
    link = tmp_path / "class"
    link.symlink_to(mine)
    as_stranger(link)
    with pytest.raises(SessionError, match="a link owned by someone else"):
        Session(link).create()
    assert (mine / "run.jsonl").read_text() == "my run"


def run_bounded(code: str, *args: str, timeout: float = BOUND_S) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter with at most MEMORY_CAP of address space and `timeout` seconds:
    a hang fails the test instead of hanging it; an unbounded read ends in MemoryError."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP * 4, MEMORY_CAP * 4))  # torch-free, but Python

    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, preexec_fn=cap, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"did not end within {timeout:g} s (a hang)")
    done.elapsed = time.monotonic() - start  # type: ignore[attr-defined]
    return done


CREATE = """
import sys
from cbtui.classroom.session import Session, SessionError
from cbtui.classroom.serve import SessionRecording
session = Session(sys.argv[1])
try:
    session.create()
    recording = SessionRecording(session)
except SessionError as exc:
    print(exc)
    sys.exit(2)
session.close()
"""


def planted(kind: str, folder: Path, base: Path) -> None:
    """One hostile entry in a folder the presenter owns (0755)."""
    name, what = kind.split(":")
    path = folder / name
    if what == "link-file":
        path.symlink_to(base / "some_file")
    elif what == "link-dir":
        path.symlink_to(base / "some_dir")
    elif what == "dangling":
        path.symlink_to(base / "nowhere")
    elif what == "fifo":
        os.mkfifo(path)
    elif what == "dir":
        path.mkdir()
    elif what == "file":
        path.write_text("x")
    elif what == "dev":
        path.symlink_to("/dev/zero")


PLANTED = [f"{name}:{what}" for name in ("run.jsonl", "server.log", "presenter.json")
           for what in ("link-file", "dangling", "fifo", "dir", "dev")] + \
          ["viewers:link-dir", "viewers:file", "viewers:fifo", "viewers:dangling"]


@pytest.mark.parametrize("kind", PLANTED)
def test_a_link_fifo_or_folder_under_a_session_name_is_refused_in_one_line(tmp_path, kind):
    files = victim_files(tmp_path)
    folder = tmp_path / "class"
    folder.mkdir(mode=0o755)
    planted(kind, folder, tmp_path)
    done = run_bounded(CREATE, str(folder))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.count("\n") == 1 and done.stderr == "" and kind.split(":")[0] in done.stdout
    assert intact(files)


def test_a_hard_link_under_run_jsonl_is_replaced_not_written_through(tmp_path):
    files = victim_files(tmp_path)
    folder = tmp_path / "class"
    folder.mkdir(mode=0o755)
    os.link(tmp_path / "some_file", folder / "run.jsonl")
    os.link(tmp_path / "other_file", folder / "server.log")
    session = Session(folder)
    session.create()
    recording = SessionRecording(session)
    recording.start(_header())
    log = session.new_file("server.log")
    log.write(b"server output")
    log.close()
    recording.close()
    session.close()
    assert intact(files)
    assert (folder / "run.jsonl").read_text().startswith("{")
    assert (folder / "server.log").read_bytes() == b"server output"


def _header():
    from engine.records.recording import parse_header

    return parse_header(RECORDED.read_text(encoding="utf-8").splitlines()[0])


def test_counting_viewers_never_unlinks_through_a_link_nor_signals_a_group(tmp_path):
    files = victim_files(tmp_path)
    session = Session(tmp_path / "class")
    session.create()
    viewers = session.viewers_dir
    (viewers / "1-link").symlink_to(tmp_path / "some_file")  # pid 1 is alive: counted, left
    (viewers / "999999999-gone").symlink_to(tmp_path / "other_file")
    (viewers / "0-group").touch()  # os.kill(0, 0) would signal our own group: "alive"
    (viewers / "-1-everyone").touch()
    (viewers / "sub").mkdir()
    (viewers / "sub" / "keep").write_text("k")
    assert session.count_viewers() == 1
    assert sorted(p.name for p in viewers.iterdir()) == ["1-link", "sub"]
    assert intact(files) and (viewers / "sub" / "keep").read_text() == "k"
    session.close()


def test_publish_replaces_a_planted_state_link_without_writing_through_it(tmp_path):
    files = victim_files(tmp_path)
    session = Session(tmp_path / "class")
    session.create()
    (session.dir / "presenter.json").symlink_to(tmp_path / "some_file")  # planted after the check
    (session.dir / f".presenter.json.{os.getpid()}").symlink_to(tmp_path / "other_file")
    session.publish(PresenterState(run=1, state="running"))
    assert intact(files) and not (session.dir / "presenter.json").is_symlink()
    assert session.read_state() == PresenterState(run=1, state="running")
    session.close()


@pytest.mark.parametrize("session_dir", ["planted", "fifo-run"])
def test_serve_refuses_a_hostile_session_folder_before_anything_starts(tmp_path, session_dir):
    files = victim_files(tmp_path)
    folder = tmp_path / "class"
    folder.mkdir(mode=0o755)
    if session_dir == "planted":
        plant_links(folder, tmp_path)
        folder.chmod(0o777)
    else:
        os.mkfifo(folder / "run.jsonl")
    with pytest.raises(ServeError) as caught:
        serve(None, None, None, host="127.0.0.1", port=1, public_url=None, session_dir=str(folder), run_options={})
    assert "\n" not in str(caught.value) and str(folder) in str(caught.value)
    assert intact(files)


@pytest.mark.slow
def test_cli_serve_with_a_planted_session_folder_is_one_line_exit_2(tmp_path):
    files = victim_files(tmp_path)
    folder = tmp_path / "class"
    folder.mkdir()
    plant_links(folder, tmp_path)
    os.mkfifo(folder / "extra.fifo")
    folder.chmod(0o777)
    done = subprocess.run([sys.executable, "-m", "cbtui", "serve", "mixed_load", "--device", "cpu", "--session",
                           str(folder), "--port", "1"], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.count("\n") == 1 and "others can write" in done.stderr
    assert intact(files)


# -- a viewer of a hostile folder (cbtui watch) ---------------------------------------------------
READ_STATE = """
import sys
from cbtui.classroom.session import Session
print(repr(Session(sys.argv[1]).read_state()))
"""

OSC_TITLE = "\x1b]0;you have been pwned\x07"
OSC_CLIPBOARD = "\x1b]52;c;cm0gLXJmIH4K\x07"  # "rm -rf ~" into the clipboard


def sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def hostile_states(folder: Path) -> dict[str, object]:
    """presenter.json as a stranger writes it; each value: text to write, or a callable making it."""
    good = {"run": 1, "state": "running", "viewing": None, "selected": None, "speed": None, "url": ""}
    return {
        "osc-title-state": json.dumps(dict(good, state=OSC_TITLE * 7)),
        "osc-clipboard-state": json.dumps(dict(good, state=OSC_CLIPBOARD * 7)),
        "osc-url": json.dumps(dict(good, url=OSC_TITLE)),
        "c1-state": json.dumps(dict(good, state="running\x9b2J")),
        "unknown-state": json.dumps(dict(good, state="pwned")),
        "state-not-str": json.dumps(dict(good, state=["running"])),
        "nested-list": "[" * 100_000 + "]" * 100_000,
        "nested-dict": '{"a":' * 50_000 + "1" + "}" * 50_000,
        "huge-int": '{"run": ' + "9" * 5000 + "}",
        "huge-float": json.dumps(dict(good, speed=1e308)).replace("1e+308", "1e999"),
        "nan-speed": json.dumps(dict(good)).replace('"speed": null', '"speed": NaN'),
        "not-utf8": b'{"state": "\xff\xfe"}',
        "big-file": lambda path: sparse(path, 1 << 32),
        "dev-zero-link": lambda path: path.symlink_to("/dev/zero"),
        "dev-urandom-link": lambda path: path.symlink_to("/dev/urandom"),
        "fifo": lambda path: os.mkfifo(path),
        "folder": lambda path: path.mkdir(),
        "link-to-good": lambda path: (folder / "elsewhere.json").write_text(json.dumps(good))
        or path.symlink_to(folder / "elsewhere.json"),
    }


@pytest.mark.parametrize("case", list(hostile_states(Path("."))))
def test_a_viewer_reads_a_hostile_presenter_json_as_no_state_in_bounded_time_and_memory(tmp_path, case):
    folder = tmp_path / "class"
    folder.mkdir()
    path = folder / "presenter.json"
    make = hostile_states(folder)[case]
    if callable(make):
        make(path)
    elif isinstance(make, bytes):
        path.write_bytes(make)
    else:
        path.write_text(make)
    done = run_bounded(READ_STATE, str(folder))
    assert done.returncode == 0 and done.stderr == "", done.stderr[-500:]
    if case == "huge-float":  # inf steps per second is "as fast as it goes": a state, and harmless
        assert "speed=inf" in done.stdout
    else:
        assert done.stdout == "None\n"
    assert done.elapsed < BOUND_S  # type: ignore[attr-defined]


def test_no_state_a_stranger_can_write_carries_an_escape_to_the_terminal():
    for text in (OSC_TITLE, OSC_CLIPBOARD, "\x1b[2J", "a\nb", "\x9b31m", "\u202e"):
        for key in ("state", "url"):
            assert PresenterState.from_json(json.dumps({key: text})) is None
    assert PresenterState.from_json(json.dumps({"state": "paused", "url": "http://host:1/"})) is not None


WATCH = [sys.executable, "-m", "cbtui.classroom.watch"]


def hostile_runs(folder: Path) -> dict[str, object]:
    header = RECORDED.read_text(encoding="utf-8").splitlines(keepends=True)[0]
    return {
        "fifo": lambda path: os.mkfifo(path),
        "dev-zero-link": lambda path: path.symlink_to("/dev/zero"),
        "link-to-recording": lambda path: path.symlink_to(RECORDED),
        "folder": lambda path: path.mkdir(),
        "no-newline-zeros": lambda path: sparse(path, 80 << 20),  # past MAX_LINE_BYTES: refused, not read on
        "not-a-header": lambda path: path.write_text('{"kind": "step"}\n'),
        "nested-header": lambda path: path.write_text("[" * 100_000 + "\n"),
        "osc-in-error": lambda path: path.write_text(OSC_TITLE + "\n"),
        "header-only-link": lambda path: (folder / "real.jsonl").write_text(header) or path.symlink_to("real.jsonl"),
    }


@pytest.mark.parametrize("case", list(hostile_runs(Path("."))))
def test_cbtui_watch_of_a_hostile_run_jsonl_is_one_line_exit_2_in_bounded_time(tmp_path, case):
    folder = tmp_path / "class"
    folder.mkdir()
    hostile_runs(folder)[case](folder / "run.jsonl")
    start = time.monotonic()
    try:
        done = subprocess.run([*WATCH, str(folder)], capture_output=True, timeout=BOUND_S, stdin=subprocess.DEVNULL,
                              env=dict(os.environ, PYTHONPATH=os.getcwd()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"cbtui watch hung on a {case} run.jsonl")
    assert done.returncode == 2, done.stderr[-500:]
    assert done.stderr.count(b"\n") == 1 and done.stderr.startswith(b"cbtui: error: ")
    assert b"\x1b" not in done.stderr and b"\x07" not in done.stderr and done.stdout == b""
    assert time.monotonic() - start < BOUND_S


def test_cbtui_watch_of_a_fifo_or_device_path_is_one_line_exit_2(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (fifo, Path("/dev/zero")):
        done = subprocess.run([*WATCH, str(target)], capture_output=True, text=True, timeout=BOUND_S,
                              stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=os.getcwd()))
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr



# -- the web server: bounded, and never outliving the presenter -----------------------------------
def test_the_default_viewer_limit_follows_the_memory_available():
    from cbtui.classroom.serve_web import MAX_DEFAULT_VIEWERS, VIEWER_BYTES, default_max_viewers

    assert default_max_viewers(0) == 1
    assert default_max_viewers(20 * 2 * VIEWER_BYTES) == 20
    assert default_max_viewers(1 << 50) == MAX_DEFAULT_VIEWERS
    assert 1 <= default_max_viewers() <= MAX_DEFAULT_VIEWERS


def test_the_full_page_escapes_the_title():
    from cbtui.classroom.serve_web import full_page

    page = full_page("<script>alert(1)</script>", 50)
    assert "<script>" not in page and "&lt;script&gt;" in page and "50 browsers" in page


def serve_session(folder: Path) -> Session:
    """A session folder holding a recording (what a presenter has written so far)."""
    session = Session(folder)
    session.create()
    with session.new_file("run.jsonl") as f:
        f.write(RECORDED.read_bytes())
    session.publish(PresenterState(run=1, state="paused"))
    return session


def listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


PRESENTER = """
import sys, tempfile, time
sys.path.insert(0, "tests")
from test_serve_hostile import serve_session
from cbtui.classroom.serve import start_server
port, base = int(sys.argv[1]), sys.argv[2]
folder = tempfile.mkdtemp(prefix="cbtui-serve-", dir=base)
server = start_server(serve_session(folder), "127.0.0.1", port, f"http://127.0.0.1:{port}", "Mixed load",
                      temporary=True)
print(server.pid, folder, flush=True)
time.sleep(300)
"""


@pytest.mark.slow
def test_kill_9_of_the_presenter_ends_the_web_server_its_viewers_and_the_temporary_folder(tmp_path):
    """The issue's case: two browsers watch, then the presenter is killed with SIGKILL: the server
    (re-parented to init), its shells and viewers end, the port closes, the temporary folder goes."""
    import asyncio
    import signal

    from serve_helpers import BrowserClient, free_port, group_processes

    aiohttp = pytest.importorskip("aiohttp")
    pytest.importorskip("textual_serve")
    port = free_port()
    presenter = subprocess.Popen([sys.executable, "-c", PRESENTER, str(port), str(tmp_path)], stdout=subprocess.PIPE,
                                 text=True, stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    server_pid = None
    try:
        line = presenter.stdout.readline().split()
        assert line, "the presenter did not start its server"
        server_pid, folder = int(line[0]), Path(line[1])

        async def two_browsers():
            async with aiohttp.ClientSession() as http:
                browsers = [BrowserClient(http, f"http://127.0.0.1:{port}") for _ in range(2)]
                for browser in browsers:
                    await browser.open()
                for browser in browsers:
                    await browser.wait_for("Watching:", timeout=90)
                viewers = [p for p, cmd in group_processes(server_pid).items() if "cbtui.classroom.watch" in cmd]
                assert len(viewers) >= 2, group_processes(server_pid)
                presenter.send_signal(signal.SIGKILL)
                presenter.wait(10)
                deadline = time.monotonic() + 15
                while (group_processes(server_pid) or listening(port) or folder.exists()) and \
                        time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                for browser in browsers:
                    await browser.close()

        asyncio.run(asyncio.wait_for(two_browsers(), 180))
        assert not group_processes(server_pid), f"left behind: {group_processes(server_pid)}"
        assert not listening(port) and not folder.exists()
    finally:
        if presenter.poll() is None:
            presenter.kill()
            presenter.wait()
        if server_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server_pid, 9)


@pytest.mark.slow
def test_past_the_viewer_limit_a_browser_gets_a_polite_page_and_no_process(tmp_path):
    import asyncio

    from serve_helpers import BrowserClient, alive, free_port, group_processes

    from cbtui.classroom.serve import start_server, stop_server

    aiohttp = pytest.importorskip("aiohttp")
    pytest.importorskip("textual_serve")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    session = serve_session(tmp_path / "class")
    server = start_server(session, "127.0.0.1", port, url, "Mixed <b>load</b>", max_viewers=1)

    def viewers() -> list[int]:
        return [p for p, cmd in group_processes(server.pid).items()
                if "cbtui.classroom.watch" in cmd and "/bin/sh" not in cmd]

    async def scenario():
        async with aiohttp.ClientSession() as http:
            first = BrowserClient(http, url)
            await first.open()
            await first.wait_for("Watching:", timeout=90)
            assert len(viewers()) == 1
            for _ in range(3):  # the page, then a websocket straight away (a script skips the page)
                async with http.get(url + "/") as page:
                    assert page.status == 503 and page.headers["Retry-After"] == "30"
                    text = await page.text()
                    assert "1 browsers are watching" in text and "Mixed &lt;b&gt;load" in text
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(url.replace("http", "ws") + "/ws")
                assert refused.value.status == 503
            await asyncio.sleep(1.0)
            assert len(viewers()) == 1, "a refused browser started a viewer"
            gone = viewers()
            await first.close()
            deadline = time.monotonic() + 30
            while any(alive(p) for p in gone) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            async with http.get(url + "/") as page:  # a seat is free again
                assert page.status == 200

    try:
        asyncio.run(asyncio.wait_for(scenario(), 180))
    finally:
        stop_server(server)
        session.close()
    assert not group_processes(server.pid)
