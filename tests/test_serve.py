"""`cbtui serve` / `cbtui watch`: one engine (the presenter's), any number of read-only viewers that
follow its recording, in a browser (textual-serve) or a terminal."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from functools import partial

import pytest
from dashboard_helpers import DATA, NO_GPU, FakeProbe, SteadyEngine, header_text, wait_until
from serve_helpers import BrowserClient, alive, free_port, group_processes, help_text, maps_torch

from cbtui.classroom.follow import FollowedRun, Following
from cbtui.classroom.serve import (
    Audience,
    PresenterApp,
    ServeError,
    SessionRecording,
    check_host_port,
    start_server,
    stop_server,
)
from cbtui.classroom.session import ENDED, PresenterState, Session
from cbtui.classroom.watch import WatchApp
from cbtui.widgets.requests_table import RequestsTable
from engine.records.recording import RecordingError
from scenarios import load_scenario

RECORDED = DATA / "mixed_load.jsonl"  # a header, then steps 0.., as the presenter writes them



def needs_web_server():
    """The browser tests need the serve extra (textual-serve, which brings aiohttp); the rest do not."""
    pytest.importorskip("textual_serve", reason="the serve extra: pip install -e '.[serve]'")
    return pytest.importorskip("aiohttp", reason="the serve extra (textual-serve brings aiohttp)")


def run(coro, timeout: float = 180.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))  # bounded: a hung server fails the test


def presenter(tmp_path, audience: Audience | None = None):
    scenario = load_scenario("mixed_load")
    session = Session(tmp_path / "class")
    session.create()
    recording = SessionRecording(session)

    def build():
        return SteadyEngine(scenario.build_engine(device="cpu"))

    engine = build()
    recording.start(scenario.header(engine))
    audience = audience or Audience(url="http://127.0.0.1:0", watch_command=f"cbtui watch {session.dir}")
    app = PresenterApp(scenario, engine, session=session, audience=audience, rebuild=build, paused=True,
                       probe=FakeProbe([NO_GPU]), memory_poll_s=3600.0, recording=recording)
    return app, session, recording


def test_a_viewer_loads_no_torch():
    """What makes a browser tab cheap: the viewer's imports never reach torch (so no engine either)."""
    code = "import sys, cbtui.classroom.watch; print(sorted(m for m in ('torch', 'engine.engine') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


# -- the session folder -----------------------------------------------------------------------------
def test_presenter_state_round_trips_and_refuses_strangers(tmp_path):
    session = Session(tmp_path)
    session.create()
    state = PresenterState(run=3, state="paused", viewing=7, selected=2, speed=4.0, url="http://x:1")
    session.publish(state)
    assert session.read_state() == state
    (tmp_path / "presenter.json").write_text(json.dumps({"run": "3"}))
    assert session.read_state() is None
    (tmp_path / "presenter.json").write_text("{not json")
    assert session.read_state() is None


def test_viewers_are_counted_while_alive_and_a_killed_ones_file_is_cleared(tmp_path):
    session = Session(tmp_path)
    session.create()
    mine = session.register_viewer()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (session.viewers_dir / f"{gone.pid}-dead").touch()
    assert session.count_viewers() == 1
    assert not (session.viewers_dir / f"{gone.pid}-dead").exists()
    session.unregister_viewer(mine)
    assert session.count_viewers() == 0


# -- following a recording as it is written ---------------------------------------------------------
def test_followed_run_hands_out_whole_lines_only_and_sees_a_restart(tmp_path):
    lines = RECORDED.read_text(encoding="utf-8").splitlines(keepends=True)
    path = tmp_path / "run.jsonl"
    path.write_text(lines[0])  # the header alone
    run_ = FollowedRun(path, wait_s=1.0)
    assert run_.header().title
    assert run_.step() is None  # nothing yet
    half = len(lines[1]) // 2
    with open(path, "a", encoding="utf-8") as f:
        f.write(lines[1][:half])
        f.flush()
        assert run_.step() is None, "half a line is not a record"
        f.write(lines[1][half:] + lines[2])
    first, second = run_.step(), run_.step()
    assert (first.step, second.step) == (0, 1)
    assert run_.lines.read(0).step == 0  # history reads back from the file
    assert not run_.restarted()
    path.write_text(lines[0])  # the presenter pressed r: the file begins anew
    assert run_.restarted()
    run_.close()


