"""The `cbtui` command line."""

from __future__ import annotations

import os
import sys

import click
import torch

from engine.config import ATTENTION_BACKENDS, DEVICES, KV_LAYOUTS, MODELS
from engine.plugins.base import PluginAbort
from engine.records.text import visible
from scenarios import ScenarioError, builtin_names, load_scenario

from .bench.cli import bench


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
    for line in format_table(rows):  # variant names from the file have their controls shown there
        click.echo(line)


def _check_output(flag: str, path: str, headless: bool, check) -> None:
    """Before the run: a bad --metrics-out / --trace-out path fails now, not after minutes of stepping."""
    from engine.records.output_files import OutputFileError

    if not headless:
        fail(f"{flag} needs --headless or --json")
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
    last, preempted = None, 0
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
    full, small = last.kv.pool_bytes, last_record.kv.pool_bytes
    budget = engine.config.kv_memory_bytes
    if budget is None:
        click.echo(f"kv_int8: {differ} of {total} generated tokens differ from the uncompressed run; "
                   f"KV pool {full} -> {small} bytes ({full / small:.2f}x smaller)")
        return
    click.echo(f"kv_int8: {differ} of {total} generated tokens differ from the uncompressed run; "
               f"same KV memory (kv_memory_bytes={budget}): {last.kv.num_blocks} -> {last_record.kv.num_blocks} "
               f"blocks, {preempted} -> {totals.preemptions} preemptions")


@main.command("replay")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--paused", is_flag=True, help="Start paused.")
@click.option("--speed", type=SPEED, default=None,
              help="Steps per second (default 4).")
def replay_cmd(path, paused, speed):
    """Replay a recorded run in the dashboard, without its engine.

    Record one with `cbtui scenario NAME --json > FILE` (on any machine: a GPU box, say); every key
    works as in a live run, and r starts the replay over.
    """
    from engine.records.recording import RecordingError, open_recording

    try:
        recording = open_recording(path)  # the header and the first record: the rest as the replay goes
    except RecordingError as exc:
        fail(str(exc))
    from .app import run_dashboard

    code = run_dashboard(recording, recording.run(), paused=paused, speed=speed, rebuild=recording.run,
                         recorded=True, pages=recording)
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


@main.command("plugins")
def plugins_cmd() -> None:
    """List the built-in plugins and their options (--plugin NAME:key=value,...)."""
    import inspect

    from engine.plugins.base import builtin_plugins

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


@main.command("scenario")
@click.argument("name", required=False)
@click.option("--list", "list_", is_flag=True, help="List the built-in scenarios and exit.")
@click.option("--headless", is_flag=True, help="Run without the dashboard; one line per step.")
@click.option("--json", "as_json", is_flag=True, help="Headless: print one StepRecord (JSON) per line.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps.")
@click.option("--device", type=click.Choice(DEVICES), default=None)
@click.option("--model", type=click.Choice(MODELS), default=None)
@click.option("--attention", type=click.Choice(ATTENTION_BACKENDS), default=None)
@click.option("--kv-layout", type=click.Choice(KV_LAYOUTS), default=None)
@click.option("--variant", default=None, help="Run one of the scenario's [compare] variants instead.")
@click.option("--plugin", "plugins", multiple=True, metavar="SPEC",
              help="Add a plugin: a built-in name (see `cbtui plugins`), an entry point of group "
                   "cbtui.plugins, or module:Class; options after a colon: NAME:key=value,... "
                   "(e.g. adaptive_batch:target_ms=5). Repeatable.")
@click.option("--trust-plugins", is_flag=True,
              help="Let the scenario file's [[plugins]] name module:Class, which imports and runs that "
                   "module's code. Only for files you trust.")
@click.option("--metrics-out", type=click.Path(dir_okay=False), default=None,
              help="Headless: write metrics (TTFT, ITL, throughput, per step) to FILE.json or FILE.csv.")
@click.option("--trace-out", type=click.Path(dir_okay=False), default=None,
              help="Headless: write a Perfetto / Chrome trace (FILE.json): a slice per step, a row per request.")
@click.option("--record", "record_to", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Write the run to FILE as it goes, as --json would (replay it with `cbtui replay FILE`); "
                   "the dashboard's history then reaches back to the first step. r starts the file anew.")
@click.option("--paused", is_flag=True, help="Dashboard: start paused.")
@click.option("--speed", type=SPEED, default=None,
              help="Dashboard: steps per second (default 4).")
def scenario_cmd(name, list_, headless, as_json, steps, device, model, attention, kv_layout, variant, plugins,
                 trust_plugins, metrics_out, trace_out, record_to, paused, speed):
    """Run a scenario: a built-in NAME or a path to a .toml file."""
    if list_:
        _list_scenarios()
        return
    if not name:
        fail(f"give a scenario name or a .toml path; built-in: {', '.join(builtin_names())}")
    from engine.records.metrics_export import check_export_path
    from engine.records.trace_export import check_trace_path

    for flag, path, check in (("--metrics-out", metrics_out, check_export_path),
                              ("--trace-out", trace_out, check_trace_path)):
        if path is not None:
            _check_output(flag, path, headless or as_json, check)
    overrides = dict(device=device, model=model, attention=attention, kv_layout=kv_layout)
    try:
        scenario = load_scenario(name, trust_plugins=trust_plugins)
        engine = scenario.build_engine(variant, plugins=plugins, **overrides)
    except (ScenarioError, ValueError) as exc:
        fail(str(exc))
    header = scenario.header(engine, variant)
    recording = _open_recording_file(record_to, header) if record_to is not None else None
    if header.device == "cpu" and header.model == "tiny":
        torch.set_num_threads(1)  # the tiny model's ops are too small for threads to pay off
    if headless or as_json:
        from engine.engine import NoProgressError
        from engine.records.metrics import MetricsCollector

        from .headless import HeadlessRun

        # Records stream through whatever needs them (the printer, a trace file, metrics, the run's
        # totals) and are not kept: a long run's memory stays flat.
        collector = MetricsCollector() if metrics_out is not None else None
        observers = [collector.observe] if collector is not None else []
        if recording is not None:
            observers.append(recording.write)
        run = HeadlessRun(engine, header, as_json=as_json, max_steps=steps, observers=observers)
        try:
            if trace_out is not None:
                _write_trace(run, trace_out)
            else:
                run.run()
            if scenario.variants and not as_json and not variant:
                _print_comparison(scenario, run.totals, engine.has_unfinished(), overrides)
        except NoProgressError as exc:
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
    from .app import run_dashboard

    code = run_dashboard(scenario, engine, overrides=overrides, paused=paused, speed=speed, max_steps=steps,
                         variant=variant, plugins=plugins, recording=recording)
    # The terminal is restored and the dashboard writes nothing: skip the interpreter's teardown of
    # torch and textual, half a second between q and the prompt on this project's CPU.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
