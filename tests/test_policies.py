"""The scheduler's policies and its preemption, on a Scheduler driven directly (no model)."""

from engine import EngineConfig
from engine.kv.block_manager import BlockManager
from engine.records import REASON_BUDGET, REASON_NO_BLOCKS, REASON_PREEMPTED, REASON_RESERVED, REASON_STATIC_BATCH
from engine.requests.request import Request, RequestState
from engine.scheduler.policies import Fcfs, Reservation, StaticBatch
from engine.scheduler.scheduler import Scheduler
from engine.scheduler.state import SchedulerState


def make_scheduler(num_blocks: int = 64, block_size: int = 4, **config) -> Scheduler:
    config = EngineConfig(model="tiny", device="cpu", kv_layout="paged", block_size=block_size,
                          num_blocks=num_blocks, **config)
    return Scheduler(config.scheduler, BlockManager(num_blocks, block_size))


def arrive(sched: Scheduler, *prompt_lens: int) -> list[Request]:
    requests = [Request(id=len(sched.waiting) + len(sched.running) + i, prompt=[1] * n, max_new_tokens=4)
                for i, n in enumerate(prompt_lens)]
    for r in requests:
        sched.add_arrived(r)
    return requests


def run_plan(plan) -> None:
    """What the engine does with a plan: the tokens are computed, a token is sampled when all are."""
    for s in plan.items:
        s.request.num_computed += s.num_tokens
        if s.request.remaining == 0:
            s.request.output.append(0)


def test_static_batch_admits_only_its_members_until_all_have_finished():
    policy = StaticBatch(size=2)
    a, b, c = (Request(id=i, prompt=[1], max_new_tokens=1) for i in range(3))
    reasons = {}
    assert policy.admissible([a, b, c], reasons) == [a, b] and reasons == {c.id: REASON_STATIC_BATCH}
    a.state = RequestState.FINISHED
    assert policy.admissible([c], {}) == [] and policy.padding_slots() == 1  # b still runs: no new batch
    assert policy.padding_slots(finishing=[a]) == 0  # a finished in this step: it ran in it, no slot idled
    b.state = RequestState.FINISHED
    assert policy.admissible([c], {}) == [c] and policy.padding_slots() == 1  # a batch of one, one slot idle
    assert Fcfs().admissible([a, b, c], reasons) == [a, b, c] and Fcfs().padding_slots() == 0


def test_static_policy_schedules_no_one_outside_the_batch():
    sched = make_scheduler(policy="static", static_batch_size=2, max_tokens_per_step=64)
    a, b, c = arrive(sched, 3, 3, 3)
    plan = sched.schedule()
    assert [s.request for s in plan.items] == [a, b] and plan.reasons == {c.id: REASON_STATIC_BATCH}


def test_reservation_keeps_its_slice_for_holders():
    state = SchedulerState(step=0, budget=10, waiting=[], running=[])
    state.reserve(4, [7])
    reservation = Reservation(state)
    holder, other = Request(id=7, prompt=[1], max_new_tokens=1), Request(id=8, prompt=[1], max_new_tokens=1)
    assert reservation.room(other, 10) == 6 and reservation.room(holder, 10) == 10
    reservation.took(other, 6)
    assert reservation.room(other, 4) == 0 and reservation.room(holder, 4) == 4
    reservation.took(other, -2)  # a preempted request gives its tokens back
    assert reservation.room(other, 6) == 2


def test_scheduler_keeps_the_reserved_slice_from_the_others():
    """Low-priority requests ahead in the queue stop at budget - reserved; the holder behind them
    is admitted into the slice."""
    sched = make_scheduler(max_tokens_per_step=10, prefill_chunk_size=8)
    low1, low2, vip = arrive(sched, 8, 8, 8)
    state = sched.state(0)
    state.reserve(4, [vip.id])
    plan = sched.schedule(state=state)
    assert [(s.request, s.num_tokens) for s in plan.items] == [(low1, 6), (vip, 4)]
    assert plan.reasons == {low2.id: REASON_RESERVED}
    # Without the reservation the same queue is plain FCFS: the holder waits for budget.
    sched = make_scheduler(max_tokens_per_step=10, prefill_chunk_size=8)
    low1, low2, vip = arrive(sched, 8, 8, 8)
    plan = sched.schedule()
    assert [(s.request, s.num_tokens) for s in plan.items] == [(low1, 8), (low2, 2)]
    assert plan.reasons == {vip.id: REASON_BUDGET}


def test_preemption_takes_the_newest_running_request_and_requeues_it_in_front():
    sched = make_scheduler(num_blocks=3, block_size=4, max_tokens_per_step=12, prefill_chunk_size=4)
    old, mid, new = arrive(sched, 8, 3, 3)
    run_plan(sched.schedule())  # a block each: the pool is full; mid and new decode next
    assert sched.running == [old, mid, new] and sched.blocks.num_free == 0
    new_blocks = sched.blocks.tables[new.id]
    # Both decodes fit their blocks; then old's second chunk needs a block, and the newest request
    # gives its up, with the decode it was given a moment before.
    plan = sched.schedule()
    assert [(s.request, s.kind) for s in plan.items] == [(mid, "decode"), (old, "prefill")]
    assert plan.preempted == [new] and plan.reasons == {new.id: REASON_PREEMPTED}
    assert plan.tokens_of("decode") == 1 and plan.tokens_of("prefill") == 4
    assert sched.running == [old, mid] and list(sched.waiting) == [new]
    assert new.state is RequestState.PREEMPTED and new.num_preemptions == 1
    assert new.num_computed == 0 and new.output == [0]  # recompute: the KV goes, the tokens stay
    assert sched.freed_blocks == {new.id: new_blocks}


def test_fcfs_admission_lets_nobody_overtake_a_head_that_does_not_fit():
    sched = make_scheduler(num_blocks=2, block_size=4, max_tokens_per_step=32, prefill_chunk_size=16)
    big, small = arrive(sched, 16, 2)  # big needs 4 blocks, small would fit in one
    plan = sched.schedule()
    assert not plan.items and plan.reasons == {big.id: REASON_NO_BLOCKS, small.id: REASON_NO_BLOCKS}
    assert list(sched.waiting) == [big, small]
