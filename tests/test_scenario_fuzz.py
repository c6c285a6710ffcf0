"""Fuzzing the loader: whatever the file says, the only error that comes out is ScenarioError.

Three levels: arbitrary text (the TOML parser's side), random documents made of the real keys
with values of every TOML type (the validator's side), and near-valid documents whose accepted
scenarios must also build an engine and run a few steps without any other exception.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from helpers import fuzz_examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import ATTENTION_BACKENDS, DEVICES, DTYPES, KV_LAYOUTS, MODELS, POLICIES
from scenarios import ScenarioError, loads
from scenarios.loader import ENGINE_KEYS, TOP_KEYS, from_dict
from scenarios.workload import ARRIVALS, GENERATOR_KEYS, REQUEST_KEYS

FUZZ = settings(deadline=None, max_examples=fuzz_examples(300), suppress_health_check=[HealthCheck.too_slow])
PATH = Path("fuzz.toml")



def only_scenario_errors(load):
    """Runs load(); a ScenarioError must be one line naming the file; anything else fails the test."""
    try:
        return load()
    except ScenarioError as exc:
        assert "\n" not in str(exc)
        assert str(exc).startswith((f"{PATH}: ", "unknown scenario")), str(exc)
        return None


# -- any text ------------------------------------------------------------------------------------

TOML_BITS = st.sampled_from(["[engine]", "[[requests]]", "[[generators]]", "[compare.x]", "=", "\n", '"',
                             "'", "[", "]", "{", "}", ",", "prompt", "count", "title", " = 3", " = [1, 2]",
                             " = nan", " = inf", " = 1979-05-27", " = true", " = 'uniform'", "#", "\\u00e9"])


@FUZZ
@given(st.one_of(st.text(max_size=300), st.lists(TOML_BITS, max_size=40).map("".join)))
def test_any_text_gives_a_scenario_or_a_scenario_error(text):
    only_scenario_errors(lambda: loads(text, PATH))


# -- documents with the real keys and values of every type --------------------------------------

SCALARS = st.one_of(
    st.integers(-5, 300), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.text(max_size=12), st.sampled_from(
        [*MODELS, *DEVICES, *KV_LAYOUTS, *ATTENTION_BACKENDS, *POLICIES, *DTYPES, *ARRIVALS, "fixed", "choice"]),
    st.datetimes().map(lambda d: d.replace(tzinfo=None)), st.just(datetime.date(2024, 1, 1)),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(["fixed", "uniform", "choice", "x"]), inner, max_size=2)), max_leaves=8)
JUNK_KEYS = st.text(min_size=1, max_size=8)


def tables(keys, max_size=5):
    return st.dictionaries(st.one_of(st.sampled_from(keys), JUNK_KEYS), VALUES, max_size=max_size)


DOCUMENTS = st.fixed_dictionaries({}, optional={
    "title": VALUES, "description": VALUES, "summary": VALUES, "question": VALUES, "seed": VALUES,
    "engine": st.one_of(tables(ENGINE_KEYS), VALUES),
    "requests": st.one_of(st.lists(tables(REQUEST_KEYS), max_size=3), VALUES),
    "generators": st.one_of(st.lists(tables(GENERATOR_KEYS), max_size=2), VALUES),
    "compare": st.one_of(st.dictionaries(st.text(max_size=5), st.one_of(tables(ENGINE_KEYS, 2), VALUES),
                                         max_size=2), VALUES),
}).flatmap(lambda doc: st.dictionaries(st.sampled_from([*TOP_KEYS, "junk"]), VALUES, max_size=2)
           .map(lambda extra: {**extra, **doc}))


@pytest.mark.slow
@FUZZ
@given(DOCUMENTS)
def test_any_document_gives_a_scenario_or_a_scenario_error(doc):
    only_scenario_errors(lambda: from_dict(doc, PATH))


# -- plausible documents: what the loader accepts, the engine runs --------------------------------
# Values in and around the allowed ranges (tiny pools, block size 1, static policy, sampling), so
# that most documents pass validation and the engine gets exercised with them.

PLAUSIBLE_ENGINE = st.fixed_dictionaries({}, optional={
    "max_tokens_per_step": st.integers(1, 96), "prefill_chunk_size": st.integers(1, 64),
    "max_decode_per_step": st.integers(1, 8), "kv_layout": st.sampled_from(KV_LAYOUTS),
    "block_size": st.integers(1, 32), "num_blocks": st.integers(1, 64), "policy": st.sampled_from(POLICIES),
    "static_batch_size": st.integers(1, 6), "dtype": st.sampled_from(["auto", "float32", "float64"]),
    "seed": st.integers(0, 2**32 - 1), "eos_token_id": st.integers(0, 255),
})
DIST = st.one_of(st.integers(1, 40), st.tuples(st.integers(1, 20), st.integers(20, 40)).map(list),
                 st.lists(st.integers(1, 40), min_size=1, max_size=3).map(lambda v: {"choice": v}))
PLAUSIBLE_REQUEST = st.fixed_dictionaries(
    {"prompt_len": st.integers(1, 60)},
    optional={"max_new_tokens": st.integers(1, 12), "arrival_step": st.integers(0, 4),
              "priority": st.integers(-3, 3), "temperature": st.floats(0, 2), "top_k": st.integers(0, 256),
              "seed": st.integers(0, 2**32 - 1), "deadline_step": st.integers(0, 9)})
PLAUSIBLE_GENERATOR = st.one_of(
    st.fixed_dictionaries({"count": st.integers(1, 4), "arrival": st.just("poisson"),
                           "rate": st.floats(0.2, 3)}, optional={"burst_size": DIST}),
    st.fixed_dictionaries({"count": st.integers(1, 4), "arrival": st.just("uniform"),
                           "arrival_span": st.integers(0, 4)}),
    st.fixed_dictionaries({"count": st.integers(1, 4)}, optional={
        "prompt_len": DIST, "max_new_tokens": DIST, "temperature": st.floats(0, 2), "top_k": st.integers(0, 40),
        "priority": DIST}))
PLAUSIBLE_DOCUMENTS = st.fixed_dictionaries(
    {"seed": st.integers(0, 50), "engine": PLAUSIBLE_ENGINE, "requests": st.lists(PLAUSIBLE_REQUEST, max_size=3),
     "generators": st.lists(PLAUSIBLE_GENERATOR, max_size=2)},
    optional={"compare": st.dictionaries(st.sampled_from(["a", "b"]), PLAUSIBLE_ENGINE.filter(bool),
                                         max_size=2)})


def test_accepted_scenarios_build_and_run():
    accepted = []

    @settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
    @given(PLAUSIBLE_DOCUMENTS)
    def build_and_run(doc):
        scenario = only_scenario_errors(lambda: from_dict(doc, PATH))
        if scenario is None:
            return
        accepted.append(scenario)
        for variant in [None, *scenario.variants][:2]:
            # The tiny model and sdpa keep each example fast; every other setting is fuzzed.
            engine = only_scenario_errors(lambda variant=variant: scenario.build_engine(
                variant, device="cpu", model="tiny", attention="sdpa"))
            assert engine is not None, "a scenario the loader accepted failed to build"
            for _ in range(4):
                if not engine.has_unfinished():
                    break
                engine.step()

    build_and_run()
    # The run half only means something if plenty of documents get past validation.
    assert len(accepted) >= 10
