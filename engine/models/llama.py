"""A Llama-style decoder (RMSNorm, rotary positions, grouped-query attention, SwiGLU).

Weights are random from a seed (the presets), or a local Hugging Face checkpoint's (checkpoint.py,
which also sets the spec's options: biases, tied embeddings, rope scaling); nothing is downloaded.
The forward pass takes one packed, unpadded batch and leaves keys/values to the KV cache and the
attention backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_context: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    qkv_bias: bool = False  # Qwen2 has biases on its q/k/v projections
    o_bias: bool = False  # and Llama's attention_bias puts one on o_proj too
    tie_embeddings: bool = False  # the output head is the embedding matrix (small Qwen2, Llama 3.2)
    # rope scaling as a config says it: (("rope_type", "llama3"), ("factor", 8.0), ...); () for none
    rope_scaling: tuple[tuple[str, float | str], ...] = ()
    head_size: int = 0  # 0: hidden_size // num_heads (a config may name another)

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden_size // self.num_heads


PRESETS = {
    # Byte-level vocabulary, so scenarios can use text prompts; fast on a 2-core CPU.
    "tiny": ModelSpec("tiny", vocab_size=256, hidden_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, intermediate_size=128, max_context=4096),
    # The byte vocabulary at a quarter of tiny's compute: a draft model for speculative decoding.
    "micro": ModelSpec("micro", vocab_size=256, hidden_size=32, num_layers=1, num_heads=2,
                       num_kv_heads=1, intermediate_size=64, max_context=4096),
    # Qwen2.5-0.5B widths (vocabulary cut to 32000).
    "small": ModelSpec("small", vocab_size=32000, hidden_size=896, num_layers=24, num_heads=14,
                       num_kv_heads=2, intermediate_size=4864, max_context=4096,
                       rope_theta=1000000.0),
}


LOW_PRECISION = (torch.bfloat16, torch.float16)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x * rsqrt(mean(x^2) + eps) * weight; one fused kernel on CUDA instead of five (the same
        # composite, bit for bit, on the CPU)
        if x.dtype in LOW_PRECISION:
            # Normalised in float32, then weighted in x's dtype, as transformers does, so bf16 runs
            # round as the reference people compare with. (torch's fused rms_norm rounds otherwise,
            # and that alone flipped SmolLM2's first token on "What is the capital of France?".)
            # The steps of torch's own composite (x*x for pow(x, 2), mean as sum / n), in place on
            # the float copy: the same bits in half the ops, which on decode rows cost more than
            # the arithmetic.
            h = x.float()
            scale = (h * h).sum(-1, keepdim=True).div_(h.shape[-1]).add_(self.eps).rsqrt_()
            return self.weight * h.mul_(scale).to(x.dtype)
        return nn.functional.rms_norm(x, self.weight.shape, self.weight, self.eps)


class Rotary:
    """Rotary embeddings in the half-split layout (as Llama in transformers).

    The cos/sin table is computed in float64, then cast; it is a plain attribute, not a buffer, so
    `model.to(bfloat16)` cannot round the frequencies. It covers the positions runs have reached
    (INITIAL_POSITIONS at first, doubled by `reserve` as longer sequences come), not a checkpoint's
    whole context: 20M positions would take 9 GB. Row p is the same whatever the table's length.
    """

    INITIAL_POSITIONS = 4096

    def __init__(self, head_dim: int, theta: float, max_context: int, scaling: dict | None = None):
        cpu = torch.device("cpu")  # explicit, whatever the default device is
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=cpu) / head_dim))
        self._inv_freq = scaled_inv_freq(inv_freq, scaling or {})
        self.max_context = max_context
        self.length = min(max_context, self.INITIAL_POSITIONS)
        self._tables: dict = {}

    def reserve(self, positions: int) -> bool:
        """Makes positions below `positions` available; True when the table grew (a CUDA graph that
        read the old table must be captured again)."""
        if positions <= self.length:
            return False
        while self.length < positions:
            self.length *= 2
        self.length = min(self.length, self.max_context)
        self._tables.clear()
        return True

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and the signed sin (its first half negated) of each position: what `apply` takes."""
        key = (positions.device, dtype)
        if key not in self._tables:
            cpu = torch.device("cpu")
            freqs = torch.arange(self.length, dtype=torch.float64, device=cpu)[:, None] * self._inv_freq[None, :]
            sin = freqs.sin()
            self._tables[key] = (torch.cat([freqs, freqs], dim=-1).cos().to(positions.device, dtype),
                                 torch.cat([-sin, sin], dim=-1).to(positions.device, dtype))
        cos, signed_sin = self._tables[key]
        return cos.index_select(0, positions)[:, None, :], signed_sin.index_select(0, positions)[:, None, :]

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        """x * cos + rotate_half(x) * sin, where rotate_half(x) = [-x2, x1]; the sign sits in the
        table instead (x2 * -sin is (-x2) * sin, bit for bit), one op fewer per layer."""
        half = x.shape[-1] // 2
        swapped = torch.cat([x[..., half:], x[..., :half]], dim=-1)
        return x * cos + swapped * signed_sin


