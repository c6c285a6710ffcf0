"""Our random weights, copied into a Hugging Face `LlamaForCausalLM` (same function, other code).

The engine's decoder is Llama-shaped (RMSNorm, half-split rotary as `rotate_half`, GQA, SwiGLU,
untied lm_head), so the copy is a renaming of parameters, the fused q/k/v and gate/up projections
cut into Llama's row blocks; nothing is transposed or re-scaled.
Importing this module does not import transformers; the functions do, when called.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.models.llama import DecoderModel, ModelSpec, fused_parts

# ours (per layer) -> Hugging Face Llama (per layer); fused ones are cut by engine.models.llama.fused_parts
LAYER_NAMES = {
    "input_norm.weight": "input_layernorm.weight",
    "post_norm.weight": "post_attention_layernorm.weight",
    "o_proj.weight": "self_attn.o_proj.weight",
    "down_proj.weight": "mlp.down_proj.weight",
}
HF_MODULE = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp"}
TOP_NAMES = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}


def hf_pieces(ours: str, spec: ModelSpec) -> list[tuple[str, int, int]]:
    """Where one of our parameters goes: (Hugging Face name, first row, row count) for each piece,
    e.g. layers.3.qkv_proj.weight -> q_proj, k_proj and v_proj of model.layers.3."""
    if ours in TOP_NAMES:
        return [(TOP_NAMES[ours], 0, -1)]
    prefix, index, rest = ours.split(".", 2)
    if prefix == "layers" and rest in LAYER_NAMES:
        return [(f"model.layers.{index}.{LAYER_NAMES[rest]}", 0, -1)]
    if prefix == "layers" and rest in fused_parts(spec):
        pieces, first = [], 0
        for rows, name in fused_parts(spec)[rest]:
            pieces.append((f"model.layers.{index}.{HF_MODULE[name]}.{name}.weight", first, rows))
            first += rows
        return pieces
    raise KeyError(f"no Hugging Face name for parameter {ours!r}")


def llama_config(spec: ModelSpec):
    """A `LlamaConfig` with our preset's shape; no BOS/EOS, so generation never stops early."""
    from transformers import LlamaConfig

    common: dict[str, Any] = dict(vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
                  intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
                  num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
                  head_dim=spec.head_dim, max_position_embeddings=spec.max_context, rms_norm_eps=spec.rms_eps,
                  hidden_act="silu", tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                  bos_token_id=None, eos_token_id=None, pad_token_id=0)
    try:  # transformers >= 5: rope settings live in rope_parameters
        config = LlamaConfig(**common, rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta})
    except TypeError:  # transformers 4.x
        config = LlamaConfig(**{**common, "rope_theta": spec.rope_theta})  # (5.x's stubs lack the 4.x keyword)
    theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", getattr(config, "rope_theta", None))
    if theta != spec.rope_theta:
        raise RuntimeError(f"LlamaConfig did not take rope_theta={spec.rope_theta} (got {theta})")
    return config


@torch.no_grad()
def to_hf_llama(model: DecoderModel, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                attn_implementation: str = "sdpa"):
    """A `LlamaForCausalLM` holding exactly `model`'s weights (cast to dtype, on device)."""
    from transformers import LlamaForCausalLM

    dtype = dtype or next(model.parameters()).dtype
    device = device or next(model.parameters()).device
    config = llama_config(model.spec)
    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        hf: Any = LlamaForCausalLM(config)  # Any: transformers types .to through functools.wraps, uncallable to mypy
    hf = hf.to_empty(device=device).to(dtype)
    theirs = dict(hf.named_parameters())
    copied = set()
    for our_name, param in model.named_parameters():
        for their_name, first, rows in hf_pieces(our_name, model.spec):
            src = param if rows < 0 else param[first:first + rows]
            dst = theirs[their_name]
            if dst.shape != src.shape:
                raise RuntimeError(f"{our_name} {tuple(src.shape)} does not fit {their_name} {tuple(dst.shape)}")
            dst.copy_(src.to(device=device, dtype=dtype))
            copied.add(their_name)
    missing = sorted(set(theirs) - copied)
    if missing:
        raise RuntimeError(f"Hugging Face parameters with no source: {missing[:5]}")
    # Non-persistent buffers (rotary inv_freq) were left empty by to_empty: rebuild those modules.
    for parent in list(hf.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child).__name__.endswith("RotaryEmbedding"):
                with torch.device(device):
                    setattr(parent, child_name, type(child)(config))
    hf.generation_config.eos_token_id = None
    hf.generation_config.bos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf.eval()