def test_following_a_missing_or_foreign_file_says_why(tmp_path):
    with pytest.raises(RecordingError, match="no run to follow"):
        FollowedRun(tmp_path / "none.jsonl", wait_s=0.2)
    (tmp_path / "x.jsonl").write_text('{"kind": "step"}\n')
    with pytest.raises(RecordingError, match="not a run header"):
        FollowedRun(tmp_path / "x.jsonl", wait_s=0.2)


# -- a viewer shows what the presenter shows --------------------------------------------------------
def test_presenter_publishes_its_state_run_and_end(tmp_path):
    async def scenario():
        app, session, recording = presenter(tmp_path)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: app.history.current() is not None)
            for _ in range(3):
                await pilot.press("n")
            await wait_until(pilot, lambda: app.history.current().step == 3)
            await wait_until(pilot, lambda: session.read_state().run == recording.run)
            state = session.read_state()
            assert state.state == "paused" and state.viewing is None and state.speed == 4.0
            assert "0 watching  policy fcfs" in header_text(app) and "Mixed load" in header_text(app)
            await pilot.press("left")
            await wait_until(pilot, lambda: session.read_state().viewing == 2)
            await pilot.press("down")  # select a request
            await wait_until(pilot, lambda: session.read_state().selected == app.selected is not None)
            run_before = recording.run
            await pilot.press("r")
            await wait_until(pilot, lambda: session.read_state().run == run_before + 1)
            viewer = session.register_viewer()
            await wait_until(pilot, lambda: "1 watching" in header_text(app), timeout=5)
            session.unregister_viewer(viewer)
            await pilot.press("q")
        assert session.read_state().state == ENDED
    run(scenario())


def write_session(directory, lines, state: PresenterState) -> Session:
    session = Session(directory)
    session.create()
    session.recording_path.write_text("".join(lines))
    session.publish(state)
    return session


def test_terminal_viewer_follows_steps_history_selection_restart_and_end(tmp_path):
    lines = RECORDED.read_text(encoding="utf-8").splitlines(keepends=True)
    session = write_session(tmp_path, lines[:3], PresenterState(run=1, state="paused", speed=4.0))

    async def scenario():
        viewer = WatchApp(session, Following(session.recording_path, wait_s=5))
        async with viewer.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: viewer.history.newest_step() == 1)
            await wait_until(pilot, lambda: "Step 1 paused" in header_text(viewer))
            assert "Watching: " in header_text(viewer) and session.count_viewers() == 1
            with open(session.recording_path, "a", encoding="utf-8") as f:  # the presenter steps on
                f.writelines(lines[3:6])
            await wait_until(pilot, lambda: "Step 4" in header_text(viewer))
            session.publish(PresenterState(run=1, state="paused", viewing=2, selected=1, speed=4.0))
            await wait_until(pilot, lambda: "Step 2" in header_text(viewer))
            assert "Step 2 of 4" in header_text(viewer) and "history" in header_text(viewer)
            assert viewer.selected == 1
            await pilot.press("left", "space", "n")  # read-only: these keys do nothing here
            await pilot.pause(0.3)
            assert viewer.history.current().step == 2 and session.recording_path.stat().st_size > 0
            session.publish(PresenterState(run=1, state="running", speed=None))
            await wait_until(pilot, lambda: "Step 4 running @ max" in header_text(viewer))
            session.recording_path.write_text("".join(lines[:2]))  # r: the file begins anew, run 2
            session.publish(PresenterState(run=2, state="running", speed=8.0))
            await wait_until(pilot, lambda: "Step 0 running @ 8/s" in header_text(viewer))
            await pilot.press("question_mark")
            text = help_text(viewer)
            assert "leave (the run goes on" in text and "pause / resume" not in text
            await pilot.press("escape")
            session.publish(PresenterState(run=2, state=ENDED))
            await wait_until(pilot, lambda: "ended" in header_text(viewer))
            await pilot.press("q")
        assert session.count_viewers() == 0
    run(scenario())


def test_check_host_port_refuses_a_port_in_use_in_one_line():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{port}.*give another --port"):
            check_host_port("127.0.0.1", port)


@pytest.mark.slow
def test_cli_serve_port_in_use_is_one_line_and_exit_2(tmp_path):
    needs_web_server()
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "cbtui", "serve", "mixed_load", "--port", str(port),
                               "--session", str(tmp_path / "s")], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "give another --port" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", [["cbtui.classroom.watch"], ["cbtui", "watch"]])