ROPE_TYPES = ("default", "linear", "llama3")


def scaled_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Rope scaling as transformers computes it: `linear` divides every frequency by the factor;
    `llama3` divides the low frequencies (long wavelengths) only, blending in between."""
    kind = scaling.get("rope_type", "default")
    if kind == "default":
        return inv_freq
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    if kind != "llama3":
        raise ValueError(f"rope_type {kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_context = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return torch.where(medium, blended, scaled)


# Fused projections, one GEMM where Llama has two or three (fewer kernel launches per layer):
# our parameter -> its row blocks, each with the Llama projection it stands for.
def fused_parts(spec: ModelSpec) -> dict[str, list[tuple[int, str]]]:
    d, h, kvh, inter = spec.head_dim, spec.num_heads, spec.num_kv_heads, spec.intermediate_size
    return {"qkv_proj.weight": [(h * d, "q_proj"), (kvh * d, "k_proj"), (kvh * d, "v_proj")],
            "gate_up_proj.weight": [(inter, "gate_proj"), (inter, "up_proj")]}


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        d, h, kvh = spec.head_dim, spec.num_heads, spec.num_kv_heads
        self.input_norm = RMSNorm(spec.hidden_size, spec.rms_eps)
        self.qkv_proj = nn.Linear(spec.hidden_size, (h + 2 * kvh) * d, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(h * d, spec.hidden_size, bias=spec.o_bias)
        self.post_norm = RMSNorm(spec.hidden_size, spec.rms_eps)
        self.gate_up_proj = nn.Linear(spec.hidden_size, 2 * spec.intermediate_size, bias=False)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=False)
        self.spec = spec

    def forward(self, x, cos, sin, layer_idx, kv_cache, attention, meta):
        s = self.spec
        t, h, kvh = x.shape[0], s.num_heads, s.num_kv_heads
        qkv = self.qkv_proj(self.input_norm(x)).view(t, h + 2 * kvh, s.head_dim)
        # The paged store's CPU kernel: the same bits in one op. A cache that wraps the store offers
        # none (its own write must run), so a wrapper must not forward attributes it lacks.
        fused = getattr(kv_cache, "rotary_write", None)
        q = fused(layer_idx, qkv, cos, sin, h) if fused is not None else None
        if q is None:
            qk = Rotary.apply(qkv[:, :h + kvh], cos, sin)  # queries and keys rotated together
            q, k, v = qk[:, :h], qk[:, h:], qkv[:, h + kvh:]
            kv_cache.write(layer_idx, k, v)
        attn = attention(q, kv_cache, layer_idx, meta)  # reads the keys it needs (layer_attention.py)
        x = x + self.o_proj(attn.reshape(t, h * s.head_dim))
        gate, up = self.gate_up_proj(self.post_norm(x)).chunk(2, dim=-1)
        return x + self.down_proj(nn.functional.silu(gate) * up)


class DecoderModel(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(spec) for _ in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_eps)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rotary = Rotary(spec.head_dim, spec.rope_theta, spec.max_context, dict(spec.rope_scaling))

    @torch.no_grad()
    def init_random(self, seed: int) -> None:
        """Seeded random weights, scaled so activations stay O(1) through the layers.

        A fused projection draws its row blocks one by one, in Llama's order, so the weights are
        those of separate projections (the Hugging Face copy in the bench has exactly these)."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        parts = fused_parts(self.spec)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
                continue
            fan_in = param.shape[1] if param.dim() == 2 and "embed" not in name else 1
            std = 1.0 / fan_in**0.5
            rows = [n for n, _ in parts.get(name.rsplit(".", 2)[-2] + ".weight", [])] or [param.shape[0]]
            draws = [torch.randn((n, *param.shape[1:]), generator=gen, dtype=torch.float32) for n in rows]
            param.copy_(torch.cat(draws) * std)

    @torch.no_grad()
    def forward(self, token_ids, positions, sample_rows, kv_cache, attention, meta) -> torch.Tensor:
        """Runs the packed batch; returns logits only for `sample_rows` (tokens that sample).

        `attention` holds one attention adapter per layer (attention/layer_attention.py), called
        as attention(q, kv_cache, layer, meta) once the layer's keys/values are stored.
        """
        x = self.embed(token_ids)
        cos, sin = self.rotary.cos_sin(positions, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, i, kv_cache, attention[i], meta)
        x = self.norm(x if sample_rows is None else x.index_select(0, sample_rows))  # None: every row samples
        return self.lm_head(x)

    def reserve_positions(self, positions: int) -> bool:
        """Positions below `positions` may come next; True when the rope table grew (see Rotary)."""
        return self.rotary.reserve(positions)

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())


