"""Tensor parallelism by heads: one shard's slice of a full model, built in place.

Each decoder layer keeps its code (engine/models/llama.py); only its weights and its idea of the head
counts change. Shard r of N keeps:
  - qkv_proj (column-parallel): its query heads r*h/N .. and the KV heads of their groups, so
    grouped-query attention stays inside the shard;
  - o_proj (row-parallel): the input columns of its heads; the partial sums are all-reduced;
  - gate_up_proj (column-parallel): its share of the intermediate units, gate and up alike;
  - down_proj (row-parallel): the matching input columns, all-reduced.
So a layer costs two all-reduces of [tokens, hidden], and every shard ends each layer with the
same full hidden state. The embedding, final norm and lm_head stay whole on every shard.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..models.llama import DecoderLayer, DecoderModel, ModelSpec
from .comm import Comm


def check_divisible(spec: ModelSpec, shards: int) -> None:
    """One line when the model's heads or MLP cannot be split `shards` ways."""
    for what, count in (("KV heads", spec.num_kv_heads), ("query heads", spec.num_heads),
                        ("MLP units", spec.intermediate_size)):
        if count % shards:
            fits = [n for n in range(1, spec.num_kv_heads + 1) if spec.num_kv_heads % n == 0
                    and spec.num_heads % n == 0 and spec.intermediate_size % n == 0]
            raise ValueError(f"shards={shards} with shard_by='heads': model {spec.name!r} has {count} {what}, "
                             f"which {shards} shards cannot divide; use shards in {fits} or shard_by='sequence'")


@dataclass(frozen=True)
class ShardSpec(ModelSpec):
    """A layer's view of the model on one shard: its head and MLP counts, the full head size."""

    shard_head_dim: int = 0

    @property
    def head_dim(self) -> int:
        return self.shard_head_dim


class RowParallelLinear(nn.Linear):
    """A linear layer fed this shard's slice of its input: the partial products are summed over the
    shards (all-reduce), and the bias, if any, is added once (on rank 0)."""

    def __init__(self, full: nn.Linear, start: int, stop: int, comm: Comm):
        super().__init__(stop - start, full.out_features, bias=full.bias is not None and comm.rank == 0,
                         device=full.weight.device, dtype=full.weight.dtype)
        with torch.no_grad():
            self.weight.copy_(full.weight[:, start:stop])
            if self.bias is not None and full.bias is not None:
                self.bias.copy_(full.bias)
        self.comm = comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.comm.all_reduce(super().forward(x))


def _rows(full: nn.Linear, spans: list[tuple[int, int]]) -> nn.Linear:
    """A column-parallel slice: the output rows in `spans`, in order (weight and bias)."""
    rows = torch.cat([torch.arange(a, b) for a, b in spans]).to(full.weight.device)
    out = nn.Linear(full.in_features, rows.numel(), bias=full.bias is not None, device=full.weight.device,
                    dtype=full.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(full.weight.index_select(0, rows))
        if out.bias is not None and full.bias is not None:
            out.bias.copy_(full.bias.index_select(0, rows))
    return out


def shard_by_heads(model: DecoderModel, comm: Comm) -> DecoderModel:
    """Cuts every layer of `model` (full weights, the same on every rank) down to shard comm.rank's."""
    spec, r, n = model.spec, comm.rank, comm.world
    check_divisible(spec, n)
    d, h, kvh, inter = spec.head_dim, spec.num_heads // n, spec.num_kv_heads // n, spec.intermediate_size // n
    q0, k0, v0 = 0, spec.num_heads * d, (spec.num_heads + spec.num_kv_heads) * d
    # The layers read head counts from their spec; head_dim is pinned (ModelSpec derives it from them).
    local = ShardSpec(**{**asdict(spec), "num_heads": h, "num_kv_heads": kvh, "intermediate_size": inter},
                      shard_head_dim=d)
    for layer in model.layers:
        assert isinstance(layer, DecoderLayer)
        layer.qkv_proj = _rows(layer.qkv_proj, [(q0 + r * h * d, q0 + (r + 1) * h * d),
                                                (k0 + r * kvh * d, k0 + (r + 1) * kvh * d),
                                                (v0 + r * kvh * d, v0 + (r + 1) * kvh * d)])
        layer.o_proj = RowParallelLinear(layer.o_proj, r * h * d, (r + 1) * h * d, comm)
        full_inter = spec.intermediate_size
        layer.gate_up_proj = _rows(layer.gate_up_proj, [(r * inter, (r + 1) * inter),
                                                        (full_inter + r * inter, full_inter + (r + 1) * inter)])
        layer.down_proj = RowParallelLinear(layer.down_proj, r * inter, (r + 1) * inter, comm)
        layer.spec = local
    return model
