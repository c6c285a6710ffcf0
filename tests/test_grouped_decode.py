"""CPU decodes without padding (attention/paged_decode.py): the step's decodes grouped by table width.

With one width per group (group_cost=0) a decode's output must be bit for bit what the padded path
gives for it alone (its own width): no other decode of the step may change it. With widths merged
(the default) it is the padded path's output at its group's width. Against the padded batch (every
decode as wide as the longest table) it is the same maths with other sdpa block lengths, so equal
to rounding only, except where every table has the same width or there is one decode: bit for bit."""

from __future__ import annotations

import random

import pytest
import torch

from engine import Engine, EngineConfig
from engine.attention import paged_decode
from engine.attention.decode_kernel import GatherDecode, TritonDecode
from engine.attention.paged_decode import grouped_decode_attention, paged_decode_attention, plan_decode_groups
from engine.attention.reference import reference_attention
from engine.batch_builder import build_batch
from engine.records import ScheduledItem

CPU = torch.device("cpu")


def pool_case(rng: random.Random, lens: list[int], bs: int, dtype: torch.dtype, kvh: int = 2, heads: int = 14,
              d: int = 64):
    """Shuffled tables padded with random block ids (garbage past each table), a random pool."""
    num_blocks = sum(-(-n // bs) for n in lens) + 8
    free = list(range(num_blocks))
    rng.shuffle(free)
    tables = [[free.pop() for _ in range(-(-n // bs))] for n in lens]
    width = max(map(len, tables))
    padded = torch.tensor([t + [rng.randrange(num_blocks) for _ in range(width - len(t))] for t in tables])
    k_pool = torch.randn(num_blocks * bs, kvh, d, dtype=dtype)
    v_pool = torch.randn(num_blocks * bs, kvh, d, dtype=dtype)
    q = torch.randn(len(lens), heads, d, dtype=dtype)
    return q, k_pool, v_pool, padded, [len(t) for t in tables]


def key_bytes(pool: torch.Tensor) -> int:
    return 2 * pool[0].numel() * pool.element_size()


def grouped(q, k_pool, v_pool, tables, lens, bs, group_bytes=paged_decode.GROUP_BYTES, group_cost=0):
    plan = plan_decode_groups(tables, lens, bs, key_bytes(k_pool), group_bytes, group_cost)
    if plan is None:  # one group of the widest width: the padded call itself (as GatherDecode makes it)
        return paged_decode_attention(q, k_pool, v_pool, tables, torch.tensor(lens), bs), plan
    return grouped_decode_attention(q, k_pool, v_pool, plan, bs), plan


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bs", [1, 6, 16])
@pytest.mark.parametrize("group_bytes", [1, 1 << 16, paged_decode.GROUP_BYTES, 1 << 40])
def test_each_decode_gets_what_it_gets_alone(dtype, bs, group_bytes):
    """Mixed lengths (1, around sdpa's 512-key split, up to 1100); any group size, down to one
    decode per group: every row torch.equal to the padded path run for that decode alone."""
    torch.manual_seed(bs)
    rng = random.Random(bs)
    lens = [rng.randint(1, 1100) for _ in range(24)] + [1, 511, 512, 513, 1, 40, 40]
    rng.shuffle(lens)
    q, k_pool, v_pool, tables, own = pool_case(rng, lens, bs, dtype)
    got, plan = grouped(q, k_pool, v_pool, tables, lens, bs, group_bytes)  # group_cost 0: one width per group
    for i, n in enumerate(lens):
        alone = paged_decode_attention(q[i:i + 1], k_pool, v_pool, tables[i:i + 1, :own[i]], torch.tensor([n]), bs)
        assert torch.equal(got[i], alone[0]), f"decode {i} (length {n})"
    # the padded batch: the same maths, other block lengths inside sdpa, so rounding only
    full = paged_decode_attention(q, k_pool, v_pool, tables, torch.tensor(lens), bs)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, full, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("group_cost", [paged_decode.GROUP_COST, 64 << 20])
def test_merged_groups_give_the_padded_output_at_the_group_width(dtype, group_cost):
    """Neighbouring widths share a group: each decode gets, bit for bit, the padded path's output at
    its group's width, and the padded batch's to rounding."""
    rng = random.Random(3)
    bs = 16
    lens = [rng.randint(1, 1100) for _ in range(40)] + [1, 1, 17]
    q, k_pool, v_pool, tables, own = pool_case(rng, lens, bs, dtype)
    got, plan = grouped(q, k_pool, v_pool, tables, lens, bs, group_cost=group_cost)
    assert len(plan.groups) < len(set(own))  # widths were merged
    at = 0
    for group in plan.groups:
        for r in plan.perm[at:at + group.rows].tolist():
            assert own[r] <= group.width
            alone = paged_decode_attention(q[r:r + 1], k_pool, v_pool, tables[r:r + 1, :group.width],
                                           torch.tensor([lens[r]]), bs)
            assert torch.equal(got[r], alone[0])
        at += group.rows
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    full = paged_decode_attention(q, k_pool, v_pool, tables, torch.tensor(lens), bs)
    torch.testing.assert_close(got, full, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_the_reference_attention(dtype):
    rng = random.Random(5)
    bs, lens = 8, [1, 3, 8, 9, 70, 70, 200, 17, 1]
    q, k_pool, v_pool, tables, own = pool_case(rng, lens, bs, dtype, kvh=2, heads=6, d=8)
    got, _ = grouped(q, k_pool, v_pool, tables, lens, bs, group_cost=paged_decode.GROUP_COST)
    items = [ScheduledItem(i, "decode", n - 1, 1, n) for i, n in enumerate(lens)]
    batch = build_batch(items, [[0]] * len(lens), [True] * len(lens), CPU)
    slots = torch.tensor([row[p // bs] * bs + p % bs for row, n in zip(tables.tolist(), lens, strict=True)
                          for p in range(n)])
    want = reference_attention(q, k_pool[slots], v_pool[slots], batch)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lens", [[300] * 9, [1] * 5, [1], [777], [65, 70, 80]], ids=str)
def test_one_width_is_the_padded_call_bit_for_bit(dtype, lens):
    """All tables as wide (same length, or lengths within one block), or one decode: the padded
    path's own width (rows split by the byte budget compute as they do together), so equal bit for
    bit to it."""
    rng = random.Random(len(lens))
    bs = 16
    q, k_pool, v_pool, tables, _ = pool_case(rng, lens, bs, dtype)
    got, plan = grouped(q, k_pool, v_pool, tables, lens, bs, group_cost=paged_decode.GROUP_COST)
    if len(set(-(-n // bs) for n in lens)) == 1:
        assert plan is None or len({g.width for g in plan.groups}) == 1
    assert torch.equal(got, paged_decode_attention(q, k_pool, v_pool, tables, torch.tensor(lens), bs))


@pytest.mark.parametrize("group_bytes", [1, 1 << 18, 1 << 20, 1 << 40])
def test_plan_groups_by_width_within_the_byte_budget(group_bytes):
    rng = random.Random(7)
    bs = 16
    lens = [rng.randint(1, 1024) for _ in range(200)]
    tables = torch.randint(0, 1000, (len(lens), 64))
    kb = 2 * 2 * 64 * 4  # 2 kv heads of 64, float32, keys and values
    plan = plan_decode_groups(tables, lens, bs, kb, group_bytes, group_cost=0)
    seen = []
    for chunk in plan.chunks:
        assert len(chunk.groups) == 1 or sum(g.rows * g.width for g in chunk.groups) * bs * kb <= group_bytes
        at = 0
        for group in chunk.groups:
            rows = plan.perm[len(seen):len(seen) + group.rows].tolist()
            assert {-(-lens[r] // bs) for r in rows} == {group.width}  # one table width: no padding block
            assert group.rows == 1 or group.rows * group.width * bs * kb <= group_bytes
            assert group.valid.sum(1).tolist() == [lens[r] for r in rows]
            span = chunk.blocks[at:at + group.rows * group.width]
            assert torch.equal(span.view(group.rows, -1), tables[rows, :group.width])
            at += group.rows * group.width
            seen += rows
        assert at == chunk.blocks.numel()
    assert sorted(seen) == list(range(len(lens)))
    assert torch.equal(torch.tensor(seen)[plan.order], torch.arange(len(lens)))  # order undoes the grouping
    if group_bytes == 1 << 40:
        assert len(plan.chunks) == 1 and len(plan.groups) == len({-(-n // bs) for n in lens})


def test_decodes_already_in_width_order_are_not_permuted():
    plan = plan_decode_groups(torch.zeros(4, 3, dtype=torch.long), [3, 5, 20, 40], 16, 512, group_cost=0)
    assert plan.perm is None and plan.order is None and [g.width for g in plan.groups] == [1, 2, 3]


def test_the_gather_plans_groups_on_the_cpu_only():
    tables = torch.zeros(3, 250, dtype=torch.long)
    lens = [5, 4000, 33]
    assert GatherDecode().plan(tables, lens, 16, 512) is not None
    assert GatherDecode().plan(tables.to("meta"), lens, 16, 512) is None  # off the CPU: one padded call
    assert TritonDecode().plan(tables, lens, 16, 512) is None


def test_no_plan_when_one_group_of_the_widest_width_would_do():
    """Then the padded call is the grouped call: it runs, with no plan to build."""
    tables = torch.zeros(3, 4, dtype=torch.long)
    assert plan_decode_groups(tables, [60, 60, 64], 16, 512) is None  # one width
    assert plan_decode_groups(tables, [5, 60, 33], 16, 512) is None  # merged: padding costs less than groups
    assert plan_decode_groups(tables, [5, 60, 33], 16, 512, group_cost=0) is not None
    assert plan_decode_groups(tables, [60, 60, 64], 16, 512, group_bytes=1024) is not None  # over the budget


@pytest.mark.parametrize("graphs", ["off", "on"])
def test_engine_decodes_go_grouped_on_the_cpu_unless_graphs_fix_the_width(monkeypatch, graphs):
    """Eager CPU steps take the grouped path (one width per group here: the tiny model's short
    histories would all merge into one group, which is the padded call); the decode graphs'
    fixed-width buffers take the padded call. Tokens are those of the padded path either way
    (float64: no near-tie can flip)."""
    import functools

    from engine.attention import decode_kernel

    calls = {"grouped": 0, "padded": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    rng = random.Random(11)
    reqs = [([rng.randrange(256) for _ in range(rng.randint(1, 90))], rng.randint(2, 10)) for _ in range(6)]
    outs = []
    monkeypatch.setattr(decode_kernel, "plan_decode_groups", functools.partial(plan_decode_groups, group_cost=0))
    monkeypatch.setattr(decode_kernel, "grouped_decode_attention",
                        counting("grouped", paged_decode.grouped_decode_attention))
    monkeypatch.setattr(decode_kernel, "paged_decode_attention",
                        counting("padded", paged_decode.paged_decode_attention))
    for plan in (True, False):
        if not plan:
            monkeypatch.setattr(GatherDecode, "plan", lambda self, *a: None)
        calls.update(grouped=0, padded=0)
        eng = Engine(EngineConfig(model="tiny", device="cpu", dtype="float64", attention="sdpa", block_size=4,
                                  decode_attention="gather", decode_graphs=graphs, max_tokens_per_step=48,
                                  prefill_chunk_size=16))
        ids = [eng.add_request(p, max_new_tokens=n) for p, n in reqs]
        eng.run_until_done()
        outs.append([eng.requests[i].output for i in ids])
        assert (calls["grouped"] > 0) == plan
        if graphs == "on":  # decode-only steps from the graphs' buffers
            assert calls["padded"] > 0
    assert outs[0] == outs[1]