# The last model's seeded weights as drawn (float32, on the CPU), kept when the model itself goes
# to a GPU: the bench and the CUDA tests build the same preset several times in one process, and
# drawing `small`'s 0.5B numbers takes seconds. Not kept for CPU models, whose memory it would double.
_drawn: dict[tuple[str, int], dict[str, torch.Tensor]] = {}


def _keep_draws(device: torch.device) -> bool:
    return device.type != "cpu"


# Below this many parameters nn.Linear's own random init costs less than the meta-device detour
# that skips it: the first model built on "meta" imports torch._dynamo (~900 modules, about a second
# on a 2-core CPU), while initialising `tiny`'s 0.1M parameters takes a millisecond.
DIRECT_BUILD_MAX_PARAMS = 10_000_000


def parameter_count(spec: ModelSpec) -> int:
    d, h, kvh = spec.head_dim, spec.num_heads, spec.num_kv_heads
    layer = (2 * spec.hidden_size + spec.hidden_size * (h + 2 * kvh) * d + h * d * spec.hidden_size
             + 3 * spec.hidden_size * spec.intermediate_size)
    return 2 * spec.vocab_size * spec.hidden_size + spec.num_layers * layer + spec.hidden_size


def _empty_model(spec: ModelSpec) -> DecoderModel:
    """A model on the CPU whose parameters init_random (or the kept draws) will set, every one."""
    if parameter_count(spec) <= DIRECT_BUILD_MAX_PARAMS:
        # Built directly, its throwaway init drawn inside fork_rng: torch's global generator is left
        # as it was, as the meta-device path leaves it.
        with torch.random.fork_rng(devices=[]):
            return DecoderModel(spec)
    # Built without nn.Linear's own random init (6 s for `small` on a 2-core CPU, all of it
    # overwritten).
    with torch.device("meta"):
        model = DecoderModel(spec)
    return model.to_empty(device=torch.device("cpu"))


def build_model(name: str, seed: int, device: torch.device, dtype: torch.dtype,
                keep_draws: bool | None = None) -> DecoderModel:
    """keep_draws: keep this model's draws for the next build of the same preset and seed (default:
    for a model that is not on the CPU)."""
    model = _empty_model(PRESETS[name])
    if (name, seed) in _drawn:
        model.load_state_dict(_drawn[(name, seed)])
    else:
        model.init_random(seed)  # same weights on every device: drawn on the CPU from the seed
        _drawn.clear()
        if _keep_draws(device) if keep_draws is None else keep_draws:
            _drawn[(name, seed)] = {k: v.clone() for k, v in model.state_dict().items()}
    return model.to(device=device, dtype=dtype).eval()