def test_cli_watch_without_a_session_is_one_line_and_exit_2(tmp_path, command):
    proc = subprocess.run([sys.executable, "-m", *command, str(tmp_path / "nowhere")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "no such folder" in proc.stderr and proc.stderr.count("\n") == 1


# -- browsers: a real client on loopback ------------------------------------------------------------
@pytest.mark.slow
def test_two_browsers_watch_one_engine_through_the_web_server(tmp_path):
    """Two browser-like clients (page, then websocket) on loopback: each gets a viewer process, the
    presenter's header counts them, both follow its steps; no viewer loads torch (no engine); when
    they leave, their processes end, and stopping the server leaves no process behind."""
    aiohttp = needs_web_server()
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    async def scenario():
        audience = Audience(url=url, watch_command="cbtui watch DIR")
        app, session, recording = presenter(tmp_path, audience)
        server = start_server(session, "127.0.0.1", port, url, "Mixed load")
        try:
            async with app.run_test(size=(100, 30)) as pilot, aiohttp.ClientSession() as http:
                await wait_until(pilot, lambda: app.history.current() is not None)
                browsers = [BrowserClient(http, url, width=140), BrowserClient(http, url, width=140)]  # the title whole
                html = await browsers[0].open()
                assert f"ws://127.0.0.1:{port}/ws" in html
                await browsers[1].open()
                for browser in browsers:
                    await browser.wait_for("Watching: Mixed load", timeout=90)
                    await browser.wait_for("Step 0")
                await wait_until(pilot, lambda: "2 watching" in header_text(app), timeout=10)
                assert session.count_viewers() == 2

                viewers = {pid: cmd for pid, cmd in group_processes(server.pid).items()
                           if "cbtui.classroom.watch" in cmd and "/bin/sh" not in cmd}
                assert len(viewers) == 2, viewers
                assert not any(maps_torch(pid) for pid in viewers), "a viewer loaded torch: an engine's library"

                marks = [len(b.raw) for b in browsers]
                for _ in range(2):
                    await pilot.press("n")
                await wait_until(pilot, lambda: app.history.current().step == 2)
                for browser, mark in zip(browsers, marks, strict=True):
                    await browser.wait_for("Step 2", since=mark, timeout=30)
                marks = [len(b.raw) for b in browsers]
                await pilot.press("left")  # the presenter looks back: so do the viewers
                for browser, mark in zip(browsers, marks, strict=True):
                    await browser.wait_for("Step 1 of 2", since=mark, timeout=30)

                for browser in browsers:
                    await browser.close()
                deadline = time.monotonic() + 30
                while any(alive(pid) for pid in viewers) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                assert not any(alive(pid) for pid in viewers), "a closed tab's viewer kept running"
                await wait_until(pilot, lambda: "0 watching" in header_text(app), timeout=10)
                await pilot.press("q")
        finally:
            stop_server(server)
        assert not group_processes(server.pid), "stopping the server left processes behind"
    run(scenario())


def test_presenter_app_class_goes_through_run_dashboard():
    """cbtui serve hands run_dashboard its app class; the plain dashboard is the default."""
    import cbtui.apps.dashboard as app_module

    made = []

    class Probe(app_module.DashboardApp):
        def run(self, *args, **kwargs):
            made.append(type(self))

    import torch

    scenario = load_scenario("mixed_load")
    engine = scenario.build_engine(device="cpu")
    threads = torch.get_num_threads()  # run_dashboard leaves a core to the UI: not for the tests after this one
    try:
        app_module.run_dashboard(scenario, engine, app_class=partial(Probe))
    finally:
        torch.set_num_threads(threads)
    assert made == [Probe]


def test_a_terminal_viewer_started_before_the_presenter_waits_for_the_run(tmp_path):
    """`cbtui watch DIR` before `cbtui serve --session DIR`: 'Waiting for the presenter' for as long
    as it takes (it used to give up after 10 s with an error), then the run, once its first line is in."""
    from cbtui.classroom.watch import WaitingApp

    directory = tmp_path / "class"
    lines = RECORDED.read_text(encoding="utf-8").splitlines(keepends=True)

    async def scenario():
        app = WaitingApp(str(directory))
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.6)
            text = " ".join(str(app.query_one("#waiting").render()).split())
            assert "Waiting for the presenter" in text and "no folder yet" in text, text
            session = Session(directory)
            session.create()  # the presenter starts: the folder first, then the run's header
            session.recording_path.write_text("")
            await wait_until(pilot, lambda: "no run in it yet" in str(app.query_one("#waiting").render()))
            checks = app.checks
            await wait_until(pilot, lambda: app.checks >= checks + 3)  # still waiting, never an error
            assert app.is_running and app.error is None
            session.recording_path.write_text("".join(lines[:3]))
            await wait_until(pilot, lambda: app.return_value is not None, timeout=5)
        opened_session, following = app.return_value
        assert opened_session.dir == directory and following.current.header().title
        following.current.close()
        session.close()
    run(scenario())


def test_the_waiting_viewer_leaves_with_q_and_gives_up_on_what_cannot_be_a_folder(tmp_path):
    from cbtui.classroom.watch import WaitingApp

    async def scenario(directory):
        app = WaitingApp(str(directory))
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.4)
            if app.is_running:
                await pilot.press("q")
        return app
    assert asyncio.run(scenario(tmp_path / "later")).return_value is None
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")  # can never become a session folder
    app = asyncio.run(scenario(tmp_path / "link"))
    assert app.return_value is None and "not a folder" in app.error


