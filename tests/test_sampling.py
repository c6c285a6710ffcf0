"""Temperature / top-k sampling is seeded per request: repeatable, and the seed matters."""

from engine import Engine, EngineConfig


def sampled(seed, top_k=0, other=False):
    eng = Engine(EngineConfig(model="tiny", device="cpu"))
    rid = eng.add_request("sample me", max_new_tokens=24, temperature=1.0, top_k=top_k, seed=seed)
    if other:  # another request in the batch must not disturb this one's random stream
        eng.add_request("neighbour", max_new_tokens=10, temperature=1.0, seed=99)
    return eng.run_until_done()[rid]


def test_seeded_sampling_repeats_and_differs_by_seed():
    assert sampled(1) == sampled(1) == sampled(1, other=True)
    assert sampled(1) != sampled(2)


def test_top_k_one_is_greedy():
    eng = Engine(EngineConfig(model="tiny", device="cpu"))
    rid = eng.add_request("sample me", max_new_tokens=12)
    assert sampled(5, top_k=1)[:12] == eng.run_until_done()[rid][:12]
