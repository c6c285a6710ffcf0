"""Write small random GGUF files (gguf.GGUFWriter) for the tests: a Llama or Qwen2 model from a random
Hugging Face checkpoint, its tensors quantized to one type, with the checkpoint's tokenizer and chat
template in the metadata; K-quant tensors, which the gguf package cannot quantize, are random blocks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter, quants

# K-quant block layouts: bytes per block, and (offset, f16 scale) fields to overwrite so weights stay small
K_BLOCKS = {T.Q2_K: (84, [(80, 2e-3), (82, 1e-3)]), T.Q3_K: (110, [(108, 5e-4)]),
            T.Q4_K: (144, [(0, 1e-4), (2, 1e-4)]), T.Q5_K: (176, [(0, 5e-5), (2, 5e-5)]),
            T.Q6_K: (210, [(208, 2e-5)])}
LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
         "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert script's Q/K row order (what gguf_file.py undoes)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, i, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{i}.{LAYER[module]}.{kind}"


def tokenizer_metadata(directory: Path) -> dict:
    data = json.loads((directory / "tokenizer.json").read_text())
    vocab = dict(data["model"]["vocab"])
    for added in data["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    control = {a["content"] for a in data["added_tokens"] if a["special"]}
    return {"tokens": tokens, "merges": merges, "types": [3 if t in control else 1 for t in tokens]}


def k_blocks(rows: int, cols: int, qtype: T, rng: np.random.Generator) -> np.ndarray:
    size, scales = K_BLOCKS[qtype]
    blocks = rng.integers(0, 256, size=(rows, cols // 256, size), dtype=np.uint8)
    for offset, value in scales:
        blocks[..., offset:offset + 2] = np.frombuffer(np.float16(value).tobytes(), dtype=np.uint8)
    return blocks.reshape(rows, -1)


def write_gguf(path: Path, checkpoint: Path, qtype: T, arch: str = "llama", chat_template: str | None = None,
               add_bos: bool = True, pre: str = "default", seed: int = 0) -> Path:
    """checkpoint (a make_test_checkpoint directory) as a GGUF file whose 2-D tensors are `qtype`."""
    from safetensors.numpy import load_file

    config = json.loads((checkpoint / "config.json").read_text())
    tensors = {}
    for f in sorted(checkpoint.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    w = GGUFWriter(str(path), arch)
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(config["hidden_size"] // heads)
    w.add_rope_freq_base(float(config.get("rope_theta") or config.get("rope_parameters", {}).get("rope_theta")))
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_vocab_size(config["vocab_size"])
    meta = tokenizer_metadata(checkpoint)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(meta["tokens"])
    w.add_token_merges(meta["merges"])
    w.add_token_types(meta["types"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_add_bos_token(add_bos)
    if chat_template:
        w.add_chat_template(chat_template)
    rng = np.random.default_rng(seed)
    for name, array in tensors.items():
        if name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        array = array.astype(np.float32)
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            array = permute(array, heads if ".q_proj." in name else kv_heads)
        if array.ndim == 1 or qtype == T.F32:
            w.add_tensor(gguf_name(name), array)
        elif qtype in K_BLOCKS:
            w.add_tensor(gguf_name(name), k_blocks(*array.shape, qtype, rng), raw_dtype=qtype)
        elif qtype == T.F16:
            w.add_tensor(gguf_name(name), array.astype(np.float16))
        else:
            w.add_tensor(gguf_name(name), quants.quantize(array, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
