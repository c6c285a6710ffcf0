"""MetricsCollector on hand-made records (values worked out by hand) and on real scenario runs."""

import csv
import json
import subprocess
import sys
from dataclasses import asdict, fields

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from engine.records import KVView, MemoryView, RequestView, StepRecord
from engine.records.metrics import MetricsCollector, RequestMetrics, StepStats
from engine.records.metrics_export import export_metrics, steps_csv_path, write_csv, write_json
from engine.records.output_files import OutputFileError
from engine.records.stats import describe, histogram, linear_slope, percentile
from engine.records.summary import final_views
from scenarios import load_scenario

# Two requests over five steps. Request 0 arrives at step 0 and samples at steps 0, 1, 3 (finishes at 3);
# request 1 arrives at step 1 and samples at steps 2, 3, 4 (finishes at 4).
WALLS = [1.0, 0.5, 0.25, 2.0, 0.25]  # starts 0, 1, 1.5, 1.75, 3.75; ends 1, 1.5, 1.75, 3.75, 4
TOKENS = {0: [0, 1, 3], 1: [2, 3, 4]}
ARRIVAL = {0: 0, 1: 1}


def make_record(step, wall, sampled, finished, views, decode=0, prefill=0, rss=1000):
    kv = KVView("paged", 8, 16, 2, 14, {}, {}, [], 64, 1024)
    return StepRecord(step=step, policy="continuous", budget=8, decode_tokens=decode, prefill_tokens=prefill,
                      unused_tokens=8 - decode - prefill, decode_demand=0, decode_cap=None, items=[],
                      requests=views, kv=kv, preempted=[], finished=finished,
                      sampled={str(r): 7 for r in sampled}, running=len(views), waiting=0, finished_total=0,
                      pending=0, padding_slots=0, wall_time_s=wall,
                      memory=MemoryView("rss", 0, 0, rss, 500, 1024))


def hand_records():
    records = []
    for step, wall in enumerate(WALLS):
        views = []
        for rid, arrival in ARRIVAL.items():
            done = [s for s in TOKENS[rid] if s <= step]
            state = "pending" if step < arrival else ("finished" if len(done) == 3 else "decode")
            first = done[0] - arrival if done else None
            views.append(RequestView(rid, state, 4, 4, len(done), 3, arrival, 0, first, None, 0, []))
        sampled = [rid for rid in TOKENS if step in TOKENS[rid]]
        finished = [rid for rid in TOKENS if TOKENS[rid][-1] == step]
        records.append(make_record(step, wall, sampled, finished, views, decode=len(sampled), prefill=2,
                                   rss=1000 + 10 * step))
    return records


def collected(records):
    m = MetricsCollector()
    for rec in records:
        m.observe(rec)
    return m


def test_hand_made_request_metrics():
    m = collected(hand_records())
    r0, r1 = m.request(0), m.request(1)
    assert (r0.ttft_steps, r0.e2e_steps, r0.itl_steps, r0.tpot_steps, r0.max_itl_steps) == (0, 3, [1, 2], 1.5, 2)
    assert r0.ttft_s == pytest.approx(1.0) and r0.e2e_s == pytest.approx(3.75)
    assert r0.itl_s == pytest.approx([0.5, 2.25]) and r0.tpot_s == pytest.approx(1.375)
    assert (r1.ttft_steps, r1.e2e_steps, r1.itl_steps, r1.tpot_steps) == (1, 3, [1, 1], 1.0)
    assert r1.ttft_s == pytest.approx(0.75) and r1.e2e_s == pytest.approx(3.0)
    assert r1.itl_s == pytest.approx([2.0, 0.25]) and r1.tpot_s == pytest.approx(1.125)
    assert r0.first_token_step == 0 and r1.finished_step == 4 and r1.state == "finished"


