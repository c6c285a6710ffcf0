"""Plugin hooks: order and arguments, isolation of faulty plugins, loading by name."""

import pytest
from helpers import exact_config, run_alone

from engine import AttentionPlugin, CachePlugin, Engine, EngineConfig, SchedulerPlugin, load_plugin
from engine.plugins.builtin import PriorityPlugin

WORKLOAD = [{"prompt": [3 + i] * (4 + 3 * i), "max_new_tokens": 3 + i, "arrival_step": i} for i in range(4)]


class Recorder(SchedulerPlugin, AttentionPlugin, CachePlugin):
    name = "recorder"

    def __init__(self):
        self.calls = []

    def before_step(self, state):
        self.calls.append(("before_step", state.step, state.budget))

    def after_step(self, state, record):
        assert record.step == state.step
        self.calls.append(("after_step", record.step, record.decode_tokens + record.prefill_tokens))

    def on_request_completion(self, request):
        assert request.is_finished and len(request.output) == request.max_new_tokens
        self.calls.append(("completion", request.id))

    def wrap(self, layer_idx, attention):
        self.calls.append(("wrap", layer_idx))

        def wrapped(q, k, v, batch):
            self.calls.append(("attention", layer_idx, q.shape[0], k.shape[0]))
            return attention(q, k, v, batch)
        return wrapped

    def before_append(self, cache, layer, batch, k, v):
        assert k.shape[0] == batch.num_tokens
        self.calls.append(("before_append", layer, k.shape[0]))
        return k, v

    def after_append(self, cache, layer, batch):
        self.calls.append(("after_append", layer))


def run(config, plugins, workload=WORKLOAD):
    eng = Engine(config, plugins=plugins)
    ids = [eng.add_request(**w) for w in workload]
    records = []
    while eng.has_unfinished():
        records.append(eng.step())
    return [eng.requests[i].output for i in ids], records, eng


def test_hooks_fire_in_order_with_their_arguments():
    rec = Recorder()
    _, records, eng = run(exact_config(max_tokens_per_step=8, prefill_chunk_size=4), [rec])
    layers = eng.runner.spec.num_layers
    assert rec.calls[:layers] == [("wrap", i) for i in range(layers)]  # at construction, per layer
    calls = rec.calls[layers:]
    for record in records:
        step_calls = []
        while calls and not (calls[0][0] == "before_step" and step_calls):
            step_calls.append(calls.pop(0))
        assert step_calls[0] == ("before_step", record.step, 8)
        tokens = record.decode_tokens + record.prefill_tokens
        expected = []
        if tokens:
            for layer in range(layers):
                expected += [("before_append", layer, tokens), ("after_append", layer),
                             ("attention", layer, tokens, record.num_key_tokens)]
        expected += [("completion", rid) for rid in record.finished]
        expected.append(("after_step", record.step, tokens))
        assert step_calls[1:] == expected
    assert not calls


class Boom(Exception):
    pass


def faulty(hook):
    """A plugin of every kind that raises in exactly one hook."""

    class Faulty(SchedulerPlugin, AttentionPlugin, CachePlugin):
        name = f"faulty_{hook}"

        def before_step(self, state):
            if hook == "before_step":
                state.running.reverse()  # a half-done change that must be undone
                raise Boom("before")
            if hook == "drop_request" and state.waiting:
                state.waiting.pop()

        def after_step(self, state, record):
            if hook == "after_step":
                raise Boom("after")

        def on_request_completion(self, request):
            if hook == "completion":
                raise Boom("done")

        def wrap(self, layer_idx, attention):
            if hook == "wrap":
                raise Boom("wrap")
            if hook == "attention":
                def broken(q, k, v, batch):
                    raise Boom("attention")
                return broken
            if hook == "bad_shape":
                return lambda q, k, v, batch: q[:1]
            return attention

        def before_append(self, cache, layer, batch, k, v):
            if hook == "before_append":
                raise Boom("append")
            return k, v

        def after_append(self, cache, layer, batch):
            if hook == "after_append":
                raise Boom("after append")
    return Faulty()


@pytest.mark.parametrize("hook", ["before_step", "drop_request", "after_step", "completion", "wrap",
                                  "attention", "bad_shape", "before_append", "after_append"])
def test_faulty_plugin_is_disabled_and_requests_are_untouched(hook):
    plugin = faulty(hook)
    outputs, records, eng = run(exact_config(max_tokens_per_step=8, prefill_chunk_size=4), [plugin])
    for spec, out in zip(WORKLOAD, outputs, strict=True):
        assert out == run_alone(spec["prompt"], spec["max_new_tokens"])
    errors = [e for r in records for e in r.errors]
    assert len(errors) == 1 and f"plugin faulty_{hook} disabled" in errors[0]
    assert id(plugin) in eng.plugins.disabled


def test_plugin_that_reorders_keeps_exactness_and_priority_cuts_ttft():
    workload = [{"prompt": [5] * 40, "max_new_tokens": 6, "arrival_step": 0} for _ in range(4)]
    workload.append({"prompt": [9] * 8, "max_new_tokens": 6, "arrival_step": 1, "priority": 5})
    config = exact_config(max_tokens_per_step=12, prefill_chunk_size=12)
    plain, plain_recs, plain_eng = run(config, [], workload)
    prio, prio_recs, prio_eng = run(config, [PriorityPlugin()], workload)
    assert plain == prio == [run_alone(w["prompt"], w["max_new_tokens"]) for w in workload]
    vip = 4
    assert prio_eng.requests[vip].first_token_step < plain_eng.requests[vip].first_token_step
    assert len(prio_recs) <= len(plain_recs) + 1  # throughput holds