def test_a_viewer_shows_the_presenters_selection_zoom_and_live_memory(tmp_path):
    """Item 13 of #29: the viewer's table highlights the presenter's row, its mask zooms with the
    presenter's, and its memory panel shows the presenter's live figures, not 'no live reading'."""
    from engine.records.memory_reading import GpuMemory, MemoryReading

    lines = RECORDED.read_text(encoding="utf-8").splitlines(keepends=True)
    reading = MemoryReading(gpus=(GpuMemory(0, "H100", 3 << 30, 80 << 30),), source="nvml")
    session = write_session(tmp_path, lines[:6], PresenterState(run=1, state="paused", selected=2, zoomed=True,
                                                                memory=reading))
    assert session.read_state().memory == reading  # through presenter.json and back

    async def scenario():
        viewer = WatchApp(session, Following(session.recording_path, wait_s=5))
        async with viewer.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: viewer.history.newest_step() == 4)
            await wait_until(pilot, lambda: viewer.selected == 2 and viewer.zoomed)
            await pilot.pause(0.2)
            table = viewer.query_one(RequestsTable)
            assert table.show_cursor and table.selected_request() == 2
            memory = str(viewer.query_one("#memory-live").render())
            assert "GPU0" in memory and "3.0 GiB/80.0 GiB" in memory and "no live reading" not in memory
            session.publish(PresenterState(run=1, state="paused"))  # the presenter unselects
            await wait_until(pilot, lambda: viewer.selected is None and not viewer.zoomed)
            assert not table.show_cursor
            await pilot.press("q")
    run(scenario())


@pytest.mark.parametrize("memory", [
    {"gpus": [{"index": 0, "name": "\x1b[2J", "used_bytes": 1, "total_bytes": 2}], "source": "nvml"},
    {"gpus": [], "rss_bytes": -1, "source": "rss"},
    {"gpus": "many", "source": "nvml"},
    {"source": "recorded"},
    {"source": "rss", "extra": 1},
])
def test_a_strangers_memory_figures_are_not_taken(memory):
    assert PresenterState.from_json(json.dumps({"run": 1, "memory": memory})) is None


@pytest.mark.parametrize("fields", [{"lesson": 0}, {"lesson": 999}, {"lesson": "3"}, {"folded": 1},
                                    {"zoomed": "yes"}, {"break_why": "\x1b]52;c;AAAA\x07"}, {"break_step": 1.5}])
def test_a_strangers_lesson_and_pause_fields_are_not_taken(fields):
    assert PresenterState.from_json(json.dumps({"run": 1, **fields})) is None
    assert PresenterState.from_json(json.dumps({"run": 1, "lesson": 3, "folded": True, "break_step": 4,
                                                "break_why": "step:4 hit"})).lesson == 3


