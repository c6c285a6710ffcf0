"""A local Hugging Face checkpoint directory as our DecoderModel: config.json read into a ModelSpec,
*.safetensors (one file, or shards named by model.safetensors.index.json) into the weights.

Llama 2/3, Mistral and Qwen2/2.5 share one shape (RMSNorm, half-split rotary, GQA, SwiGLU); they
differ in q/k/v biases (Qwen2), tied embeddings, rope scaling and sliding windows, all read from
config.json. Nothing is ever downloaded. The inverse of hf_weights.py: their names, our fused
q/k/v and gate/up projections built from their row blocks. Tensors are read memory-mapped with
`safetensors` straight onto the device and cast to the run's dtype there.

Every problem is one CheckpointError line naming the file and, where there is one, the tensor.
"""

from __future__ import annotations

import json
import os
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from .checkpoint_files import MAX_JSON_BYTES, CheckpointError, read_text, regular_file
from .config_schema import check_config
from .llama import PRESETS, ROPE_TYPES, DecoderModel, ModelSpec

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
LAYER_TENSOR = re.compile(r"model\.layers\.(\d{1,9})\.")
IGNORED = ("rotary_emb.inv_freq",)  # buffers older checkpoints saved; recomputed from the config
# architecture in config.json -> does it put biases on q/k/v
ARCHITECTURES = {"LlamaForCausalLM": False, "MistralForCausalLM": False, "Qwen2ForCausalLM": True}


__all__ = ["CheckpointError", "checkpoint_dir", "checkpoint_spec", "eos_token_ids", "load_checkpoint", "model_spec"]


def is_preset(model: str) -> bool:
    return model in PRESETS


def checkpoint_dir(model: str) -> Path:
    """The directory a model setting names (~ expanded); CheckpointError if there is none."""
    path = Path(os.path.expanduser(model))
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "no such directory"
        from .packaged import PACKAGES

        raise CheckpointError(f"{path}: {what}; --model takes a preset ({', '.join(PRESETS)}), a packaged model "
                              f"({', '.join(PACKAGES)}), a .gguf file, a local Hugging Face checkpoint directory "
                              f"(config.json + *.safetensors) or a Hub name ORG/NAME[@REVISION]")
    return path


def _read_json(path: Path) -> dict:
    text = read_text(path, MAX_JSON_BYTES, missing="a checkpoint directory holds config.json and *.safetensors")
    try:
        data = json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{path}: its JSON is nested too deeply to be a checkpoint's file; "
                              f"is it the right file?") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: cannot read it as JSON ({exc})") from None
    except ValueError:  # Python's own limit on int()
        raise CheckpointError(f"{path}: holds a number of more than {sys.get_int_max_str_digits()} digits; "
                              f"is it the right file?") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: must hold a JSON object")
    return data


def _int(config: dict, key: str, where: Path, default: int | None = None) -> int:
    value = config.get(key)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{where}: {key}={value!r} must be an integer >= 1")
    return value


def _rope(config: dict, where: Path) -> tuple[float, tuple[tuple[str, float | str], ...]]:
    """rope_theta and the scaling table: transformers 5 writes rope_parameters, older files write
    rope_theta and rope_scaling."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
        raise CheckpointError(f"{where}: rope_theta={theta!r} must be a number above 0")
    table = {**scaling, **{k: v for k, v in params.items() if k != "rope_theta"}}
    kind = table.get("rope_type", table.get("type", "default"))  # older files say "type"
    if kind not in ROPE_TYPES:
        raise CheckpointError(f"{where}: rope scaling {kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    if kind == "default":
        return float(theta), ()
    keys = ("factor",) if kind == "linear" else ("factor", "low_freq_factor", "high_freq_factor",
                                                  "original_max_position_embeddings")
    for key in keys:
        if isinstance(table.get(key), bool) or not isinstance(table.get(key), (int, float)):
            raise CheckpointError(f"{where}: rope scaling {kind!r} needs a number {key} (got {table.get(key)!r})")
    return float(theta), (("rope_type", kind), *((k, float(table[k])) for k in keys))


def display_name(path: Path) -> str:
    """The model's name for the header: the directory's, or for a snapshot in the Hugging Face cache
    (models--Qwen--Qwen2.5-0.5B-Instruct/snapshots/<hash>) the repository's, not the hash."""
    path = Path(os.path.abspath(path))
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.split("--")[-1]
    return path.name


