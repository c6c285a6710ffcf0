"""`cbtui bench ...`: benchmarks are commands, never timed unit tests.

`cbtui bench --workload anchor|varied` (the group's own options) compares this engine with static
batching and Hugging Face transformers; subcommands live in their own modules and are imported
lazily, so `cbtui --help` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

import click

from engine.config import MODELS
from engine.records.text import visible

from ..engine_options import engine_option


class ScaleType(click.ParamType):
    """A fraction in (0, 1], as a decimal or a ratio: 0.25 or 1/4."""

    name = "scale"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        from fractions import Fraction

        try:
            scale = float(Fraction(str(value).strip()))
        except (ValueError, ZeroDivisionError):
            self.fail(f"{value!r} is not a number or a fraction such as 1/4", param, ctx)
        if not 0 < scale <= 1:
            self.fail(f"{value!r} is not in (0, 1]", param, ctx)
        return scale


@click.group("bench", invoke_without_command=True)
@click.option("--workload", type=click.Choice(["anchor", "varied", "repetitive", "shared_prefix"]), default="anchor",
              show_default=True,
              help="anchor: 512 requests, prompts 32..1024, 128 new tokens; varied: 256 requests, 16..256 new; "
                   "repetitive: 256 requests, prompts 32..256 repeating a short pattern, 128 new; "
                   "shared_prefix: 256 requests behind a 768- or a 256-token system prompt (3:1), 16..256 tokens "
                   "of their own, 16..128 new, also run without prefix caching.")
@engine_option("speculative", help="Add a row of ours continuous with speculative decoding (k=4). Default: ngram "
                                   "on the repetitive workload, off otherwise.")
@click.option("--scale", type=ScaleType(), default=None,
              help="Fraction of the requests (and of the static batch) to run, 0.25 or 1/4. Default: 1 on CUDA, "
                   "1/16 on the CPU.")
@engine_option("device", default="auto", show_default=True)
@engine_option("model", help=f"Engine preset ({', '.join(MODELS)}), smollm2, a .gguf file, a local Hugging Face "
                             f"checkpoint directory or a Hub name (transformers loads the same weights for its rows). "
                             f"Default: small on CUDA (bf16), tiny on the CPU (fp32).")
@engine_option("attention", default="auto", show_default=True, help="Our engine's attention backend.")
@click.option("--hf/--no-hf", default=True, show_default=True,
              help="Include Hugging Face transformers (when it is installed).")
@click.option("--ablations/--no-ablations", default=True, show_default=True,
              help="On CUDA, also run ours with overlapped steps, without decode graphs, and with the gather "
                   "decode (each piece's worth); on the shared_prefix workload, on any device, without prefix "
                   "caching.")
@click.option("--repeat", type=click.IntRange(min=1), default=None,
              help="Runs of every system, interleaved in rotating order (A B C D, B C D A, ...); the table shows "
                   "the median, min and max, ratios paired per repetition. Default: 3 on the CPU, 1 on CUDA.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write the JSON report to this file, rewritten after every system: a run killed "
                   "outright still leaves the systems it measured.")
@click.pass_context
def bench(ctx: click.Context, workload, speculative, scale, device, model, attention, hf, ablations, repeat, as_json,
          out_path) -> None:
    """Compare this engine (continuous and static) with Hugging Face on one seeded workload.

    Every system runs in this process on the same random weights, --repeat times in rotating order;
    warm-up is excluded and CUDA is synchronised. The tiny model on the CPU runs on one torch thread,
    as `cbtui scenario` runs it. Figures come with the machine they ran on.
    """
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.text import Text

    from .report import bench_table
    from .run import run_bench

    if out_path and not os.access(os.path.dirname(os.path.abspath(out_path)), os.W_OK):
        raise click.BadParameter(f"cannot write {out_path!r}: its folder is missing or read-only", param_hint="--out")
    err = Console(stderr=True)
    # Libraries may print while the systems run (transformers does when its batching loop stops):
    # to stderr with them, so stdout holds the report alone and --json stays parseable.
    with _sigterm_interrupts() as stopped_by, contextlib.redirect_stdout(sys.stderr):
        try:
            save = (lambda report: _write_json(out_path, report)) if out_path else (lambda report: None)
            report = run_bench(workload, scale=scale, device=device, model=model, attention=attention, hf=hf,
                               ablations=ablations,
                               progress=lambda msg: err.print(Text(f"bench: {visible(msg)}", style="dim")),
                               on_row=save, repeat=repeat, speculative=speculative)
            save(report)
        except ValueError as exc:
            click.echo(f"cbtui: error: {visible(str(exc))}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("cbtui: bench interrupted before its first system was measured; nothing to report", err=True)
            _exit_now(128 + stopped_by[0])
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        Console(width=max(Console().width, 160)).print(bench_table(report))
    if report.get("interrupted"):
        _exit_now(128 + stopped_by[0])


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (what `timeout` and job runners send) interrupts like Ctrl-C while the systems run,
    so a bench cut short still reports the ones it measured. Yields a cell holding the signal."""
    stopped_by = [signal.SIGINT]

    def interrupt(signum, frame):
        stopped_by[0] = signum
        raise KeyboardInterrupt

    before = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stopped_by
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _write_json(path: str, report: dict) -> None:
    """Whole or not at all: written beside the file, then renamed over it."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, path)


def _exit_now(code: int) -> None:
    """Exit with 128 + the signal, as the shell reports a signal. No interpreter teardown: a
    library's worker thread stopped mid-run (transformers' batching loop) could keep it waiting."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@bench.command("host")