def test_the_web_page_loads_nothing_from_other_sites(tmp_path):
    """Item 14 of #29: textual-serve's page asked fonts.googleapis.com for its font; an offline
    classroom got none. The page the server sends names only its own address, and the font it
    names is served."""
    pytest.importorskip("textual_serve")
    from aiohttp.test_utils import TestClient, TestServer

    from cbtui.classroom.serve_web import make_server

    async def scenario():
        server = make_server("true", "127.0.0.1", 0, "Mixed load", "http://127.0.0.1:1", max_viewers=2)
        async with TestClient(TestServer(await server._make_app())) as client:
            page = await (await client.get("/")).text()
            urls = set(re.findall(r"(?:https?:|wss?:)?//[^\"'\s)]+", page))
            assert not any("googleapis" in u or "gstatic" in u for u in urls), urls
            foreign = {u for u in urls if not u.split("//", 1)[1].startswith("127.0.0.1:1/")
                       and "www.w3.org/2000/svg" not in u}
            assert not foreign, foreign
            assert "@font-face" in page and "fonts/RobotoMono-VariableFont_wght.ttf" in page
            font = await client.get("/static/fonts/RobotoMono-VariableFont_wght.ttf")
            assert font.status == 200 and len(await font.read()) > 10_000
    asyncio.run(scenario())


def test_a_class_follows_a_presented_lesson_and_walks_back_on_its_own(tmp_path):
    """Item 15 of #29, `cbtui serve --lesson 10`: the presenter runs lesson 10 to its pause; a viewer
    shows the lesson's text (without keys it has not got), its layout (the table folded at 80x24)
    and what paused the run; ← walks back on the viewer alone, space returns to the presenter's step."""
    from test_lessons import screen_text

    from cbtui.classroom.lessons import LESSONS
    from cbtui.classroom.serve import LessonPresenterApp
    from cbtui.widgets.lesson_panel import LessonPanel

    lesson = LESSONS[9]
    scenario = load_scenario(lesson.scenario)
    session = Session(tmp_path / "class")
    session.create()
    recording = SessionRecording(session)

    def build():
        return SteadyEngine(scenario.build_engine(device="cpu", plugins=lesson.plugins))

    engine = build()
    recording.start(scenario.header(engine))
    audience = Audience(url="http://127.0.0.1:0", watch_command=f"cbtui watch {session.dir}")
    app = LessonPresenterApp(scenario, engine, session=session, audience=audience, rebuild=build, paused=True,
                             speed=4.0, recording=recording, lesson_number=10, probe=FakeProbe([NO_GPU]),
                             memory_poll_s=3600.0)

    async def scenario_run():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: app.break_hit is not None, timeout=60)
            await wait_until(pilot, lambda: (session.read_state() or PresenterState()).break_step == 13)
            state = session.read_state()
            assert state.lesson == 10
            assert state.break_step == 13 and "step:13 hit" in state.break_why and state.state == "paused"
            await pilot.press("right_square_bracket")  # one lesson a session: the presenter stays
            await pilot.pause(0.2)
            assert app.is_running
            viewer = WatchApp(session, Following(session.recording_path, wait_s=5))
            async with viewer.run_test(size=(80, 24)) as vpilot:
                await wait_until(vpilot, lambda: viewer.history.newest_step() == 13 and viewer.query(LessonPanel))
                await vpilot.pause(0.3)
                text = " ".join(screen_text(viewer).split())
                assert f"Lesson 10/{len(LESSONS)}: {lesson.title}" in text and "Ask:" in text and "] next" not in text
                assert not viewer.query_one("#requests-panel").display  # the lesson's layout
                assert "paused: breakpoint step:13 hit" in text
                await vpilot.press("left", "left")
                await vpilot.pause(0.4)  # several follow ticks: the viewer stays where it walked
                assert viewer.history.current().step == 11 and session.read_state().viewing is None
                await vpilot.press("space")
                await vpilot.pause(0.2)
                assert viewer.history.current().step == 13
                await pilot.press("t")  # the presenter folds the text: so does the class
                await wait_until(vpilot, lambda: "Ask:" not in screen_text(viewer))
                await vpilot.press("q")
            await pilot.press("q")
        session.close()
    run(scenario_run())


@pytest.mark.parametrize("args, message", [
    (["mixed_load", "--lesson", "3"], "give a scenario (mixed_load) or --lesson 3, not both"),
    (["--lesson", "99"], "--lesson 99: there are lessons 1 to"),
    (["--lesson", "3", "--paused"], "--paused and --speed are the lesson's own"),
    ([], "give a scenario name or --lesson N"),
])
def test_serve_lesson_mistakes_are_one_line_and_exit_2(args, message):
    from click.testing import CliRunner

    from cbtui.cli import main

    result = CliRunner().invoke(main, ["serve", *args])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