@lru_cache(maxsize=8)
def _spec(path: Path, mtime: float, name: str) -> ModelSpec:
    where = path / CONFIG
    config = _read_json(where)
    check_config(config, where)  # every key read below has its type and a sane size from here on
    arch = (config.get("architectures") or ["(none)"])[0]
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{where}: architecture {arch!r} is not supported; supported: "
                              f"{', '.join(ARCHITECTURES)}")
    if config.get("hidden_act", "silu") != "silu" or config.get("mlp_bias"):
        raise CheckpointError(f"{where}: only SwiGLU MLPs without biases (hidden_act 'silu') are supported "
                              f"(got hidden_act={config.get('hidden_act')!r}, mlp_bias={config.get('mlp_bias')!r})")
    heads = _int(config, "num_attention_heads", where)
    hidden = _int(config, "hidden_size", where)
    head_size = config.get("head_dim") or hidden // heads
    if head_size < 2 or head_size % 2:
        raise CheckpointError(f"{where}: head_dim={head_size} (hidden_size {hidden} / num_attention_heads {heads} "
                              f"unless given) must be even and at least 2 for rotary embeddings")
    context = _int(config, "max_position_embeddings", where)
    window = config.get("sliding_window")
    if window and (arch == "MistralForCausalLM" or config.get("use_sliding_window")):
        # Attention is full, never windowed, here: exact as long as no sequence outgrows the window.
        context = min(context, _int(config, "sliding_window", where))
    theta, scaling = _rope(config, where)
    eps = config.get("rms_norm_eps", 1e-6)
    return ModelSpec(
        name=name, vocab_size=_int(config, "vocab_size", where), hidden_size=hidden,
        num_layers=_int(config, "num_hidden_layers", where), num_heads=heads,
        num_kv_heads=_int(config, "num_key_value_heads", where, heads),
        intermediate_size=_int(config, "intermediate_size", where), max_context=context, rope_theta=theta,
        rms_eps=float(eps), qkv_bias=ARCHITECTURES[arch] or bool(config.get("attention_bias")),
        o_bias=not ARCHITECTURES[arch] and bool(config.get("attention_bias")),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)), rope_scaling=scaling,
        head_size=head_size if head_size != hidden // heads else 0)


def checkpoint_spec(model: str) -> ModelSpec:
    """The shape config.json describes (read again only when the file changes)."""
    given = checkpoint_dir(model)
    path = given.resolve()
    try:
        mtime = (path / CONFIG).stat().st_mtime
    except OSError:
        mtime = 0.0  # _spec says the file is missing
    return _spec(path, mtime, display_name(given))


def model_spec(model: str) -> ModelSpec:
    """A preset's spec, or a checkpoint directory's."""
    return PRESETS[model] if is_preset(model) else checkpoint_spec(model)


def eos_token_ids(model: str) -> tuple[int, ...]:
    """The ids that end a sequence: generation_config.json's eos_token_id, else config.json's
    (one id or a list); none for the presets."""
    if is_preset(model):
        return ()
    path = checkpoint_dir(model)
    for name in (GENERATION_CONFIG, CONFIG):
        if not (path / name).is_file():
            continue
        value = _read_json(path / name).get("eos_token_id")
        if value is None:
            continue
        ids = value if isinstance(value, list) else [value]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise CheckpointError(f"{path / name}: eos_token_id={value!r} must be a token id or a list of them")
        return tuple(ids)
    return ()


# Our parameter (per layer) -> the Hugging Face tensors it is made of, in row order.
def _sources(spec: ModelSpec) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {"embed.weight": ["model.embed_tokens.weight"], "norm.weight": ["model.norm.weight"]}
    if not spec.tie_embeddings:
        names["lm_head.weight"] = ["lm_head.weight"]
    for i in range(spec.num_layers):
        at, attn, mlp = f"layers.{i}.", f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        names[at + "input_norm.weight"] = [f"model.layers.{i}.input_layernorm.weight"]
        names[at + "post_norm.weight"] = [f"model.layers.{i}.post_attention_layernorm.weight"]
        names[at + "qkv_proj.weight"] = [f"{attn}{p}_proj.weight" for p in "qkv"]
        if spec.qkv_bias:
            names[at + "qkv_proj.bias"] = [f"{attn}{p}_proj.bias" for p in "qkv"]
        names[at + "o_proj.weight"] = [attn + "o_proj.weight"]
        if spec.o_bias:
            names[at + "o_proj.bias"] = [attn + "o_proj.bias"]
        names[at + "gate_up_proj.weight"] = [mlp + "gate_proj.weight", mlp + "up_proj.weight"]
        names[at + "down_proj.weight"] = [mlp + "down_proj.weight"]
    return names


