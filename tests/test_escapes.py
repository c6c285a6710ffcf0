"""No escape sequence from a file reaches the terminal (issue #14, item 2).

Scenario files, recordings, file names and plugin notes are text from outside: an OSC sequence
could retitle the window, `ESC[2J` clear the screen and draw a fake prompt, OSC 52 fill the
clipboard. Wherever such text is shown (headless lines, error lines, the scenario list, the
dashboard's header, help, requests table, error panel and metrics), its control characters are
written out (`\\x1b`) instead; `--json` escapes them as JSON does.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import unicodedata
from io import StringIO
from pathlib import Path

import pytest
from click.testing import CliRunner
from dashboard_helpers import DATA, NO_GPU, SteadyEngine, header_text, wait_until
from rich.console import Console

from cbtui.apps.dashboard import DashboardApp
from cbtui.cli import main
from cbtui.render.metrics_view import render_metrics
from cbtui.run.headless import HeadlessRun
from cbtui.widgets.error_panel import ErrorPanel
from cbtui.widgets.help_screen import HelpScreen
from cbtui.widgets.requests_table import RequestsTable
from engine.profiling.gpu_memory import FakeProbe
from engine.records.recording import RecordedRun, load_recording
from engine.records.text import visible
from scenarios import load_scenario

REPO = Path(__file__).resolve().parent.parent

TITLE_OSC = "\x1b]0;pwned\x07"  # sets the window (tmux pane) title
CLEAR = "\x1b[2J"  # clears the screen
CLIPBOARD = "\x1b]52;c;ZWNobyBwd25lZA==\x07"  # OSC 52: 'echo pwned' into the clipboard
C1_CSI = "\x9b31m"  # the one-character CSI
BIDI = "\u202e"  # right-to-left override
SHOWN = {TITLE_OSC: "\\x1b]0;pwned\\x07", CLEAR: "\\x1b[2J", CLIPBOARD: "\\x1b]52;c;ZWNobyBwd25lZA==\\x07",
         C1_CSI: "\\x9b31m", BIDI: "\\u202e"}

HOSTILE_TOML = r'''
title = "Evil \u001b]0;pwned\u0007"
summary = "Listed \u001b[2J"
description = """Clears \u001b[2J
then \u001b]52;c;ZWNobyBwd25lZA==\u0007 and \u009b31m \u202e"""
question = "Why \u001b]0;pwned\u0007?"
seed = 1

[engine]
model = "tiny"
device = "cpu"
max_tokens_per_step = 16
prefill_chunk_size = 8

[[requests]]
prompt = "hi \u001b[2J\u001b]0;pwned\u0007 there"
max_new_tokens = 3

[compare."v\u001b]0;pwned\u0007"]
max_tokens_per_step = 8
'''

BIDI_CONTROLS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")


def unsafe_chars(text: str) -> list[str]:
    """Control characters (but newline) and the code points that reorder or break lines."""
    return [c for c in text if (c != "\n" and unicodedata.category(c) in ("Cc", "Cs")) or c in BIDI_CONTROLS]


def assert_clean(data: bytes | str) -> str:
    """No ESC, BEL or CSI byte at all, and no other control character once decoded."""
    if isinstance(data, bytes):
        assert b"\x1b" not in data and b"\x07" not in data
        data = data.decode("utf-8")
    assert not unsafe_chars(data), f"control characters reach the terminal: {unsafe_chars(data)!r}"
    return data


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[bytes]:
    """The real process, stdout and stderr as bytes (a pipe: nothing styles them)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "cbtui", *args], cwd=cwd, env=env, capture_output=True,
                          timeout=300)


@pytest.fixture
def hostile(tmp_path) -> Path:
    path = tmp_path / "hostile.toml"
    path.write_text(HOSTILE_TOML, encoding="utf-8")
    return path


# -- the helper ------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", list(SHOWN))
def test_visible_writes_controls_out(raw):
    assert visible(f"a{raw}b") == f"a{SHOWN[raw]}b"


