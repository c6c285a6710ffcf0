"""A GGUF file (llama.cpp's format) as a checkpoint: read with the `gguf` package, llama.cpp's own
reader, converted once into a Hugging Face directory in cbtui's cache (config.json, float32
model.safetensors, tokenizer.json, tokenizer_config.json with the chat template), which
checkpoint.py then loads like any other. The second start reads only the converted directory.

What converts: Llama-family architectures (llama, qwen2); tensors in F32, F16, BF16, Q8_0, Q4_0,
Q4_1, Q5_0, Q5_1 and the K-quants `gguf.quants` can dequantize; llama.cpp's Q/K row permutation
(written for its interleaved rotary) undone for `llama`; a byte-level BPE tokenizer (`gpt2`) built
with `tokenizers` from the file's tokens, merges, token types and special ids.

A file is walked by `check_header` before the reader sees it: counts, string and array lengths and
tensor extents must fit inside the file, so a lying header costs one pass over its bytes and one
GGUFError line, never an endless loop or a huge allocation.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import stat
import struct
from pathlib import Path
from typing import Any

from .cache_dir import cache_dir, staged_dir
from .checkpoint import CheckpointError

MAGIC = b"GGUF"
CONVERTED = "converted"
FORMAT = 1  # bump when the converted layout changes
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
STRING, ARRAY = 8, 9
MAX_DIMS = 4
# GGUF tensor name -> the Hugging Face name (per layer: blk.N. -> model.layers.N.)
TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
       "output.weight": "lm_head.weight"}
LAYER = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
         "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
         "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


class GGUFError(CheckpointError):
    """A GGUF file that cannot be used: one line naming the file (and tensor or key)."""


def is_gguf(model: str) -> bool:
    """Does this --model setting name a GGUF file (by its suffix, or its first four bytes)?"""
    if model.lower().endswith(".gguf"):
        return True
    path = Path(os.path.expanduser(model))
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def _regular_file(path: Path) -> os.stat_result:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise GGUFError(f"{path}: cannot open it ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise GGUFError(f"{path}: not a regular file (a GGUF checkpoint is a plain file)")
    if st.st_size < 24:
        raise GGUFError(f"{path}: {st.st_size} bytes, too short for a GGUF header")
    return st


class _Walker:
    """Walks a GGUF header over an mmap, checking every length against what is left of the file."""

    def __init__(self, data: Any, path: Path):
        self.data, self.path, self.pos, self.size = data, path, 0, len(data)

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what} (at byte {self.pos}); the header is damaged or lies")

    def take(self, n: int) -> int:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{n} bytes wanted, {self.size - self.pos} left")
        start, self.pos = self.pos, self.pos + n
        return start

    def u32(self) -> int:
        return int(struct.unpack_from("<I", self.data, self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack_from("<Q", self.data, self.take(8))[0])

    def string(self, limit: int = 1 << 30) -> bytes:
        n = self.u64()
        if n > limit:
            raise self.fail(f"a string of {n} bytes")
        start = self.take(n)
        return bytes(self.data[start:start + n])

    def value(self, kind: int, depth: int = 0) -> None:
        if kind in SCALAR_SIZES:
            self.take(SCALAR_SIZES[kind])
        elif kind == STRING:
            n = self.u64()
            self.take(n)
        elif kind == ARRAY and depth < 2:
            item, count = self.u32(), self.u64()
            least = SCALAR_SIZES.get(item, 8 if item == STRING else 12)
            if count * least > self.size - self.pos:
                raise self.fail(f"an array of {count} items cannot fit in the file")
            if item in SCALAR_SIZES:
                self.take(count * least)
            else:
                for _ in range(count):
                    self.value(item, depth + 1)
        else:
            raise self.fail(f"unknown metadata value type {kind}")


def check_header(path: Path, data: Any) -> None:
    """Every count, length and tensor extent in the header fits the file; quant types are known."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    w = _Walker(data, path)
    if bytes(data[:4]) != MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (it does not start with 'GGUF')")
    w.take(4)
    version = w.u32()
    if version not in (2, 3):
        raise GGUFError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    tensors, kvs = w.u64(), w.u64()
    if tensors > (w.size - w.pos) // 24 or kvs > (w.size - w.pos) // 13:
        raise w.fail(f"{tensors} tensors and {kvs} metadata keys cannot fit in {w.size} bytes")
    alignment = 32
    for _ in range(kvs):
        key = w.string(1 << 16)
        kind = w.u32()
        if key == b"general.alignment" and kind == 4:
            alignment = int(struct.unpack_from("<I", data, w.pos)[0])
            if alignment == 0 or alignment & (alignment - 1) or alignment > 1 << 20:
                raise w.fail(f"general.alignment={alignment} must be a power of two")
        w.value(kind)
    extents = []
    for _ in range(tensors):
        name = w.string(1 << 16).decode("utf-8", "replace")
        dims = w.u32()
        if dims > MAX_DIMS:
            raise w.fail(f"tensor {name} has {dims} dimensions")
        shape = [w.u64() for _ in range(dims)]
        raw = w.u32()
        offset = w.u64()
        try:
            qtype = GGMLQuantizationType(raw)
        except ValueError:
            raise GGUFError(f"{path}: tensor {name} has unknown quantization type {raw}") from None
        block, type_size = GGML_QUANT_SIZES[qtype]
        elements = 1
        for d in shape:
            elements *= d
        if shape and shape[0] % block:
            raise GGUFError(f"{path}: tensor {name}: a row of {shape[0]} does not split into {qtype.name} blocks "
                            f"of {block}")
        extents.append((name, offset, elements // block * type_size))
    start = -(-w.pos // alignment) * alignment
    for name, offset, nbytes in extents:
        if start + offset + nbytes > w.size:
            raise GGUFError(f"{path}: tensor {name} runs past the end of the file (data at {start + offset}, "
                            f"{nbytes} bytes, file {w.size} bytes)")


def _read(path: Path):
    """The gguf package's reader over a file check_header passed."""
    st = _regular_file(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            check_header(path, data)
    except OSError as exc:
        raise GGUFError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        from gguf import GGUFReader

        return GGUFReader(path), st
    except Exception as exc:  # the reader raises ValueError, IndexError, KeyError... for a bad file
        raise GGUFError(f"{path}: the gguf reader refused it ({type(exc).__name__}: {exc})") from None


class _Meta:
    def __init__(self, reader, path: Path):
        self.fields, self.path = reader.fields, path

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        field = self.fields.get(key)
        if field is None:
            if default is None:
                raise GGUFError(f"{self.path}: metadata {key} is missing")
            return default
        try:
            value = field.contents()
        except (UnicodeDecodeError, ValueError, IndexError) as exc:
            raise GGUFError(f"{self.path}: metadata {key} cannot be read ({exc})") from None
        if kind is int and isinstance(value, float):
            kind = float  # caught below: an int key written as a float
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise GGUFError(f"{self.path}: metadata {key}={str(value)[:60]!r} has the wrong type")
        return value

    def int(self, key: str, default: int | None = None) -> int:
        value = self.get(key, int, default)
        if value < 1 or value > 1 << 31:
            raise GGUFError(f"{self.path}: metadata {key}={value} is out of range")
        return int(value)


def _config(meta: _Meta, tensors: dict, tokens: list[str]) -> dict:
    arch = meta.get("general.architecture", str)
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{meta.path}: architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
    hidden, heads = meta.int(f"{arch}.embedding_length"), meta.int(f"{arch}.attention.head_count")
    head_dim = meta.int(f"{arch}.attention.key_length", hidden // heads or 1)
    if meta.int(f"{arch}.rope.dimension_count", head_dim) != head_dim:
        raise GGUFError(f"{meta.path}: partial rotary embeddings are not supported")
    scaling = meta.get(f"{arch}.rope.scaling.type", str, "none")
    if scaling not in ("none", "linear") or "rope_freqs.weight" in tensors:
        raise GGUFError(f"{meta.path}: rope scaling {scaling!r} is not supported (none or linear)")
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURES[arch]], "model_type": arch, "hidden_size": hidden,
        "num_attention_heads": heads, "num_key_value_heads": meta.int(f"{arch}.attention.head_count_kv", heads),
        "num_hidden_layers": meta.int(f"{arch}.block_count"),
        "intermediate_size": meta.int(f"{arch}.feed_forward_length"),
        "max_position_embeddings": meta.int(f"{arch}.context_length"),
        "vocab_size": meta.int(f"{arch}.vocab_size", len(tokens) or 1),
        "rope_theta": float(meta.get(f"{arch}.rope.freq_base", (int, float), 10000.0)),
        "rms_norm_eps": float(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", (int, float), 1e-6)),
        "hidden_act": "silu", "tie_word_embeddings": "output.weight" not in tensors,
        "head_dim": head_dim, "torch_dtype": "float32",
    }
    if scaling == "linear":
        factor = float(meta.get(f"{arch}.rope.scaling.factor", (int, float)))
        config["rope_scaling"] = {"rope_type": "linear", "factor": factor}
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in tensors
    return config


def _hf_name(name: str) -> str | None:
    if name in TOP:
        return TOP[name]
    parts = name.split(".")
    if (len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER
            and parts[3] in ("weight", "bias")):
        return f"model.layers.{parts[1]}.{LAYER[parts[2]]}.{parts[3]}"
    return None


def _unpermute(w, n_head: int):
    """llama.cpp's convert script interleaves each head's rotary halves for its own rotary kernel;
    transformers (and we) use the half-split layout: put the rows back."""
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _tokenizer(meta: _Meta, tokens: list[str]):
    """The file's byte-level BPE vocabulary as a `tokenizers` Tokenizer, and tokenizer_config.json."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    from .gguf_pretokenize import BYTE_ALPHABET, SPLITS, respell

    kind = meta.get("tokenizer.ggml.model", str)
    if kind != "gpt2":
        raise GGUFError(f"{meta.path}: tokenizer {kind!r} is not supported (cbtui reads byte-level BPE, 'gpt2')")
    pre = meta.get("tokenizer.ggml.pre", str, "default")
    if pre not in SPLITS:
        raise GGUFError(f"{meta.path}: pre-tokenizer {pre!r} is not supported; supported: {', '.join(sorted(SPLITS))}")
    merges = meta.get("tokenizer.ggml.merges", list)
    types = meta.get("tokenizer.ggml.token_type", list, [])
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(respell(token), i)
    try:
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    except Exception as exc:  # tokenizers' own errors for merges that name no token
        raise GGUFError(f"{meta.path}: the vocabulary and merges do not make a tokenizer ({exc})") from None
    split = SPLITS[pre]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split is None)
    if split is None:
        tok.pre_tokenizer = byte_level
    elif split == "digits":  # SmolLM: every digit its own piece, then GPT-2's split
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                     byte_level])
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, normalized=False, special=True) for t, k in zip(tokens, types, strict=False)
               if k == 3 and set(t) <= BYTE_ALPHABET]  # 3: control (llama.cpp's token types)
    tok.add_special_tokens(special)
    tok.add_tokens([AddedToken(t, normalized=False, special=False)
                    for t, k in zip(tokens, types, strict=False) if k == 4])  # 4: user-defined

    def named(key: str) -> str | None:
        index = meta.get(key, int, -1)
        return tokens[index] if 0 <= index < len(tokens) else None

    bos, eos = named("tokenizer.ggml.bos_token_id"), named("tokenizer.ggml.eos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", bool, False)) and bos is not None
    if add_bos and bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, vocab[respell(bos)])])
    template = meta.get("tokenizer.chat_template", str, "") or None
    config = {"bos_token": bos, "eos_token": eos, "unk_token": named("tokenizer.ggml.unknown_token_id"),
              "pad_token": named("tokenizer.ggml.padding_token_id"), "add_bos_token": add_bos,
              "chat_template": template}
    return tok, config


def converted_dir(path: Path, st: os.stat_result) -> Path:
    key = hashlib.sha256(f"{FORMAT}:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:20]
    return cache_dir() / CONVERTED / f"{path.stem}-{key}"


def gguf_checkpoint(model: str) -> Path:
    """The Hugging Face directory this GGUF file converts to, converting it the first time."""
    path = Path(os.path.expanduser(model))
    st = _regular_file(path)
    out = converted_dir(path, st)
    if (out / "config.json").is_file():
        return out
    reader, st = _read(path)
    try:
        with staged_dir(out) as tmp:
            _convert(reader, path, tmp)
            tmp.chmod(0o755)
    except OSError as exc:
        raise GGUFError(f"{path}: cannot write the converted model under {out.parent} "
                        f"({exc.strerror or exc})") from None
    return out


def _convert(reader, path: Path, out: Path) -> None:
    import numpy as np
    import torch
    from gguf.quants import dequantize
    from safetensors.torch import save_file

    from .checkpoint import _expected_rows, _sources, _spec

    meta = _Meta(reader, path)
    tensors = {t.name: t for t in reader.tensors}
    tokens = meta.get("tokenizer.ggml.tokens", list, [])
    config = _config(meta, tensors, tokens)
    tokenizer, tok_config = _tokenizer(meta, tokens)
    if len(tokenizer.get_vocab()) > config["vocab_size"]:
        raise GGUFError(f"{path}: {len(tokens)} tokens, but the model's vocabulary has {config['vocab_size']}")
    eos = meta.get("tokenizer.ggml.eos_token_id", int, -1)
    config["bos_token_id"] = meta.get("tokenizer.ggml.bos_token_id", int, -1)
    config["eos_token_id"] = eos
    (out / "config.json").write_text(json.dumps(config, indent=1))
    try:
        spec = _spec(out, 0.0, path.stem)
    except CheckpointError as exc:
        raise GGUFError(f"{path}: {str(exc).split(': ', 1)[-1]}") from None
    wanted = {name: ours for ours, names in _sources(spec).items() for name in names}
    state = {}
    for name, t in tensors.items():
        theirs = _hf_name(name)
        if theirs is None or theirs not in wanted:
            raise GGUFError(f"{path}: tensor {name} has no place in a {config['model_type']} model of this metadata")
        shape = [int(d) for d in reversed(t.shape.tolist())]
        want = _expected_rows(spec, wanted[theirs], theirs)
        if shape != want:
            raise GGUFError(f"{path}: tensor {name} has shape {shape}, but the metadata implies {want}")
        try:
            array = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        except NotImplementedError:
            raise GGUFError(f"{path}: tensor {name} is {t.tensor_type.name}, which the gguf package cannot "
                            f"dequantize") from None
        except (ValueError, IndexError) as exc:
            raise GGUFError(f"{path}: tensor {name} cannot be dequantized ({exc})") from None
        if config["model_type"] == "llama" and name.split(".")[-2] in ("attn_q", "attn_k"):
            heads = spec.num_heads if ".attn_q." in name else spec.num_kv_heads
            array = _unpermute(array, heads)
        state[theirs] = torch.from_numpy(np.array(array, dtype=np.float32, order="C", copy=True))
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise GGUFError(f"{path}: tensor for {missing[0]} is missing ({len(missing)} missing)")
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt", "source": path.name})
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))
    if eos >= 0:
        (out / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
