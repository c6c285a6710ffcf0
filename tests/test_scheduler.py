"""The scheduler on its own: plans and updates with the real block manager, no model and no torch.

Everything here runs in a process where `import torch` fails (test_project.py checks it), so a
scheduling rule can be tested in milliseconds. A "step" is what the engine does with a plan:
the runner's part is faked (every sampled token is 0), the scheduler's update is the real one.
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import EngineConfig
from engine.kv.block_manager import BlockManager
from engine.records import (
    REASON_BUDGET,
    REASON_DECODE_CAP,
    REASON_NO_BLOCKS,
    REASON_NO_RUN,
    REASON_PREEMPTED,
)
from engine.requests.request import Request, RequestState
from engine.scheduler.scheduler import Scheduler


def scheduler(num_blocks: int | None = 64, block_size: int = 4, prefix_caching: bool = False,
              contiguous_up_to: int = 0, drafts_wanted=None, **config) -> Scheduler:
    """A scheduler over a real block manager (None blocks: the dense layout)."""
    config = EngineConfig(model="tiny", device="cpu", block_size=block_size,
                          kv_layout="paged" if num_blocks else "dense", **config)
    blocks = BlockManager(num_blocks, block_size, prefix_caching, contiguous_up_to) if num_blocks else None
    return Scheduler(config.scheduler, blocks, drafts_wanted=drafts_wanted)


def arrive(sched: Scheduler, *prompt_lens: int, max_new_tokens: int = 4) -> list[Request]:
    first = len(sched.waiting) + len(sched.running)
    requests = [Request(id=first + i, prompt=[first + i + 1] * n, max_new_tokens=max_new_tokens)
                for i, n in enumerate(prompt_lens)]
    for r in requests:
        sched.add_arrived(r)
    return requests


def step(sched: Scheduler, index: int = 0, kept=None):
    """One step: the plan, a faked run (every sampled token 0), the real update."""
    plan = sched.schedule(index)
    events = sched.update(plan, [0] * len(plan.sampling), kept or {}, now=float(index))
    return plan, events


def test_decodes_come_first_then_prefill_chunks_under_the_budget():
    sched = scheduler(max_tokens_per_step=8, prefill_chunk_size=4)
    a, b = arrive(sched, 3, 3)
    step(sched)  # both prefill (3 + 3 of 8), sample their first token
    (c,) = arrive(sched, 10)
    plan, _ = step(sched, 1)
    assert [(s.request, s.kind, s.num_tokens) for s in plan.items] == [(a, "decode", 1), (b, "decode", 1),
                                                                        (c, "prefill", 4)]
    assert plan.used == 6 and plan.left == 2  # the chunk caps c at 4 although 2 more would fit


def test_the_decode_cap_and_the_budget_leave_decodes_waiting_with_their_reason():
    sched = scheduler(max_tokens_per_step=64, max_decode_per_step=2)
    requests = arrive(sched, 2, 2, 2, 2, 2)
    step(sched)
    plan, _ = step(sched, 1)
    assert plan.decode_demand == 5 and len(plan.decodes) == 2
    assert sorted(plan.reasons.values()) == [REASON_DECODE_CAP] * 3
    # Least recently served first: the three left out go first next step.
    plan, _ = step(sched, 2)
    assert {r.id for r in plan.decodes} <= {r.id for r in requests[2:]}

    tight = scheduler(max_tokens_per_step=3, prefill_chunk_size=8)
    arrive(tight, 1, 1, 1)
    step(tight)
    (late,) = arrive(tight, 4)
    plan, _ = step(tight, 1)
    assert len(plan.decodes) == 3 and plan.prefill_tokens == 0 and plan.reasons == {late.id: REASON_BUDGET}


def test_fcfs_admission_stops_at_the_head_of_the_queue_when_blocks_run_out():
    sched = scheduler(num_blocks=4, block_size=4, max_tokens_per_step=64, prefill_chunk_size=64)
    big, small = arrive(sched, 20, 2)  # 20 tokens need 5 blocks of 4: the pool has 4
    plan, _ = step(sched)
    assert not plan.items and plan.reasons == {big.id: REASON_NO_BLOCKS, small.id: REASON_NO_BLOCKS}
    assert (plan.admission_blocked.request_id, plan.admission_blocked.blocks_needed,
            plan.admission_blocked.blocks_free) == (big.id, 5, 4)


def test_a_short_pool_preempts_the_newest_request_which_keeps_its_tokens():
    sched = scheduler(num_blocks=3, block_size=4, max_tokens_per_step=64, prefill_chunk_size=64)
    old, new = arrive(sched, 4, 4, max_new_tokens=8)
    step(sched)  # one block each, both full: a decode needs a second block
    plan, _ = step(sched, 1)  # old takes the last free block; new needs one too: it is preempted
    assert [s.request for s in plan.items] == [old] and plan.preempted == [new]
    assert new.state is RequestState.PREEMPTED and new.num_computed == 0 and len(new.output) == 1
    assert plan.reasons[new.id] == REASON_PREEMPTED and sched.waiting[0] is new
    preemption = plan.preemptions[0]
    assert (preemption.request_id, preemption.for_request, preemption.blocks_free) == (new.id, new.id, 0)
    assert sched.freed_blocks == {new.id: (1,)} and new.id not in sched.blocks.tables


def test_the_plan_carries_every_kv_change_to_the_store():
    """Tables handed blocks (or new) and requests released since the last plan: the store and the
    shards lay out their pools from nothing else."""
    sched = scheduler(num_blocks=8, block_size=4, max_tokens_per_step=64, prefill_chunk_size=64)
    a, b = arrive(sched, 5, 2, max_new_tokens=1)  # both finish in their first step
    plan, events = step(sched)
    assert plan.tables == {a.id: (0, 1), b.id: (2,)} and plan.released == []
    assert events.finishing == [a, b] and sched.kv_tokens == {}
    (c,) = arrive(sched, 3)
    plan, _ = step(sched, 1)  # the finished ones are released in the next plan, with c's new table
    assert plan.released == [a.id, b.id] and plan.finished == [a.id, b.id]
    assert set(plan.tables) == {c.id}
    plan, _ = step(sched, 2)  # c decodes within its block: nothing changed
    assert plan.tables == {} and plan.released == []


def test_a_contiguous_run_is_reserved_whole_and_never_preempted():
    sched = scheduler(num_blocks=6, block_size=4, contiguous_up_to=12, max_tokens_per_step=64,
                      prefill_chunk_size=64)
    short, long_ = arrive(sched, 4, 8, max_new_tokens=8)  # 12 tokens: a run of 3; 16: paged
    plan, _ = step(sched)
    assert plan.tables[short.id] == (0, 1, 2) and sched.blocks.runs == {short.id}
    assert sched.blocks.capacity(short.id) == 12 and not sched.blocks.preemptible(short.id)
    for i in range(1, 6):
        plan, _ = step(sched, i)
        assert short not in plan.preempted


def test_a_fragmented_pool_makes_a_run_wait_with_its_reason():
    sched = scheduler(num_blocks=6, block_size=4, contiguous_up_to=8, max_tokens_per_step=64, prefill_chunk_size=64)
    sched.blocks.allocate(100, 4)  # blocks 0.., 1, 2 ... held by others, every other one free
    for rid, tokens in ((101, 4), (102, 4), (103, 4), (104, 4), (105, 4)):
        sched.blocks.allocate(rid, tokens)
    for rid in (101, 103, 105):
        sched.blocks.free(rid)
    (r,) = arrive(sched, 4, max_new_tokens=4)  # 8 tokens: 2 blocks in a row; 3 free, none adjacent
    plan, _ = step(sched)
    assert plan.reasons == {r.id: REASON_NO_RUN} and plan.admission_blocked.longest_run == 1


def test_a_prefix_hit_is_shared_and_costs_no_budget():
    sched = scheduler(num_blocks=16, block_size=4, prefix_caching=True, max_tokens_per_step=64,
                      prefill_chunk_size=64)
    (first,) = arrive(sched, 9, max_new_tokens=1)
    first.prompt = list(range(9))
    step(sched)  # computed and finished: its two full blocks stay cached-free
    second = Request(id=1, prompt=list(range(8)) + [42], max_new_tokens=2)
    sched.add_arrived(second)
    plan, _ = step(sched, 1)
    assert second.cached_tokens == 8 and [s.num_tokens for s in plan.items] == [1]  # only the last token
    assert sched.blocks.tables[second.id][:2] == (0, 1)


def test_drafts_take_what_the_decodes_leave_one_level_at_a_time():
    """Four decodes, k = 4 wanted each: a budget of 6 runs all four decodes and spreads the 2 tokens
    left over the first two; a budget of 3 runs three decodes and no drafts."""
    for budget, decodes, drafts in ((6, 4, [1, 1, 0, 0]), (3, 3, []), (12, 4, [2, 2, 2, 2]), (64, 4, [4, 4, 4, 4])):
        sched = scheduler(max_tokens_per_step=64, drafts_wanted=lambda r, most: min(4, most))
        arrive(sched, 3, 3, 3, 3, max_new_tokens=10)
        step(sched)
        state = sched.state(1)
        state.budget = budget  # as a scheduler plugin may set it
        plan = sched.schedule(1, state)
        assert len(plan.decodes) == decodes and plan.used <= budget
        assert sorted((plan.drafts.get(r, 0) for r in plan.decodes), reverse=True) == (drafts or [0] * decodes)


def test_rejected_drafts_give_their_blocks_back_in_the_update():
    sched = scheduler(num_blocks=8, block_size=2, max_tokens_per_step=64, prefill_chunk_size=64,
                      drafts_wanted=lambda r, most: min(4, most))
    (r,) = arrive(sched, 2, max_new_tokens=10)
    step(sched)  # 2 prompt tokens: one block; its first token sampled
    plan = sched.schedule(1)
    assert plan.drafts == {r: 4} and len(sched.blocks.tables[r.id]) == 4  # 1 + 1 + 4 tokens: room for 7
    events = sched.update(plan, [0], {r: [5]}, now=1.0)  # one draft stood, then the target's token
    assert r.output == [0, 5, 0] and r.num_computed == 4 and events.positions == [2]
    assert len(sched.blocks.tables[r.id]) == 2 and sched.freed_blocks[r.id] == plan.tables[r.id][2:]
    assert plan.batch[0].accepted == 1 and (r.drafts_proposed, r.drafts_accepted) == (4, 1)
    assert sched.kv_tokens[r.id] == 4


def test_a_decode_evicted_by_a_later_decode_gives_its_slot_back():
    """All decodes fit the budget, but the pool is full: the older request's decode needs a new
    block and evicts the newest request, whose decode was already chosen this step (it was served
    less recently, so it sorts first). The plan must drop that decode: one decode runs, one is
    preempted, and the budget counts one token."""
    sched = scheduler(num_blocks=2, block_size=4, max_tokens_per_step=16)
    blocks = sched.blocks
    old = Request(id=0, prompt=[1, 2, 3], max_new_tokens=5, output=[7, 8])  # 4 cached: its block is full
    new = Request(id=1, prompt=[1, 2], max_new_tokens=5, output=[7])  # 2 cached: room in its block
    for r, served in ((old, 5), (new, 3)):
        r.num_computed = len(r.prompt) + len(r.output) - 1  # the last token still to feed: decoding
        blocks.allocate(r.id, r.num_computed)
        r.kv_capacity = blocks.capacity(r.id)
        r.state, r.last_scheduled_step = RequestState.DECODE, served
        sched.running.append(r)
    assert not blocks.can_allocate(old.id, old.num_computed + 1)  # the pool is full

    plan = sched.schedule()
    assert [(s.request.id, s.kind) for s in plan.items] == [(0, "decode")]
    assert plan.preempted == [new] and new.state is RequestState.PREEMPTED
    assert plan.used == plan.tokens_of("decode") == 1


def test_requests_compare_by_identity():
    """Queues find requests by identity. Field-by-field equality (the dataclass default) made each
    lookup build two tuples of every field: the static policy's queue scans took a step's host
    time from 1.6 ms to 32 ms at 512 requests (`cbtui bench host --policy static`)."""
    a, b = Request(0, [1, 2], 4), Request(0, [1, 2], 4)
    assert a != b and a == a and b not in [a] and len({a, b}) == 2


workload_st = st.lists(st.tuples(st.integers(1, 30), st.integers(1, 8), st.integers(0, 6)), min_size=1, max_size=10)


@settings(max_examples=150, deadline=None)
@given(workload_st, st.integers(1, 40), st.integers(1, 20), st.one_of(st.none(), st.integers(1, 4)),
       st.sampled_from([None, 0, 2, 4]), st.integers(1, 4), st.booleans(), st.sampled_from([0, 0, 12]))
def test_every_plan_keeps_the_rules_and_every_request_finishes(workload, budget, chunk, cap, spare, block_size,
                                                              caching, runs):
    """Random workloads through the scheduler and its update: the budget, the chunk and the cap hold
    in every plan, decodes come first, every request left out has a reason, the block books balance,
    and every request finishes with all its tokens (whatever the pool: dense, roomy or tight)."""
    largest = max(p + n for p, n, _ in workload)
    num_blocks = None if spare is None else -(-largest // block_size) + spare
    sched = scheduler(num_blocks, block_size, prefix_caching=caching and not runs, contiguous_up_to=runs,
                      max_tokens_per_step=budget, prefill_chunk_size=chunk, max_decode_per_step=cap)
    requests = [Request(i, [1 + (i % 3)] * p, n, a) for i, (p, n, a) in enumerate(workload)]
    for index in range(2000):
        for r in requests:
            if r.arrival_step == index:
                sched.add_arrived(r)
        plan, _ = step(sched, index)
        kinds = [s.kind for s in plan.items]
        assert kinds == sorted(kinds, key=lambda k: k != "decode")
        assert plan.used == sum(s.num_tokens for s in plan.items) <= budget
        assert all(s.num_tokens <= chunk for s in plan.items if s.kind == "prefill")
        assert cap is None or len(plan.decodes) <= cap
        scheduled = {s.request.id for s in plan.items}
        for r in [*sched.waiting, *sched.running]:
            assert r.id in scheduled or plan.reasons.get(r.id), f"request {r.id} waits without a reason"
        if sched.blocks is not None:
            blocks = sched.blocks
            held = set().union(*blocks.tables.values()) if blocks.tables else set()
            cached = set(blocks.prefix.evictable) if blocks.prefix is not None else set()
            assert len(held) + len(blocks.free_blocks) + len(cached) == blocks.num_blocks
            for r in sched.running:
                assert blocks.capacity(r.id) >= sched.kv_tokens.get(r.id, 0)
        if all(r.is_finished for r in requests):
            break
    assert all(len(r.output) == r.max_new_tokens for r in requests), "every request finishes"
    assert not sched.running and not sched.waiting and not sched.kv_tokens
    if sched.blocks is not None:
        assert not sched.blocks.tables and sched.blocks.num_free == sched.blocks.num_blocks