def test_hand_made_summary_and_steps():
    m = collected(hand_records())
    s = m.summary()
    assert s["steps"] == 5 and s["engine_time_s"] == pytest.approx(4.0) and s["finished_requests"] == 2
    t = s["throughput"]
    assert t["output_tokens"] == 6 and t["processed_tokens"] == 16
    assert t["output_tokens_per_s"] == pytest.approx(1.5) and t["budget_utilisation"] == pytest.approx(16 / 40)
    assert s["ttft_steps"]["mean"] == 0.5 and s["ttft_steps"]["max"] == 1
    assert s["itl_steps"]["count"] == 4 and s["itl_steps"]["max"] == 2 and s["itl_steps"]["p50"] == 1.0
    assert s["e2e_s"]["min"] == pytest.approx(3.0) and s["e2e_s"]["max"] == pytest.approx(3.75)
    assert s["memory"]["peak_rss_bytes"] == 1040
    steps = m.steps
    assert [st_.start_s for st_ in steps] == pytest.approx([0, 1.0, 1.5, 1.75, 3.75])
    assert [st_.output_tokens for st_ in steps] == [1, 1, 1, 2, 1]
    assert steps[3].tokens_per_s == pytest.approx(4 / 2.0) and steps[3].finished == 1
    # Output tokens per second over the last two steps, at each step.
    assert m.throughput_series(window=2) == pytest.approx(
        [(0, 1.0), (1, 2 / 1.5), (2, 2 / 0.75), (3, 3 / 2.25), (4, 3 / 2.25)])


def test_unfinished_and_unobserved_arrival():
    # Observed from step 2 on: request 1 arrived at step 1 (not seen), so its seconds are unknown but
    # its steps are not; nothing finished before step 3 is half-counted.
    m = collected(hand_records()[2:4])
    r1 = m.request(1)
    assert r1.ttft_steps == 1 and r1.ttft_s is None and r1.e2e_steps is None and r1.e2e_s is None
    assert r1.itl_steps == [1] and r1.tpot_s == pytest.approx(2.0)
    with pytest.raises(KeyError, match="request 9"):
        m.request(9)


def test_request_added_mid_run_with_a_past_arrival_step_arrives_when_first_seen():
    # add_request(..., arrival_step=0) at step 5 runs at once; from step 5 on, not from 0.
    records = hand_records()
    late = RequestView(2, "decode", 4, 4, 1, 3, 0, 0, 3, None, 0, [])
    records[3].requests.append(late)
    records[3].sampled["2"] = 7
    m = collected(records)
    r2 = m.request(2)
    assert (r2.arrival_step, r2.ttft_steps, r2.ttft_s) == (3, 0, pytest.approx(2.0))
    assert m.request(1).arrival_step == 1  # seen as pending before it arrived: its own arrival step


def test_records_out_of_order_are_refused():
    recs = hand_records()
    m = collected(recs[:3])
    with pytest.raises(ValueError, match="step order"):
        m.observe(recs[1])


def test_malformed_records_are_refused_without_half_state():
    recs = hand_records()
    m = collected(recs[:2])
    bad = hand_records()[2]
    bad.sampled["9"] = 1
    with pytest.raises(ValueError, match="request 9 sampled or finished but not in record.requests"):
        m.observe(bad)
    nan = hand_records()[2]
    nan.wall_time_s = float("nan")
    with pytest.raises(ValueError, match="wall_time_s=nan"):
        m.observe(nan)
    for rec in recs[2:]:  # the collector is as it was: the good records still give the hand-made numbers
        m.observe(rec)
    assert m.engine_time_s == pytest.approx(4.0) and m.request(0).itl_steps == [1, 2]


