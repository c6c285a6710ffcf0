"""The process the dashboard's `f` starts: the compare view of a fork plan (cbtui/run/fork.py).

    python -m cbtui.apps.fork_view PLAN

It runs both at full speed to the step forked at and pauses there: the next step is the first
where they may differ. A plan that cannot run (its engine
cannot be built) writes its one-line reason to PLAN.err and exits 2, for the dashboard to say.
"""

from __future__ import annotations

import sys
from pathlib import Path

from engine.records.text import visible
from scenarios.errors import ScenarioError

from ..run.breakpoints import parse
from ..run.controller import MAX_SPEED
from ..run.fork import error_file, load_plan
from .compare import run_compare


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m cbtui.apps.fork_view PLAN (made by the dashboard's f key)", file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        plan = load_plan(path)
        runs = plan.runs()
        for run in runs:  # every setting checked before the screen opens
            run.scenario.engine_config(run.compare_key, **plan.overrides)
        return run_compare(plan.as_it_ran(), runs, plan.overrides, speed=MAX_SPEED,
                           breakpoints=[parse(f"step:{plan.step}")])
    except (ScenarioError, ValueError, OSError) as exc:
        error_file(path).write_text(visible(str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
