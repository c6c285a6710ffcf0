"""`cbtui bench api` on a workload small enough for a test: both paths run every client to the
end with the same tokens, the report pairs them, and the table shows every figure."""

from __future__ import annotations

from click.testing import CliRunner

from cbtui.bench.api import run_api_bench, table_lines
from cbtui.cli import main


def test_both_paths_serve_every_client_and_the_ratios_pair_them():
    result = run_api_bench(clients=3, rate=50, prompt_tokens=12, max_tokens=5, repeat=2)
    for path in ("in-process", "http"):
        assert len(result["runs"][path]) == 2
        assert all(r["output_tok_s"] > 0 and r["ttft_p50_ms"] > 0 for r in result["runs"][path])
    ratios = result["http_over_in_process"]
    runs = result["runs"]
    expected = sorted(h["ttft_p50_ms"] / p["ttft_p50_ms"] for h, p in zip(runs["http"], runs["in-process"],
                                                                          strict=True))
    assert ratios["ttft_p50_ms"] == sum(expected) / 2  # the median of the paired ratios
    lines = table_lines(result)
    assert lines[0].startswith("bench api: 3 streaming clients (50/s), prompts of 12 tokens, 5 new each")
    assert [line.split()[0] for line in lines[4:7]] == ["in-process", "http", "http"]
    assert "load" in lines[1]


def test_the_command_runs_and_refuses_a_bad_rate():
    runner = CliRunner()
    done = runner.invoke(main, ["bench", "api", "--clients", "2", "--max-tokens", "3", "--prompt-tokens", "8",
                                "--repeat", "1"], standalone_mode=False)
    assert done.exception is None, done.output
    assert "http / in" in done.output
    bad = runner.invoke(main, ["bench", "api", "--rate", "-1"], standalone_mode=False)
    assert bad.exception is not None