@click.option("--requests", "num_requests", type=click.IntRange(min=1), default=512, show_default=True,
              help="Running (decoding) requests.")
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True)
@engine_option("policy", default="fcfs", show_default=True,
               help="static: a batch of 64 decodes while the other requests wait.")
def bench_host(num_requests: int, steps: int, policy: str) -> None:
    """Host-side overhead per step (schedule + batch build + record), model time excluded."""
    from .host import run_host_bench

    run_host_bench(num_requests, steps, policy=policy)


@bench.command("api")
@click.option("--clients", type=click.IntRange(1, 10_000), default=32, show_default=True,
              help="Streaming clients, one request each.")
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Clients arriving per second (0: all at once).")
@click.option("--prompt-tokens", type=click.IntRange(1, 2048), default=64, show_default=True)
@click.option("--max-tokens", type=click.IntRange(1, 2048), default=64, show_default=True)
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True,
              help="Runs of each path, interleaved (in-process, HTTP; HTTP, in-process; ...).")
@engine_option("device", default="cpu", show_default=True)
@click.option("--model", type=click.Choice(list(MODELS)), default="tiny", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
def bench_api(clients, rate, prompt_tokens, max_tokens, repeat, device, model, as_json) -> None:
    """What the HTTP path costs: the same streaming workload through `cbtui api`'s server and in-process
    (the same engine thread and hub, no HTTP); TTFT, inter-token latency and throughput, and their ratio."""
    from .api import run_api_bench, table_lines

    try:
        result = run_api_bench(clients, rate, prompt_tokens, max_tokens, repeat, model=model, device=device,
                               progress=lambda line: click.echo(line, err=True))
    except ValueError as exc:
        click.echo(f"cbtui: error: {visible(str(exc))}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    for line in table_lines(result):
        click.echo(line)


@bench.command("soak")
@click.option("--requests", "num_requests", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Requests to finish, added as others finish.")
@click.option("--alive", type=click.IntRange(min=1), default=512, show_default=True,
              help="Requests in the engine at a time.")
@click.option("--model", type=click.Choice(["null", "tiny"]), default="null", show_default=True,
              help="null: zero logits at once, so a step is host work only (scheduling, batch, record); "
                   "tiny: the real forward pass on the CPU.")
@click.option("--checkpoints", type=click.IntRange(min=1), default=10, show_default=True,
              help="Rows in the table, one per 1/N of the requests.")
@click.option("--json", "as_json", is_flag=True, help="Print the checkpoints as JSON instead of a table.")
def bench_soak(num_requests: int, alive: int, model: str, checkpoints: int, as_json: bool) -> None:
    """Many requests with turnover through one engine: does a step grow with the requests already served?

    At each checkpoint: step time (median and worst over the window), the StepRecord's share, the request
    views a record holds, resident memory and the longest garbage-collector pause. Only aggregates are kept.
    """
    from rich.console import Console
    from rich.table import Table

    from .soak import COLUMNS, as_dict, row, run_soak, title

    err = Console(stderr=True)
    heading = title(num_requests, alive, model)
    err.print(f"[dim]{heading}[/dim]", soft_wrap=True)

    def show(point) -> None:
        line = " · ".join(f"{c} {v}" for c, v in zip(COLUMNS, row(point), strict=True))
        err.print(f"[dim]bench soak: {line}[/dim]", soft_wrap=True)

    try:
        points = run_soak(num_requests, alive, model, checkpoints, on_checkpoint=show)
    except ValueError as exc:
        click.echo(f"cbtui: error: {exc}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps({"title": heading, "checkpoints": as_dict(points)}, indent=1))
        return
    table = Table(title=heading, title_justify="left")
    for col in COLUMNS:
        table.add_column(col, justify="right")
    for point in points:
        table.add_row(*row(point))
    table.caption = ("each row: the window since the previous one; views/record: request views in the window's last "
                     "record (the live requests, if a step depends on them only); RSS: resident memory at the row")
    table.caption_justify = "left"
    Console(width=max(Console().width, 160)).print(table)


@bench.command("ui")
@click.option("--repeat", type=click.IntRange(min=1), default=30, show_default=True,
              help="Mask frames timed per batch shape and panel size.")
@click.option("--presses", type=click.IntRange(min=1), default=20, show_default=True,
              help="Key presses timed with the engine at full speed.")
@engine_option("device", default="auto", show_default=True)
def bench_ui(repeat: int, presses: int, device: str) -> None:
    """Dashboard: mask panel frame time for a huge step, and key latency under load."""
    from .ui import run_ui_bench

    run_ui_bench(repeat, presses, device)


@bench.command("real")
@engine_option("model", default="smollm2", show_default=True,
              help="smollm2, a .gguf file, a Hugging Face checkpoint directory, a Hub name, or a preset.")
@click.option("--requests", "requests", type=click.IntRange(min=1), multiple=True,
              help="Concurrent requests (repeatable). Default: 16 and 64.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Runs of every system, interleaved in rotating order.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto", show_default=True,
              help="Ours' and transformers' dtype. auto: what the engine picks for this model on this CPU.")
@click.option("--compare-dtype", type=click.Choice(["float32", "bfloat16"]), default=None,
              help="Add a row of ours continuous in this dtype (its tokens compared with the main dtype's).")
@click.option("--gather-decode", is_flag=True,
              help="Add a row of ours continuous with decodes through the block gather instead of the CPU "
                   "decode kernel: what the kernel is worth, in the same run.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads (default: the CPUs this process may run on).")
@click.option("--hf/--no-hf", default=True, show_default=True, help="Include transformers.")
@click.option("--generate-batch/--no-generate-batch", default=True, show_default=True,
              help="Include transformers' generate_batch (at 16 requests or fewer unless --generate-batch-all).")
@click.option("--generate-batch-all", is_flag=True, help="Run generate_batch at every request count.")
@click.option("--llama-cpp/--no-llama-cpp", default=True, show_default=True,
              help="Include llama.cpp (llama-cpp-python, where installed) on the model's GGUF file as is.")
@click.option("--stop-at-eos", is_flag=True,
              help="Each request ends at the model's end of sequence (at most --max-new-tokens), as a chat "
                   "client's does; without it every request generates exactly --max-new-tokens.")
@click.option("--breakdown", is_flag=True,
              help="Also time one run of ours continuous by part (linear layers, attention, output head, "
                   "sampling, host), for prefill and decode steps.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def bench_real(model, requests, max_new_tokens, repeats, dtype, compare_dtype, gather_decode, threads, hf,
               generate_batch, generate_batch_all, llama_cpp, stop_at_eos, breakdown, as_json) -> None:
    """A real model's chat prompts: ours (continuous, static) vs transformers (padded generate,
    generate_batch) and llama.cpp, tokens compared, and the run's GFLOP/s against this machine's matmul."""
    from rich.console import Console

    from engine.models.source import model_spec
    from engine.runner.cpu_dtype import default_cpu_dtype

    from .real import run_real
    from .real_report import heading, size_lines
    from .report import bench_table

    err = Console(stderr=True)
    try:
        model_spec(model)
        chosen = default_cpu_dtype(model) if dtype == "auto" else dtype
        with _sigterm_interrupts(), contextlib.redirect_stdout(sys.stderr):
            report = run_real(model, tuple(requests) or (16, 64), max_new_tokens, repeats, chosen, threads, hf,
                              generate_batch, compare_dtype, generate_batch_all, stop_at_eos, llama_cpp,
                              gather_decode, progress=lambda msg: err.print(f"[dim]bench real: {msg}[/dim]"))
            if breakdown:
                from .breakdown import run_breakdown

                report["breakdown"] = run_breakdown(model, tuple(requests) or (16, 64), max_new_tokens, chosen,
                                                    report["threads"], stop_at_eos)
    except ValueError as exc:
        click.echo(f"cbtui: error: {visible(str(exc))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("cbtui: bench real interrupted", err=True)
        _exit_now(130)
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    out = Console(width=max(Console().width, 160))
    out.print(heading(report), soft_wrap=True)
    for size in report["sizes"]:
        out.print(bench_table(size["report"]))
        for line in size_lines(size, report["stop_at_eos"]):
            out.print(line, soft_wrap=True)
    if breakdown:
        from .breakdown import breakdown_table

        out.print(breakdown_table(report["breakdown"]))