def test_empty_collector_summary():
    s = MetricsCollector().summary()
    assert s["steps"] == 0 and s["throughput"]["output_tokens_per_s"] is None
    assert s["ttft_steps"] == {"count": 0, "mean": None, "min": None, "max": None, "p50": None, "p90": None,
                               "p95": None, "p99": None}


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=40), st.sampled_from([0, 10, 50, 90, 95, 99, 100]))
def test_percentile_matches_torch_quantile(values, q):
    expected = torch.quantile(torch.tensor(values, dtype=torch.float64), q / 100).item()
    assert percentile(values, q) == pytest.approx(expected, rel=1e-9, abs=1e-6)


def test_latencies_feed_a_histogram():
    m = collected(hand_records())
    assert m.latencies("itl_steps") == [1, 2, 1, 1] and m.latencies("ttft_steps") == [0, 1]
    assert histogram(m.latencies("itl_steps"), bins=2) == [(1, 1.5, 3), (1.5, 2, 1)]
    assert histogram([3, 3], bins=4) == [(3, 3, 2)] and histogram([], bins=3) == []
    assert sum(c for _, _, c in histogram(m.latencies("itl_s"), bins=3)) == 4
    with pytest.raises(ValueError, match="unknown latency 'ttft'"):
        m.latencies("ttft")
    with pytest.raises(ValueError, match="bins"):
        histogram([1], bins=0)


def test_stats_helpers():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert describe([None, 3, 1])["count"] == 2
    assert linear_slope([5, 7, 9, 11]) == pytest.approx(2.0) and linear_slope([3]) == 0.0
    with pytest.raises(ValueError):
        percentile([], 50)


def run_scenario(name):
    engine = load_scenario(name).build_engine(device="cpu")
    m, records = MetricsCollector(), []
    while engine.has_unfinished():
        records.append(engine.step())
        m.observe(records[-1])
    return engine, m, records


def test_real_run_agrees_with_engine():
    engine, m, records = run_scenario("kv_pressure")  # has preemptions: stalls between tokens
    stalls = 0
    for view in final_views(records).values():
        got = m.request(view.id)
        req = engine.requests[view.id]
        assert got.ttft_steps == view.ttft_steps
        assert got.first_token_step == req.first_token_step and got.finished_step == req.finished_step
        assert got.generated == len(req.output) == len(got.itl_steps) + 1
        assert got.e2e_steps == req.finished_step - req.arrival_step
        # Engine seconds: the sum of the step walls from the arrival step to the token's step.
        walls = [r.wall_time_s for r in records]
        assert got.ttft_s == pytest.approx(sum(walls[req.arrival_step:req.first_token_step + 1]))
        assert got.e2e_s == pytest.approx(sum(walls[req.arrival_step:req.finished_step + 1]))
        preempted_at = [r.step for r in records if view.id in r.preempted]
        stalled = [s for s in preempted_at if s > req.first_token_step]
        if stalled:  # preempted while decoding: it waited to be recomputed
            assert got.max_itl_steps > 1
            stalls += 1
    assert stalls
    s = m.summary()
    assert s["throughput"]["output_tokens"] == sum(len(r.output) for r in engine.requests.values())
    assert s["throughput"]["processed_tokens"] == sum(r.decode_tokens + r.prefill_tokens for r in records)
    assert s["engine_time_s"] == pytest.approx(sum(r.wall_time_s for r in records))


def test_decode_cap_shows_as_inter_token_gaps():
    # decode_heavy: 16 requests want to decode, the cap lets 8; left-out decodes go first next step,
    # so no request waits more than one extra step between tokens.
    _, m, _ = run_scenario("decode_heavy")
    s = m.summary()
    assert s["itl_steps"]["max"] == 2 and s["itl_steps"]["min"] == 1
    assert 1 < s["tpot_steps"]["max"] <= 2


# -- export ------------------------------------------------------------------------------------
def _parse(value: str, like):
    if value == "":
        return None
    if isinstance(like, bool):
        return value == "True"
    if isinstance(like, int):
        return int(value)
    if isinstance(like, float):
        return float(value)
    return value


def test_json_round_trip(tmp_path):
    m = collected(hand_records())
    (path,) = export_metrics(m, tmp_path / "run.json")
    assert json.loads(path.read_text()) == m.to_dict()


