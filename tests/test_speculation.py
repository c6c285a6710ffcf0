"""Speculative decoding's pieces: prompt lookup, the rejection rule (statistically), the records."""

import pytest
import torch
from helpers import exact_config, run_batched
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Engine, EngineConfig
from engine.speculation.acceptance import greedy_accept, rejection_sample
from engine.speculation.ngram import propose_ngram

# Chi-square critical values at p = 0.001 (a seeded test: fixed draws, far from flaky either way).
CHI2_CRITICAL_0001 = {5: 20.52}


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs.double() * counts.sum()
    return float(((counts.double() - expected) ** 2 / expected).sum())


def test_ngram_proposes_what_followed_the_latest_match():
    assert propose_ngram([1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3], 2) == [7, 5]  # latest occurrence of 1 2 3
    assert propose_ngram([4, 5, 6], 3) == []  # nothing repeats
    assert propose_ngram([8, 1, 2, 8, 1], 3, max_n=2) == [2, 8, 1]


def test_ngram_copies_a_short_loop_past_its_end():
    """A period shorter than k still gives k drafts: the copy runs into the drafts already made."""
    assert propose_ngram([5, 1, 2, 1, 2, 1, 2], 5) == [1, 2, 1, 2, 1]
    assert propose_ngram([3, 3, 3], 4) == [3, 3, 3, 3]


def test_greedy_acceptance_is_the_longest_matching_prefix():
    assert greedy_accept([4, 5, 6, 7], [4, 5, 9]) == 2
    assert greedy_accept([4, 5, 6, 7], [1, 5, 6]) == 0
    assert greedy_accept([4, 5, 6, 7], [4, 5, 6]) == 3


def _distributions(seed: int, rows: int, vocab: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn((rows, vocab), generator=gen, dtype=torch.float64), dim=-1)


def test_rejection_sampling_gives_the_target_distribution():
    """Drafts drawn from a draft distribution q, verified against the target p: the first token
    emitted follows p_0, and, when the first draft stood, the second follows p_1 (chi-square,
    vocabulary of 6, 6,000 seeded trials)."""
    vocab, trials = 6, 6000
    p, q = _distributions(1, 3, vocab), _distributions(2, 2, vocab)
    gen = torch.Generator().manual_seed(3)
    first, second = torch.zeros(vocab), torch.zeros(vocab)
    drafts_all = torch.stack([torch.multinomial(q[i], trials, replacement=True, generator=gen) for i in range(2)], 1)
    for drafts in drafts_all.tolist():
        accepted, token = rejection_sample(p, drafts, q, gen)
        emitted = drafts[:accepted] + [token]
        first[emitted[0]] += 1
        if accepted >= 1:
            second[emitted[1]] += 1
    assert chi_square(first, p[0]) < CHI2_CRITICAL_0001[vocab - 1]
    assert second.sum() > 1000 and chi_square(second, p[1]) < CHI2_CRITICAL_0001[vocab - 1]
    # The test can fail: the first token against the draft's own distribution is far off.
    assert chi_square(first, q[0]) > 10 * CHI2_CRITICAL_0001[vocab - 1]


def test_rejection_sampling_of_a_lookup_proposal_gives_the_target_distribution():
    """A lookup's drafts are fixed tokens (a point mass): the emitted token still follows p_0."""
    vocab, trials = 6, 6000
    p = _distributions(4, 3, vocab)
    gen = torch.Generator().manual_seed(5)
    counts = torch.zeros(vocab)
    for _ in range(trials):
        accepted, token = rejection_sample(p, [2, 4], None, gen)
        counts[([2, 4][:accepted] + [token])[0]] += 1
    assert chi_square(counts, p[0]) < CHI2_CRITICAL_0001[vocab - 1]


def test_a_sampled_request_with_a_draft_equal_to_the_target_accepts_every_draft():
    """Sampling (temperature 0.8): a draft model identical to the target proposes from p itself, so
    the rule min(1, p/q) keeps every draft."""
    config = exact_config(speculative="draft", draft_model="tiny", num_speculative_tokens=3)
    _, records, eng = run_batched(config, [{"prompt": [1, 2, 3], "max_new_tokens": 13, "temperature": 0.8,
                                            "seed": 7}])
    assert len(eng.requests[0].output) == 13
    assert sum(r.draft_tokens for r in records) == sum(r.accepted_tokens for r in records) > 0


