"""FlexAttention over the packed batch, with a block mask built from the batch metadata.

Built for CUDA (compiled kernels); on the CPU torch runs it unfused, which is slow but exact,
so tests can still compare it with the other backends.

The block mask is never built by evaluating the mask function densely (create_block_mask over
T x K costs more than the attention itself): queries and keys are packed item after item in the
same order, so the keys a block of queries can see form one contiguous range, from the first key
of its first row's item to the last visible key of its last row. Those ranges, in blocks, go
straight into BlockMask.from_kv_blocks; the mask function still decides inside every block.
The mask is built once per step and shared by all layers.

Shapes are padded for the compiler: query rows up to whole blocks (at least two), keys to at least
one block more than the queries. torch.compile(dynamic=True) otherwise specialises on a single
block (size 1) and on queries == keys (the same symbol for both), and each such batch would
recompile the kernel mid-run (tens of seconds on CUDA). Padded rows belong to no item and padded
keys to none, so the mask hides them; their outputs are dropped.

Single-query items at the front of the batch (the decodes) take the batched path of single.py,
so flex only sees the prefill rows, whose key ranges are tight. Should the compiled kernel fail to
build on CUDA, those rows go through sdpa item by item, with a warning.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ..batch_builder import RaggedBatch
from .sdpa import sdpa_attention
from .single import leading_singles, single_query_attention

BLOCK = 128  # FlexAttention's sparse block size, for queries and keys


def flex_available(device: torch.device) -> bool:
    try:
        return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
    except ModuleNotFoundError:  # a torch without torch.nn.attention at all
        return False


_compiled: dict[str, Callable[..., Any]] = {}


def compiled_flex(backend="inductor"):
    """flex_attention compiled once for every batch shape.

    Besides dynamic=True this turns off the shape tracer's "duck sizing", which gives sizes that
    happen to be equal at the first trace one symbol: a first batch of two query blocks (the
    smallest padded prefill) shares a symbol with the model's two KV heads, the head count is
    fixed, and so that block count was fixed too, and the next batch recompiled (measured: 3
    compiles instead of 1 on the tiny preset's workload). Tests pass a counting backend."""
    from torch.fx.experimental import _config as config
    from torch.nn.attention.flex_attention import flex_attention

    fn = torch.compile(flex_attention, dynamic=True, backend=backend)
    if not hasattr(config, "use_duck_shape"):  # a torch without the switch: compile as it comes
        return fn

    def without_duck_sizing(*args, **kwargs):
        with config.patch(use_duck_shape=False):  # type: ignore[attr-defined]  # added by torch's install_config_module
            return fn(*args, **kwargs)

    return without_duck_sizing


def _flex(device: torch.device):
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if "cuda" not in _compiled:
        _compiled["cuda"] = compiled_flex()
    return _compiled["cuda"]


def kv_block_ranges(q_seq: torch.Tensor, q_pos: torch.Tensor, cu_k: torch.Tensor, num_kv_blocks: int,
                    block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query block: (first kv block, number of kv blocks) it may touch. All on the device.

    q_seq/q_pos: item index and position of each query row (rows packed item after item);
    cu_k: key offsets per item (keys packed in the same item order).
    """
    t = q_seq.shape[0]
    firsts = torch.arange(0, t, block, device=q_seq.device)
    lasts = torch.clamp(firsts + block - 1, max=t - 1)
    lo = cu_k[q_seq[firsts]]  # the first row's item starts here; earlier rows of it see no less
    hi = cu_k[q_seq[lasts]] + q_pos[lasts]  # the last row's last visible key (inclusive)
    lo_b = lo // block
    hi_b = torch.clamp(hi // block, max=num_kv_blocks - 1)
    return lo_b, hi_b - lo_b + 1


def padded_sizes(num_queries: int, num_keys: int, block: int = BLOCK) -> tuple[int, int]:
    """(rows, keys) the compiled kernel sees: whole blocks, at least two of queries, keys at least
    one block beyond the queries, so no size is 1 and the two are never equal."""
    rows = max(2, -(-num_queries // block)) * block
    keys = max(rows + block, -(-num_keys // block) * block)
    return rows, keys


def ragged_block_mask(q_seq, q_pos, k_seq, k_pos, cu_k, num_keys: int):
    from torch.nn.attention.flex_attention import BlockMask

    def ragged_causal(b, h, qi, kj):
        return (q_seq[qi] == k_seq[kj]) & (k_pos[kj] <= q_pos[qi])

    num_kv_blocks = -(-num_keys // BLOCK)
    lo_b, count = kv_block_ranges(q_seq, q_pos, cu_k, num_kv_blocks)
    cols = torch.arange(num_kv_blocks, device=q_seq.device)
    indices = torch.clamp(lo_b[:, None] + cols[None, :], max=num_kv_blocks - 1)
    return BlockMask.from_kv_blocks(count[None, None].int(), indices[None, None].int(), BLOCK_SIZE=BLOCK,
                                    mask_mod=ragged_causal, seq_lengths=(q_seq.shape[0], num_keys),
                                    compute_q_blocks=False)  # forward only: no transposed index


_broken: dict = {}  # shape key -> why the compiled kernel could not be built
# Where the compiled kernel cannot be built, the prefill rows go through sdpa on these devices:
# uncompiled flex materialises every score (GBs for an 8k-token step) and is far slower. On the CPU
# uncompiled flex is what runs anyway, exact, and what the tests compare.
SDPA_FALLBACK_DEVICES = ("cuda",)


def compile_failures(device: torch.device, dtype: torch.dtype) -> list[str]:
    """Why the compiled kernel could not be built for this device and dtype (empty: it was, or
    was never tried)."""
    return [why for key, why in _broken.items() if key[:2] == (device.type, dtype)]


def _kernel_key(q, k) -> tuple:
    return (q.device.type, q.dtype, q.shape[1], k.shape[1], q.shape[2])


def _run(q, k, v, block_mask) -> torch.Tensor | None:
    """Flex over padded rows: compiled where it is, uncompiled on the CPU. None when the compiled
    kernel failed here (said once, as a warning) and this device falls back to sdpa."""
    from torch.nn.attention.flex_attention import flex_attention

    args = (q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None])
    key = _kernel_key(q, k)
    fn = _flex(q.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        if fn is not flex_attention and key not in _broken:
            try:
                return fn(*args, block_mask=block_mask, enable_gqa=True)[0].transpose(0, 1)
            except Exception as exc:  # e.g. no Triton config for this head size / dtype
                _broken[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                instead = "sdpa instead" if q.device.type in SDPA_FALLBACK_DEVICES else "uncompiled (slow, exact)"
                warnings.warn(f"compiled flex attention failed for heads {key[2]}/{key[3]} x {key[4]} "
                              f"{key[1]}; running it {instead}: {_broken[key]}", stacklevel=2)
        if q.device.type in SDPA_FALLBACK_DEVICES:
            return None
        out = flex_attention(*args, block_mask=block_mask, enable_gqa=True)
    return out[0].transpose(0, 1)


# Both paddings always build a new tensor, even with nothing to add, so the compiled kernel sees the
# same layout every step: the mask closes over the index tensors, and a view of them makes dynamo
# guard on its base; q is a slice of the fused projection, whose row stride differs from a fresh
# tensor's. Either way the next step failed a guard and recompiled (seconds on CUDA).
def _pad(x: torch.Tensor, length: int, value: int) -> torch.Tensor:
    return torch.cat([x, x.new_full((length - x.shape[0],), value)])


def _prefill_mask(batch: RaggedBatch, n_single: int):
    """The block mask for the rows after the first n_single items, built once per step, over the
    padded sizes: (q0, k0, rows, keys, mask)."""
    if "flex_mask" not in batch.scratch:
        q0 = sum(batch.q_lens[:n_single])
        k0 = sum(batch.k_lens[:n_single])
        items = len(batch.q_lens) - n_single
        rows, keys = padded_sizes(batch.num_tokens - q0, batch.num_keys - k0)
        # Padded rows are a pretend item `items` (cu_k has an entry for it: they see no real key's
        # block); padded keys belong to item -1, which no row is.
        q_seq = _pad(batch.seq_ids[q0:] - n_single, rows, items)
        q_pos = _pad(batch.positions[q0:], rows, 0)
        k_seq = _pad(batch.key_seq_ids[k0:] - n_single, keys, -1)
        k_pos = _pad(batch.key_positions[k0:], keys, 0)
        cu_k = batch.cu_seqlens_k[n_single:] - k0
        mask = ragged_block_mask(q_seq, q_pos, k_seq, k_pos, cu_k, keys)
        batch.scratch["flex_mask"] = (q0, k0, rows, keys, mask)
    return batch.scratch["flex_mask"]


def _padded_rows(x: torch.Tensor, length: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros((length - x.shape[0],) + x.shape[1:])])


def _prefill_rows(q, k, v, batch: RaggedBatch, n_single: int) -> torch.Tensor:
    """Attention for the rows after the first n_single items: flex over padded rows, or sdpa item by
    item where the compiled kernel could not be built (SDPA_FALLBACK_DEVICES)."""
    if not (q.device.type in SDPA_FALLBACK_DEVICES and _kernel_key(q, k) in _broken):
        q0, k0, rows, keys, block_mask = _prefill_mask(batch, n_single)
        out = _run(_padded_rows(q[q0:], rows), _padded_rows(k[k0:], keys), _padded_rows(v[k0:], keys), block_mask)
        if out is not None:
            return out[:batch.num_tokens - q0]
    q0, k0 = sum(batch.q_lens[:n_single]), sum(batch.k_lens[:n_single])
    return sdpa_attention(q[q0:], k[k0:], v[k0:], batch.tail(n_single))


def flex_attention_ragged(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: RaggedBatch) -> torch.Tensor:
    n_single = leading_singles(batch)
    if n_single == len(batch.q_lens):  # decode-only step
        rows, out = single_query_attention(q, k, v, batch, list(range(n_single)))
        return out
    rest = _prefill_rows(q, k, v, batch, n_single)
    if n_single == 0:
        return rest
    _, head = single_query_attention(q, k, v, batch, list(range(n_single)))
    return torch.cat([head, rest])