def test_csv_round_trip(tmp_path):
    m = collected(hand_records()[:4])  # request 1 unfinished: empty cells for None
    paths = export_metrics(m, tmp_path / "run.csv")
    assert paths == [tmp_path / "run.csv", tmp_path / "run.steps.csv"] == [tmp_path / "run.csv",
                                                                           steps_csv_path(tmp_path / "run.csv")]
    with open(paths[0], newline="") as f:
        rows = list(csv.DictReader(f))
    expected = [asdict(r) for r in m.requests()]
    assert len(rows) == 2
    for row, want in zip(rows, expected, strict=True):
        assert set(row) == {f.name for f in fields(RequestMetrics)} - {"itl_steps", "itl_s"}
        for k, v in row.items():
            like = want[k] if want[k] is not None else 0.0
            assert _parse(v, like) == want[k], k
    with open(paths[1], newline="") as f:
        steps = list(csv.DictReader(f))
    assert [int(r["step"]) for r in steps] == [0, 1, 2, 3]
    for row, want in zip(steps, m.steps, strict=True):
        assert {k: _parse(v, getattr(want, k)) for k, v in row.items()} == asdict(want)
    assert list(steps[0]) == [f.name for f in fields(StepStats)]


@pytest.mark.parametrize("name, message", [
    ("run.txt", "unknown metrics format '.txt'"),
    ("run", "unknown metrics format '(no suffix)'"),
    ("missing/run.json", "does not exist"),
    ("", "empty"),
])
def test_export_path_errors(tmp_path, name, message):
    path = tmp_path / name if name else ""
    with pytest.raises(OutputFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        export_metrics(MetricsCollector(), path)


def test_export_refuses_directories(tmp_path):
    (tmp_path / "d.json").mkdir()
    with pytest.raises(OutputFileError, match="is a directory"):
        write_json(MetricsCollector(), tmp_path / "d.json")
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputFileError, match="is not a directory"):
        write_csv(MetricsCollector(), tmp_path / "f" / "run.csv")
    with pytest.raises(OutputFileError, match="ending in .csv"):
        write_csv(MetricsCollector(), tmp_path / "run.json")


# -- command line --------------------------------------------------------------------------------
def cli(*args):
    return subprocess.run([sys.executable, "-m", "cbtui", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_metrics_out_json(tmp_path):
    out = tmp_path / "m.json"
    res = cli("scenario", "decode_heavy", "--json", "--metrics-out", str(out))
    assert res.returncode == 0, res.stderr
    header, *records = [json.loads(line) for line in res.stdout.splitlines()]  # stdout stays pure records
    assert header["kind"] == "header"
    data = json.loads(out.read_text())
    assert f"metrics written to {out}" in res.stderr
    assert data["summary"]["steps"] == len(records) == len(data["steps"])
    final = {v["id"]: v for r in records for v in r["requests"]}  # each request's last view
    assert [r["ttft_steps"] for r in data["requests"]] == [final[r["id"]]["ttft_steps"] for r in data["requests"]]
    assert sorted(r["id"] for r in data["requests"]) == sorted(final)


@pytest.mark.slow
def test_cli_metrics_out_bad_path_fails_before_running(tmp_path):
    res = cli("scenario", "decode_heavy", "--headless", "--metrics-out", str(tmp_path / "no" / "m.csv"))
    assert res.returncode == 2 and "step " not in res.stdout
    assert res.stderr.strip() == f"cbtui: error: {tmp_path / 'no' / 'm.csv'}: directory {tmp_path / 'no'} " \
                                 f"does not exist"
    res = cli("scenario", "decode_heavy", "--metrics-out", str(tmp_path / "no" / "m.json"))  # the dashboard too
    assert res.returncode == 2 and "does not exist" in res.stderr and res.stderr.count("\n") == 1