def test_records_count_drafts_per_item_request_and_step():
    workload = [{"prompt": [7, 8, 9] * 6, "max_new_tokens": 40}]
    _, records, eng = run_batched(exact_config(speculative="ngram", num_speculative_tokens=3), workload)
    speculating = [i for r in records for i in r.items if i.drafts]
    assert speculating and all(i.kind == "decode" and i.num_tokens == 1 + i.drafts for i in speculating)
    proposed = sum(i.drafts for i in speculating)
    accepted = sum(i.accepted for i in speculating)
    assert proposed == sum(r.draft_tokens for r in records)
    last = records[-1].requests[0]
    assert (last.drafts_proposed, last.drafts_accepted) == (proposed, accepted)
    # Round trip through JSON keeps the counts.
    from engine.records import StepRecord
    again = [StepRecord.from_dict(r.to_dict()) for r in records]
    assert sum(r.accepted_tokens for r in again) == accepted


def test_bad_speculative_settings_say_what_to_change():
    import pytest
    with pytest.raises(ValueError, match="speculative='eagle'"):
        EngineConfig(speculative="eagle")
    with pytest.raises(ValueError, match="num_speculative_tokens=0"):
        EngineConfig(speculative="ngram", num_speculative_tokens=0)
    with pytest.raises(ValueError, match="overlap_steps"):
        EngineConfig(speculative="ngram", overlap_steps=True)
    with pytest.raises(ValueError, match="vocabulary"):
        Engine(EngineConfig(model="small", device="cpu", speculative="draft", draft_model="micro",
                            num_blocks=4))


def test_metrics_count_every_emitted_token_and_the_acceptance():
    from engine.records.metrics import MetricsCollector
    from engine.records.summary import summarize

    workload = [{"prompt": [7, 8, 9] * 6, "max_new_tokens": 40}, {"prompt": [1, 2] * 5, "max_new_tokens": 30}]
    outputs, records, _ = run_batched(exact_config(speculative="ngram", num_speculative_tokens=4), workload)
    metrics = MetricsCollector()
    for rec in records:
        metrics.observe(rec)
    summary = metrics.summary()
    assert summary["throughput"]["output_tokens"] == sum(map(len, outputs)) == 70
    spec = summary["speculation"]
    proposed, accepted = sum(r.draft_tokens for r in records), sum(r.accepted_tokens for r in records)
    assert (spec["drafts_proposed"], spec["drafts_accepted"]) == (proposed, accepted) and accepted > 0
    assert spec["acceptance_rate"] == accepted / proposed
    assert spec["tokens_per_step_per_request"] > 1
    per_request = metrics.requests()
    assert sum(r.drafts_accepted for r in per_request) == accepted
    assert all(len(r.itl_steps) == len(out) - 1 for r, out in zip(per_request, outputs, strict=True))
    # Rejected drafts were fed to the model, but they are not recompute (nothing was preempted).
    run = summarize(records)
    assert run.recomputed == 0 and (run.drafts_proposed, run.drafts_accepted) == (proposed, accepted)
    assert run.steps < 70


