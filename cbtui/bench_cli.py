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
