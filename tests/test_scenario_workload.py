"""Workloads: explicit requests and seeded generators (distributions, arrival processes)."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

from scenarios import loads


def workload(text: str) -> list[dict]:
    return loads(text, "w.toml").requests


def test_text_prompt_stays_text_and_prompt_len_is_printable():
    """Text is encoded by the engine's tokenizer (bytes for a preset, a checkpoint's own for --model DIR)."""
    reqs = workload('[[requests]]\nprompt = "héllo"\n[[requests]]\nprompt_len = 50\n')
    assert reqs[0]["prompt"] == "héllo"
    engine = loads('[[requests]]\nprompt = "héllo"\n', "w.toml").build_engine()
    assert engine.requests[0].prompt == list("héllo".encode())
    assert len(reqs[1]["prompt"]) == 50 and all(32 <= t < 127 for t in reqs[1]["prompt"])
    assert reqs[0]["max_new_tokens"] == 16 and reqs[0]["arrival_step"] == 0 and reqs[0]["priority"] == 0


def test_same_seed_same_workload_other_seed_other_workload():
    text = "seed = {}\n[[generators]]\ncount = 6\narrival = 'uniform'\narrival_span = 20\n"
    assert workload(text.format(1)) == workload(text.format(1))
    assert workload(text.format(1)) != workload(text.format(2))


def test_adding_a_generator_keeps_the_earlier_requests():
    one = "seed = 4\n[[generators]]\ncount = 5\nprompt_len = [3, 30]\n"
    two = one + "[[generators]]\ncount = 3\n"
    assert workload(two)[:5] == workload(one)


def test_distribution_forms():
    reqs = workload("[[generators]]\ncount = 200\nprompt_len = [3, 7]\nmax_new_tokens = { choice = [2, 9] }\n"
                    "priority = { uniform = [-1, 1] }\n"
                    "[[generators]]\ncount = 5\nprompt_len = { fixed = 4 }\nmax_new_tokens = 6\n")
    wide, fixed = reqs[:200], reqs[200:]
    assert {len(r["prompt"]) for r in wide} == {3, 4, 5, 6, 7}
    assert {r["max_new_tokens"] for r in wide} == {2, 9}
    assert {r["priority"] for r in wide} == {-1, 0, 1}
    assert {(len(r["prompt"]), r["max_new_tokens"]) for r in fixed} == {(4, 6)}


def test_all_at_once_and_uniform_arrivals():
    reqs = workload("[[generators]]\ncount = 4\narrival_start = 3\n"
                    "[[generators]]\ncount = 300\narrival = 'uniform'\narrival_start = 10\narrival_span = 5\n")
    assert [r["arrival_step"] for r in reqs[:4]] == [3, 3, 3, 3]
    assert {r["arrival_step"] for r in reqs[4:]} == set(range(10, 16))


def test_poisson_bursts():
    reqs = workload("seed = 2\n[[generators]]\ncount = 60\narrival = 'poisson'\nrate = 0.5\n"
                    "burst_size = [3, 5]\narrival_start = 7\n")
    steps = [r["arrival_step"] for r in reqs]
    assert len(steps) == 60 and steps == sorted(steps) and steps[0] == 7
    sizes = list(Counter(steps).values())
    # Bursts of 3 to 5 (two can land on one step at this rate; the last may be cut short).
    assert all(s >= 3 for s in sizes[:-1]) and max(sizes) >= 5
    gaps = [b - a for a, b in pairwise(sorted(set(steps)))]
    assert len(set(gaps)) > 1  # exponential gaps, not a fixed period
    # Mean gap near 1 / rate = 2 steps per burst (counted per burst start).
    assert 1.0 <= (steps[-1] - steps[0]) / (60 / 4) <= 3.5


def test_sampling_settings_reach_the_requests():
    reqs = workload("[[generators]]\ncount = 2\ntemperature = 0.8\ntop_k = 10\n"
                    "[[requests]]\nprompt = 'x'\ntemperature = 1\nseed = 3\ndeadline_step = 12\n")
    assert reqs[0]["temperature"] == 1.0 and reqs[0]["seed"] == 3 and reqs[0]["deadline_step"] == 12
    assert all(r["temperature"] == 0.8 and r["top_k"] == 10 for r in reqs[1:])