def test_reserved_slice_is_kept_from_low_priority():
    workload = [{"prompt": [1] * 3, "max_new_tokens": 8} for _ in range(6)]
    workload.append({"prompt": [2] * 30, "max_new_tokens": 2, "priority": 1})
    config = EngineConfig(model="tiny", device="cpu", max_tokens_per_step=8, prefill_chunk_size=8)
    _, records, eng = run(config, [PriorityPlugin(reserve_tokens=4)], workload)
    for rec in records:
        low = sum(i.num_tokens for i in rec.items if eng.requests[i.request_id].priority == 0)
        if not eng.requests[6].is_finished or rec.step <= eng.requests[6].finished_step:
            assert low <= 8 - 4
    assert any(v.reason == "budget reserved for priority" for rec in records for v in rec.requests)
    assert any("reserved" in a for rec in records for a in rec.annotations)


def test_load_plugin_by_builtin_name_module_path_and_entry_point(monkeypatch):
    assert isinstance(load_plugin("priority"), PriorityPlugin)
    assert isinstance(load_plugin("engine.plugins.builtin:PriorityPlugin", {"reserve_tokens": 2}), PriorityPlugin)

    class FakeEntryPoint:
        name = "mine"

        def load(self):
            return PriorityPlugin

    monkeypatch.setattr("engine.plugins.loader.entry_points", lambda group: [FakeEntryPoint()])
    assert isinstance(load_plugin("mine"), PriorityPlugin)
    for spec, words in [("nope", "unknown plugin 'nope'"), ("no.such.module:X", "cannot be loaded"),
                        ("torch:Tensor", "is not a SchedulerPlugin"), ("priority", "reserve_tokens")]:
        with pytest.raises(ValueError, match=words):
            load_plugin(spec, {"reserve_tokens": -1} if spec == "priority" else None)
    with pytest.raises(ValueError, match="cannot be created"):
        load_plugin("priority", {"no_such_option": 1})


def test_engine_rejects_what_is_not_a_plugin():
    with pytest.raises(ValueError, match="not a SchedulerPlugin"):
        Engine(EngineConfig(model="tiny", device="cpu"), plugins=[object()])


def test_a_reservation_nobody_can_use_is_lifted():
    """A slice reserved for nobody (or for requests that cannot run now) would idle the engine for
    ever: the step runs without it, and the request finishes."""
    class Hog(SchedulerPlugin):
        name = "hog"

        def before_step(self, state):
            state.reserve(state.budget, [])  # the whole budget, for nobody

    eng = Engine(EngineConfig(model="tiny", device="cpu"), plugins=[Hog()])
    rid = eng.add_request([1, 2], max_new_tokens=2)
    rec = eng.step()
    assert rec.items and not rec.errors
    assert len(eng.run_until_done()[rid]) == 2


def test_a_stuck_schedule_ends_the_run_with_why():
    """The safety net behind every runner: steps that schedule nothing, with nothing left to arrive,
    end the run after a few steps with the waiting requests' reasons (never an endless loop)."""
    from engine.engine import STALL_STEPS, NoProgressError
    from engine.scheduler.plan import SchedulePlan

    eng = Engine(EngineConfig(model="tiny", device="cpu"))
    eng.add_request([1, 2], max_new_tokens=2)
    eng.step()  # admitted: it is running
    eng.scheduler.schedule = lambda step: SchedulePlan(budget=8, step=step)  # a scheduler that plans nothing
    records = [eng.step() for _ in range(STALL_STEPS - 1)]
    assert all(r.errors and r.errors[0].startswith("no progress") for r in records)
    with pytest.raises(NoProgressError, match=rf"no progress for {STALL_STEPS} steps .*1 requests cannot be"):
        eng.step()
    with pytest.raises(NoProgressError):
        eng.run_until_done()


def test_a_lifted_reservation_keeps_the_preemption_its_first_try_made():
    """The reserved try preempts a request (here the holder itself, the newest) and plans nothing, so
    the step runs without the slice: the preemption has happened and the record must say so, and the
    preempted request waits a step instead of being admitted again in the step it left."""
    class ReserveFor(SchedulerPlugin):
        name = "reserve_for"

        def __init__(self, holder: int):
            self.holder = holder

        def before_step(self, state):
            if state.step >= 1:
                state.reserve(state.budget, [self.holder])

    config = exact_config(kv_layout="paged", block_size=4, num_blocks=4, max_tokens_per_step=16,
                          prefill_chunk_size=8, attention="sdpa")
    eng = Engine(config, plugins=[ReserveFor(holder=1)])
    a = eng.add_request(list(range(1, 7)), max_new_tokens=4)  # 2 blocks, room to decode
    b = eng.add_request(list(range(10, 18)), max_new_tokens=4)  # 2 blocks, full after its prefill
    assert b == 1
    eng.step()  # both prefilled: the pool is full and b needs a new block for its next token
    record = eng.step()
    assert [p.request_id for p in record.preemptions] == [b]
    assert [i.request_id for i in record.items] == [a]  # b is not admitted again in the same step
    assert {v.id: v.reason for v in record.requests}[b] == "preempted"
    outputs = eng.run_until_done()
    assert outputs[a] == run_alone(list(range(1, 7)), 4)
    assert outputs[b] == run_alone(list(range(10, 18)), 4)
