"""`cbtui scenario` in a real terminal (a pseudo-terminal): how the process ends.

q ends it with 0; SIGTERM / SIGHUP (the SSH session went away) with 128 + the signal, as a shell
would report a process the signal killed. Either way at once, with the terminal restored.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")


def _open_dashboard(*extra: str) -> tuple[subprocess.Popen, int]:
    leader, follower = pty.openpty()
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="80", LINES="24",
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "cbtui", "scenario", "mixed_load", "--paused", *extra],
                            stdin=follower, stdout=follower, stderr=follower, env=env, close_fds=True,
                            start_new_session=True)
    os.close(follower)
    return proc, leader


def _read_until(leader: int, text: bytes, timeout: float) -> bytes:
    seen = b""
    end = time.monotonic() + timeout
    while text not in seen and time.monotonic() < end:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                seen += os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
    return seen


def _exit_code(proc: subprocess.Popen, leader: int, tail: list[bytes] | None = None) -> int:
    try:
        end = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < end:
            seen = _read_until(leader, b"\x00never", 0.1)  # keep draining, or the child blocks on output
            if tail is not None:
                tail.append(seen)
        return proc.wait(timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)


LEAVE_APP_MODE = b"\x1b[?1049l"  # the terminal's normal screen back: what a restored terminal gets last


@pytest.mark.slow
@pytest.mark.parametrize("how, expected", [("q", 0), (signal.SIGTERM, 128 + signal.SIGTERM),
                                           (signal.SIGHUP, 128 + signal.SIGHUP), (signal.SIGINT, 130),
                                           (signal.SIGQUIT, 128 + signal.SIGQUIT),
                                           (signal.SIGUSR1, 128 + signal.SIGUSR1)])
def test_dashboard_process_exit_code(how, expected):
    proc, leader = _open_dashboard()
    shown = _read_until(leader, b"Step 0", timeout=60)
    assert b"Step 0" in shown, shown[-500:]
    if how == "q":
        os.write(leader, b"q")
    else:
        proc.send_signal(how)
    tail: list[bytes] = []
    assert _exit_code(proc, leader, tail) == expected
    if how != signal.SIGHUP:  # the terminal went away: nothing to restore
        assert LEAVE_APP_MODE in b"".join(tail)


@pytest.mark.slow
def test_a_crash_in_the_dashboard_exits_non_zero():
    """A plugin that breaks the records it is handed crashes a panel: the process says so with a
    non-zero code (it ended with 0), and the terminal is restored."""
    proc, leader = _open_dashboard("--plugin", "hostile_plugins:BreaksRecords")
    shown = _read_until(leader, b"Step 0", timeout=60)
    os.write(leader, b"n")
    tail: list[bytes] = []
    assert _exit_code(proc, leader, tail) == 1, (shown + b"".join(tail))[-800:]
    assert LEAVE_APP_MODE in shown + b"".join(tail)


def test_the_dashboard_runs_with_the_start_up_heap_frozen(monkeypatch):
    """A full collector pass over torch's and textual's objects took 150-600 ms on the UI thread, and
    a key pressed meanwhile waited: run_dashboard runs the app with them frozen, and thaws after."""
    import gc

    from cbtui.apps import dashboard as app_module
    from scenarios import load_scenario

    seen = []
    monkeypatch.setattr(app_module.DashboardApp, "run", lambda self: seen.append(gc.get_freeze_count()))
    before = gc.get_freeze_count()
    scenario = load_scenario("mixed_load")
    assert app_module.run_dashboard(scenario, scenario.build_engine(device="cpu")) == 0
    assert len(seen) == 1 and seen[0] > before + 10_000  # torch and textual alone are far more
    assert gc.get_freeze_count() == before


@pytest.mark.slow
def test_the_dashboard_writes_metrics_and_trace_when_it_quits(tmp_path):
    """--metrics-out / --trace-out are not only for headless runs: the dashboard writes them on q."""
    import json

    metrics, trace = tmp_path / "m.json", tmp_path / "t.json"
    proc, leader = _open_dashboard("--metrics-out", str(metrics), "--trace-out", str(trace))
    assert b"Step 0" in _read_until(leader, b"Step 0", timeout=60)
    for step in (b"Step 1", b"Step 2"):
        os.write(leader, b"n")
        assert step in _read_until(leader, step, timeout=30)
    os.write(leader, b"q")
    tail: list[bytes] = []
    assert _exit_code(proc, leader, tail) == 0
    said = b"".join(tail)
    assert b"metrics written to" in said and b"trace written to" in said
    assert len(json.loads(metrics.read_text())["steps"]) == 3  # steps 0, 1 and 2
    events = json.loads(trace.read_text())["traceEvents"]
    slices = [e for e in events if e["ph"] == "X" and e["name"].startswith("step ")]
    assert [e["name"] for e in slices] == ["step 0", "step 1", "step 2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "t.json"], "the record spool is removed"