def _cli(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "cbtui", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_speculative_flag_runs_and_bad_values_are_one_line():
    done = _cli("scenario", "mixed_load", "--headless", "--steps", "12", "--speculative", "ngram")
    assert done.returncode == 0 and "speculative=ngram k=4" in done.stdout
    bad = _cli("scenario", "mixed_load", "--headless", "--speculative", "eagle")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert "--speculative" in bad.stderr and "ngram" in bad.stderr


def test_scenario_files_take_the_speculative_keys(tmp_path):
    from scenarios import load_scenario
    from scenarios.errors import ScenarioError
    good = tmp_path / "s.toml"
    good.write_text('title = "t"\ndescription = "d"\nquestion = "q?"\n[engine]\nspeculative = "draft"\n'
                    'num_speculative_tokens = 2\ndraft_model = "tiny"\n[[requests]]\nprompt = "ab"\n'
                    '[compare.off]\nspeculative = "off"\n')
    scenario = load_scenario(str(good))
    speculation = scenario.engine_config().speculation
    assert speculation is not None and speculation.method == "draft"
    assert scenario.engine_config("off").speculation is None
    bad = tmp_path / "b.toml"
    bad.write_text(good.read_text().replace('speculative = "draft"', 'speculative = "ngarm"'))
    import pytest
    with pytest.raises(ScenarioError, match="did you mean 'ngram'"):
        load_scenario(str(bad))


def test_adaptive_k_cuts_the_drafts_of_a_request_whose_drafts_are_rejected():
    """A 'micro' draft model is almost never right: with adaptive_speculation each request drops to
    k = 1 once it has had 8 drafts verified, so far fewer drafts are spent; the tokens are the same."""
    from engine.plugins.builtin.adaptive_speculation import AdaptiveSpeculationPlugin

    workload = [{"prompt": list(range(5 * i, 5 * i + 6)), "max_new_tokens": 30} for i in range(3)]
    config = exact_config(speculative="draft", draft_model="micro", num_speculative_tokens=4)
    fixed_out, fixed, _ = run_batched(config, workload)
    eng = Engine(config, plugins=[AdaptiveSpeculationPlugin(warmup=8)])
    for spec in workload:
        eng.add_request(**spec)
    adaptive = []
    while eng.has_unfinished():
        adaptive.append(eng.step())
    assert [eng.requests[i].output for i in range(3)] == fixed_out
    late = [i for r in adaptive[-10:] for i in r.items if i.drafts]
    assert late and all(i.drafts == 1 for i in late)
    assert sum(r.draft_tokens for r in adaptive) < sum(r.draft_tokens for r in fixed) / 2
    assert "adaptive k 1..1 of 4" in adaptive[-2].annotations


def test_a_plugin_setting_a_bad_k_is_undone_and_disabled():
    from engine.plugins.base import SchedulerPlugin

    class BadK(SchedulerPlugin):
        name = "bad_k"

        def before_step(self, state):
            state.speculative_tokens[0] = -1

    eng = Engine(exact_config(speculative="ngram"), plugins=[BadK()])
    eng.add_request([1, 2, 1, 2, 1, 2], max_new_tokens=6)
    record = eng.step()
    assert any("speculative_tokens" in e for e in record.errors)
    eng.run_until_done()
    assert eng.requests[0].output == run_batched(exact_config(), [{"prompt": [1, 2, 1, 2, 1, 2],
                                                                   "max_new_tokens": 6}])[0][0]


def test_a_speculative_step_runs_as_decodes_on_the_fast_path():
    """Paged: a speculating decode's rows run as one-token decodes, so a step of decodes and drafts
    is a decode-only step: the decode graphs' padded path runs it ('on' runs it uncaptured on the
    CPU), with the same tokens."""
    from helpers import run_alone

    workload = [{"prompt": [4, 9, 4, 9, 4, 9, 4], "max_new_tokens": 20},
                {"prompt": [1, 2, 3] * 3, "max_new_tokens": 20}]
    config = exact_config(speculative="ngram", decode_graphs="on", attention="sdpa", block_size=4)
    outputs, records, _ = run_batched(config, workload)
    graphed = [r for r in records if r.draft_tokens and r.decode_graph is not None]
    assert graphed and graphed[0].decode_graph[0] >= graphed[0].num_query_tokens  # one row per query token
    assert outputs == [run_alone(w["prompt"], 20) for w in workload]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=60), st.lists(st.integers(1, 6), min_size=1, max_size=8))
def test_the_ngram_index_proposes_what_the_plain_scan_does_as_the_sequence_grows(tokens, ks):
    """The engine's incremental index against the rule stated as a scan, at every length, with the
    sequence growing by a few tokens at a time (as a request's output does)."""
    from engine.speculation.ngram import NgramIndex

    index = NgramIndex()
    length, step = 1, 0
    while length <= len(tokens):
        k = ks[step % len(ks)]
        assert index.propose(tokens[:length], k) == propose_ngram(tokens[:length], k)
        length += 1 + step % 3
        step += 1


def test_a_stop_token_among_the_accepted_drafts_ends_the_request_where_plain_decoding_does():
    """Drafts accepted past an end-of-sequence token must not reach the output: the request stops at
    the stop token, exactly as plain greedy decoding with the same stop id does. The target is its own
    draft here, so every draft is accepted and runs over the stop token."""
    prompt = [7, 8, 9, 7, 8, 9, 7, 8, 9]
    plain = Engine(EngineConfig(model="tiny", device="cpu", dtype="float64"))
    rid = plain.add_request(prompt, max_new_tokens=24)
    free_run = plain.run_until_done()[rid]
    for stop in {*free_run[2:12]}:  # tokens that appear a few steps in: drafts can run over them
        outputs = []
        for speculative in (None, "draft"):
            eng = Engine(EngineConfig(model="tiny", device="cpu", dtype="float64", eos_token_id=stop,
                                      speculative=speculative, num_speculative_tokens=4, draft_model="tiny"))
            rid = eng.add_request(prompt, max_new_tokens=24)
            outputs.append(eng.run_until_done()[rid])
        assert outputs[1] == outputs[0], stop
        assert outputs[0][-1] == stop and outputs[0].count(stop) == 1


def test_the_outputs_checksum_counts_accepted_drafts():
    """The compare table's outputs column must say 'same tokens' for a run with speculation and one
    without: the drafts a request accepted are part of what it emitted."""
    from engine.records.summary import RunTotals

    sums = []
    for speculative in (None, "draft"):
        eng = Engine(EngineConfig(model="tiny", device="cpu", speculative=speculative, draft_model="tiny"))
        for i in range(3):
            eng.add_request([3 + i, 4, 5, 6] * 3, max_new_tokens=12)
        totals = RunTotals()
        while eng.has_unfinished():
            totals.observe(eng.step())
        sums.append((totals.summary().outputs, totals.summary().steps))
    assert sums[0][0] == sums[1][0]
    assert sums[1][1] < sums[0][1]  # every draft accepted: fewer steps, same tokens