def _tensor_files(path: Path) -> dict[str, Path]:
    """Which file holds each tensor: the index file's weight_map, or the one model.safetensors."""
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map must map tensor names to file names")
        for file in weight_map.values():
            if not file or Path(file).name != file or file in (".", ".."):
                raise CheckpointError(f"{index}: weight_map names {file!r}; it may only name files in "
                                      f"the checkpoint's own directory")
        return {name: path / file for name, file in weight_map.items()}
    single = path / SINGLE_FILE
    if not os.path.lexists(single):
        found = sorted(p.name for p in path.glob("*.safetensors"))
        if len(found) != 1:
            what = "several, but no index file" if found else "none"
            raise CheckpointError(f"{path}: no {SINGLE_FILE} nor {INDEX_FILE} (*.safetensors files: {what}); "
                                  f"cbtui loads safetensors checkpoints only")
        single = path / found[0]
    regular_file(single)  # a FIFO or a device would hang safetensors
    from safetensors import safe_open

    try:
        with safe_open(str(single), framework="pt") as f:
            return {name: single for name in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise CheckpointError(f"{single}: not a readable safetensors file ({exc})") from None


class _Reader:
    """Open safetensors files (memory-mapped), each opened once, tensors read onto `device`."""

    def __init__(self, files: dict[str, Path], device: torch.device):
        self.files, self.device = files, device
        self.open: dict[Path, Any] = {}

    def shape(self, name: str, owner: Path) -> tuple[Path, list[int]]:
        file = self.files.get(name)
        if file is None:
            raise CheckpointError(f"{owner}: tensor {name} is missing")
        return file, list(self._handle(file, name).get_slice(name).get_shape())

    def tensor(self, name: str) -> torch.Tensor:
        file = self.files[name]
        return self._handle(file, name).get_tensor(name)

    def _handle(self, file: Path, name: str) -> Any:
        if file not in self.open:
            from safetensors import safe_open

            if not os.path.lexists(file):
                raise CheckpointError(f"{file}: no such file (it should hold tensor {name})")
            regular_file(file)  # a FIFO or a device would hang safetensors
            try:
                device = "cpu" if self.device.type == "cpu" else str(self.device)
                self.open[file] = safe_open(str(file), framework="pt", device=device)
            except Exception as exc:  # safetensors' own error types
                raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from None
        handle = self.open[file]
        if name not in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
            raise CheckpointError(f"{file}: tensor {name} is missing (the index file names this file for it)")
        return handle


def _expected_rows(spec: ModelSpec, ours: str, theirs: str) -> list[int]:
    """The shape a Hugging Face tensor must have for our parameter `ours`."""
    d, h, kvh, hidden = spec.head_dim, spec.num_heads, spec.num_kv_heads, spec.hidden_size
    rows = {"q_proj": h * d, "k_proj": kvh * d, "v_proj": kvh * d, "gate_proj": spec.intermediate_size,
            "up_proj": spec.intermediate_size}
    module = theirs.rsplit(".", 2)[-2]
    if ours.endswith("qkv_proj.bias"):
        return [rows[module]]
    if ours.endswith("o_proj.bias"):
        return [hidden]
    if module in rows:
        return [rows[module], hidden]
    if module == "o_proj":
        return [hidden, h * d]
    if module == "down_proj":
        return [hidden, spec.intermediate_size]
    if theirs.endswith("norm.weight") or theirs.endswith("layernorm.weight"):
        return [hidden]
    return [spec.vocab_size, hidden]  # embeddings, lm_head


@torch.no_grad()
def load_checkpoint(model: str, device: torch.device, dtype: torch.dtype) -> DecoderModel:
    """The checkpoint's weights in our DecoderModel, on `device` in `dtype`; every shape checked
    against config.json before any tensor is read."""
    path = checkpoint_dir(model)
    spec = checkpoint_spec(model)
    reader = _Reader(_tensor_files(path), device)
    layers = {int(m.group(1)) for name in reader.files if (m := LAYER_TENSOR.match(name))}
    if spec.num_layers > len(layers):  # before a name is made for each layer config.json claims
        raise CheckpointError(f"{path / CONFIG}: num_hidden_layers={spec.num_layers}, but the weights hold "
                              f"tensors for {len(layers)} layers; fix num_hidden_layers")
    sources = _sources(spec)
    used = {name for names in sources.values() for name in names}
    for name, file in reader.files.items():
        # A tensor we would not load changes the function (a bias config.json does not announce): refuse.
        if name not in used and not name.endswith(IGNORED) and not (spec.tie_embeddings and name == "lm_head.weight"):
            raise CheckpointError(f"{file}: tensor {name} has no place in a {spec.name} model of this config.json")
    for ours, names in sources.items():
        for name in names:
            file, shape = reader.shape(name, path)
            want = _expected_rows(spec, ours, name)
            if shape != want:
                raise CheckpointError(f"{file}: tensor {name} has shape {shape}, but config.json implies {want}")
    with torch.device("meta"):
        decoder = DecoderModel(spec)
    state = {}
    for ours, names in sources.items():
        parts = [reader.tensor(name).to(dtype) for name in names]  # on the device already: cast there
        state[ours] = parts[0] if len(parts) == 1 else torch.cat(parts)
    if spec.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    decoder.load_state_dict(state, assign=True, strict=True)
    if spec.tie_embeddings:
        decoder.lm_head.weight = decoder.embed.weight  # one parameter again (assign set two)
    return decoder.to(device).eval()
