"""Paged decode attention as one Triton kernel, for CUDA.

One program per (request, KV head) walks the request's key positions, looks each one's block up
in the block table and reads keys and values straight from the pool: every cached byte is read
once, for all query heads of the group together, and nothing is copied or padded. The loop runs
to the request's own key length, read on the device, so one compiled kernel (and one CUDA graph)
serves every length. Softmax is the online (running max and sum) form, in float32; the two
matrix products take the pool's dtype (bf16 on tensor cores) and accumulate in float32.

Tests run it on the CPU through Triton's interpreter (TRITON_INTERPRET=1, set before import).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

KEYS_PER_ITERATION = 64


# Triton compiles a variant per integer argument that is 1 or a multiple of 16. The table stride is
# the step's widest table in eager steps, so it changes from step to step: specialising on it would
# compile new variants mid-run (a second or more each). Every other stride is fixed by the model.
@triton.jit(do_not_specialize=["table_stride"])
def _paged_decode_kernel(q_ptr, k_ptr, v_ptr, table_ptr, lens_ptr, out_ptr,
                         q_row_stride, q_head_stride, table_stride, slot_stride, kv_head_stride,
                         out_row_stride, out_head_stride, scale,
                         GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
                         BLOCK_SIZE: tl.constexpr, KEYS: tl.constexpr):
    row = tl.program_id(0)
    kv_head = tl.program_id(1)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, HEAD_DIM)
    heads = kv_head * GROUP + g  # the query heads that share this KV head
    g_ok = g < GROUP
    q = tl.load(q_ptr + row * q_row_stride + heads[:, None] * q_head_stride + d[None, :],
                mask=g_ok[:, None], other=0.0)
    key_len = tl.load(lens_ptr + row)
    running_max = tl.full([BLOCK_G], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    for start in range(0, key_len, KEYS):
        pos = start + tl.arange(0, KEYS)
        live = pos < key_len
        block = tl.load(table_ptr + row * table_stride + pos // BLOCK_SIZE, mask=live, other=0)
        slot = block.to(tl.int64) * BLOCK_SIZE + pos % BLOCK_SIZE
        offsets = slot[:, None] * slot_stride + kv_head * kv_head_stride + d[None, :]
        k = tl.load(k_ptr + offsets, mask=live[:, None], other=0.0)
        # In the pool's dtype (tensor cores for bf16), accumulated in float32; exact float32 for float32.
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # [BLOCK_G, KEYS]
        scores = tl.where(live[None, :], scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, 1))
        rescale = tl.exp(running_max - new_max)
        p = tl.exp(scores - new_max[:, None])
        running_sum = running_sum * rescale + tl.sum(p, 1)
        v = tl.load(v_ptr + offsets, mask=live[:, None], other=0.0)
        acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        running_max = new_max
    out = acc / running_sum[:, None]
    tl.store(out_ptr + row * out_row_stride + heads[:, None] * out_head_stride + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=g_ok[:, None])


def supports(q: torch.Tensor, k_pool: torch.Tensor) -> bool:
    """Shapes and dtypes the kernel handles (tl.dot: dims of at least 16, powers of two)."""
    d = q.shape[-1]
    return (q.dtype in (torch.float16, torch.bfloat16, torch.float32) and k_pool.dtype == q.dtype
            and d >= 16 and d & (d - 1) == 0)


def launch_constants(heads: int, kv_heads: int, head_dim: int, block_size: int) -> dict[str, int]:
    """The kernel's compile-time constants for a model shape (also what tests compile it with for
    GPUs the CPU machine does not have: tests/triton_aot.py)."""
    group = heads // kv_heads
    # tl.dot in older Triton releases needs 16 rows or more: a group of 7 query heads is padded to 16
    # (masked rows; newer releases pad it themselves).
    return dict(GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
                BLOCK_SIZE=block_size, KEYS=KEYS_PER_ITERATION)


def paged_decode_triton(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, tables: torch.Tensor,
                        key_lens: torch.Tensor, block_size: int) -> torch.Tensor:
    """Same contract as paged_decode.paged_decode_attention: q [n, heads, d]; pools [slots, kv_heads, d]
    (contiguous in the last two dims); tables [n, blocks]; key_lens [n]. Returns [n, heads, d]."""
    n, heads, d = q.shape
    kv_heads = k_pool.shape[1]
    out = torch.empty_like(q)
    _paged_decode_kernel[(n, kv_heads)](
        q, k_pool, v_pool, tables, key_lens, out,
        q.stride(0), q.stride(1), tables.stride(0), k_pool.stride(0), k_pool.stride(1),
        out.stride(0), out.stride(1), d ** -0.5,
        **launch_constants(heads, kv_heads, d, block_size))
    return out
