"""Screens of the dashboard, compared with committed SVG snapshots (pytest-textual-snapshot).

Each screen replays a small committed recording (tests/data/mixed_load.jsonl, as `cbtui replay`
does) paused at a fixed step, never a live engine: a scheduler change does not move a snapshot,
only a change to the screen or to the recording does. What depends on the clock or the machine is
held fixed: step wall time and RSS (SteadyEngine), NVML (FakeProbe), and the memory poll runs once
at start. Regenerate after a deliberate change with --snapshot-update; re-record with
`python -m cbtui scenario mixed_load --json --steps 8 > tests/data/mixed_load.jsonl`.
"""

from __future__ import annotations

import pytest
from dashboard_helpers import make_replay_app, shown_step, wait_until

from engine.profiling.gpu_memory import FakeProbe, GpuMemory, MemoryReading

PAUSED_AT = 6


async def _step_to(pilot, step: int) -> None:
    app = pilot.app
    await wait_until(pilot, lambda: shown_step(app) == 0)
    for target in range(1, step + 1):
        await pilot.press("n")
        await wait_until(pilot, lambda target=target: shown_step(app) == target)
    await pilot.pause()


@pytest.mark.slow
@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_paused_step_screen(snap_compare, size):
    assert snap_compare(make_replay_app(paused=True), terminal_size=size,
                        run_before=lambda pilot: _step_to(pilot, PAUSED_AT))


def test_selected_request_zoomed(snap_compare):
    async def select_and_zoom(pilot):
        await _step_to(pilot, PAUSED_AT)
        await pilot.press("down", "down", "z")  # request 1 (a decode in this step)
        await pilot.pause()

    assert snap_compare(make_replay_app(paused=True), terminal_size=(120, 36), run_before=select_and_zoom)


def test_no_gpu_memory_panel(snap_compare):
    """Without NVML the panel says why and shows the process RSS instead."""
    assert snap_compare(make_replay_app(paused=True), terminal_size=(160, 48),
                        run_before=lambda pilot: _step_to(pilot, 0))


def test_gpu_memory_panel_with_two_gpus(snap_compare):
    gib = 1 << 30
    probe = FakeProbe([MemoryReading(gpus=(GpuMemory(0, "NVIDIA H100", 30 * gib, 80 * gib),
                                           GpuMemory(1, "NVIDIA H100", 75 * gib, 80 * gib)),
                                     rss_bytes=512 << 20)])
    assert snap_compare(make_replay_app(paused=True, probe=probe), terminal_size=(160, 48),
                        run_before=lambda pilot: _step_to(pilot, 0))