def test_visible_keeps_plain_text_and_optionally_newlines():
    plain = "Mixed load · ▁▂█ 3d → café 请求 🙂‍"
    assert visible(plain) == plain
    assert visible("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert visible("a\nb\tc", newlines=True) == "a\nb\\tc"
    assert visible("\x00\x7f\x9d\u2066\ud800") == "\\x00\\x7f\\x9d\\u2066\\ud800"
    for code in [*range(0x20), *range(0x7F, 0xA0)]:
        assert not unsafe_chars(visible(chr(code)))


def test_the_hostile_file_holds_what_the_tests_expect(hostile):
    scenario = load_scenario(str(hostile))
    assert TITLE_OSC in scenario.title and CLEAR in scenario.description and CLIPBOARD in scenario.description
    assert C1_CSI in scenario.description and BIDI in scenario.description and TITLE_OSC in scenario.question


# -- headless, --json, the scenario list, error lines ---------------------------------------------

@pytest.mark.slow
def test_headless_shows_the_controls(hostile):
    res = cli("scenario", str(hostile), "--headless", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    out = assert_clean(res.stdout)
    assert_clean(res.stderr)
    for raw in (TITLE_OSC, CLEAR, CLIPBOARD, C1_CSI, BIDI):
        assert SHOWN[raw] in out, raw
    assert "Question: Why \\x1b]0;pwned\\x07?" in out
    assert "v\\x1b]0;pwned\\x07" in out  # the [compare] variant's row


@pytest.mark.slow
def test_json_escapes_the_controls(hostile):
    res = cli("scenario", str(hostile), "--json", "--steps", "3", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert_clean(res.stdout)
    assert b"\\u001b]0;pwned\\u0007" in res.stdout  # JSON's escape
    header = json.loads(res.stdout.splitlines()[0])
    assert header["title"] == "Evil " + TITLE_OSC  # and read back exactly


def test_headless_annotations_and_errors_from_a_plugin():
    class NoisyEngine(SteadyEngine):
        def step(self):
            record = super().step()
            record.annotations = [f"note {TITLE_OSC}"]
            record.errors = [f"plugin failed: {CLIPBOARD}"]
            return record

    engine = NoisyEngine(load_scenario("mixed_load").build_engine(device="cpu"))
    out = StringIO()
    HeadlessRun(engine, engine.header(), max_steps=2, console=Console(file=out, width=80, highlight=False)).run()
    text = assert_clean(out.getvalue())
    assert f"[note {SHOWN[TITLE_OSC]}]" in text and f"plugin failed: {SHOWN[CLIPBOARD]}" in text


def test_scenario_list(hostile, tmp_path, monkeypatch):
    import scenarios.loader

    listed = tmp_path / "builtin"
    listed.mkdir()
    (listed / "hostile.toml").write_text(HOSTILE_TOML, encoding="utf-8")
    (listed / "broken.toml").write_text('"\\u009b2J" = 1\n', encoding="utf-8")
    monkeypatch.setattr(scenarios.loader, "BUILTIN_DIR", listed)
    result = CliRunner().invoke(main, ["scenarios"])
    assert result.exit_code == 0, result.output
    out = assert_clean(result.stdout_bytes)
    assert "hostile                Listed \\x1b[2J" in out
    assert "broken" in out and "\\x9b2J" in out


@pytest.mark.slow
def test_error_line_quoting_a_key(tmp_path):
    """toml_key writes a key as JSON would, which leaves C1 controls and bidi overrides raw."""
    path = tmp_path / "bad.toml"
    path.write_text('"\\u009b2J\\u202e" = 1\n', encoding="utf-8")
    res = cli("scenario", str(path), "--headless")
    assert res.returncode == 2 and res.stdout == b""
    err = assert_clean(res.stderr)
    assert err.startswith("cbtui: error: ") and "\\x9b2J\\u202e" in err and len(err.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("command", [("scenario", "{path}", "--headless"), ("replay", "{path}"),
                                     ("trace", "{path}", "out.json")])
def test_error_line_naming_a_hostile_file(tmp_path, command):
    path = tmp_path / f"evil{TITLE_OSC}{CLEAR}.toml"
    path.write_text("title = \n", encoding="utf-8")  # invalid TOML, and not a recording either
    res = cli(*(arg.format(path=path) for arg in command), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    err = assert_clean(res.stderr)
    assert err.startswith("cbtui: error: ") and f"evil{SHOWN[TITLE_OSC]}{SHOWN[CLEAR]}.toml" in err


# -- the dashboard ---------------------------------------------------------------------------------

def hostile_recording(tmp_path) -> Path:
    """The committed recording with every free-text field made hostile."""
    lines = (DATA / "mixed_load.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    header.update(title=f"Evil {TITLE_OSC}", description=f"Clears {CLEAR}\nthen {CLIPBOARD} {C1_CSI} {BIDI}",
                  question=f"Why {TITLE_OSC}?", attention=f"sdpa{CLEAR}")
    records = []
    for line in lines[1:]:
        record = json.loads(line)
        record["annotations"] = [f"note {TITLE_OSC}"]
        record["errors"] = [f"oops {CLIPBOARD}"]
        for view in record["requests"]:
            if view["id"] != 0:  # every other row gives a hostile reason, whatever the run did
                view["reason"] = f"why {CLEAR}"
            if view["id"] == 0:
                view["state"] = f"odd{C1_CSI}"
                view["output_tail"] = [27, *b"]0;pwned", 7, 0x9B]
        records.append(json.dumps(record))
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join([json.dumps(header), *records]) + "\n")
    return path


def rendered(widget) -> str:
    return str(widget.render())


def test_dashboard_shows_the_controls(tmp_path):
    recording = load_recording(hostile_recording(tmp_path))

    def replay():
        return SteadyEngine(RecordedRun(recording.records, recording.header))

    async def scenario():
        app = DashboardApp(recording, replay(), rebuild=replay, paused=True, probe=FakeProbe([NO_GPU]),
                           memory_poll_s=3600.0, recorded=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: "Step 0" in header_text(app))
            for step in (1, 2):
                await pilot.press("n")
                await wait_until(pilot, lambda step=step: f"Step {step}" in header_text(app))
            header = header_text(app)
            assert_clean(header)
            assert len(header.splitlines()) <= 3  # notes and errors that do not fit get a third line, no more
            assert f"Evil {SHOWN[TITLE_OSC]}" in header

            table = app.query_one(RequestsTable)
            cells = [str(cell) for row in range(table.row_count) for cell in table.get_row_at(row)]
            assert_clean("\n".join(cells))
            assert f"odd{SHOWN[C1_CSI]}" in cells
            assert f"why {SHOWN[CLEAR]}" in cells
            assert table.virtual_size.width <= table.size.width  # a long reason never widens the table

            body = render_metrics(*app._metrics_now(), width=76)
            out = StringIO()
            Console(file=out, width=76, color_system=None).print(body)
            assert_clean(out.getvalue())
            assert f"note {SHOWN[TITLE_OSC]}" in out.getvalue()

            panel = app.query_one(ErrorPanel)
            panel.show_error(f"engine failed on {CLIPBOARD}\nsecond line")
            shown = assert_clean(rendered(panel))
            assert f"engine failed on {SHOWN[CLIPBOARD]}\nsecond line" in shown

            await pilot.press("question_mark")
            await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen))
            help_text = assert_clean("\n".join(rendered(s) for s in app.screen.query("Static")))
            assert f"Evil {SHOWN[TITLE_OSC]}" in help_text
            assert f"Clears {SHOWN[CLEAR]}\nthen {SHOWN[CLIPBOARD]} {SHOWN[C1_CSI]} {SHOWN[BIDI]}" in help_text
            assert f"Question: Why {SHOWN[TITLE_OSC]}?" in help_text
            await pilot.press("q")
        await asyncio.sleep(0)

    asyncio.run(scenario())
