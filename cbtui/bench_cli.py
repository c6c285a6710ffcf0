"""`cbtui bench ...`: benchmarks are commands, never timed unit tests.

Subcommands live in their own modules and are imported lazily, so `cbtui --help` stays fast.
"""

from __future__ import annotations

import click


@click.group("bench", invoke_without_command=True)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Measure the engine and the dashboard; figures come with the machine they ran on."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@bench.command("host")
@click.option("--requests", "num_requests", type=click.IntRange(min=1), default=512, show_default=True,
              help="Running (decoding) requests.")
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True)
def bench_host(num_requests: int, steps: int) -> None:
    """Host-side overhead per step (schedule + batch build + record), model time excluded."""
    from .bench_host import run_host_bench

    run_host_bench(num_requests, steps)


@bench.command("ui")
@click.option("--repeat", type=click.IntRange(min=1), default=30, show_default=True,
              help="Mask frames timed per batch shape and panel size.")
@click.option("--presses", type=click.IntRange(min=1), default=20, show_default=True,
              help="Key presses timed with the engine at full speed.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def bench_ui(repeat: int, presses: int, device: str) -> None:
    """Dashboard: mask panel frame time for a huge step, and key latency under load."""
    from .bench_ui import run_ui_bench

    run_ui_bench(repeat, presses, device)
