"""One place that turns a --model setting into a model: a random preset (tiny, small), a packaged
model pulled into the cache (smollm2), a GGUF file, a local Hugging Face directory, or a Hub name
(ORG/NAME[@REVISION], from huggingface_hub's cache). Every source ends as a spec, weights to load,
a tokenizer, a chat template and end-of-sequence ids; the runner does not care where they came from.

A GGUF file (packaged or not) is converted once into a Hugging Face directory in cbtui's cache
(gguf_file.py), so every real model is loaded by checkpoint.py.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointError, checkpoint_dir, checkpoint_spec, load_checkpoint
from .checkpoint import eos_token_ids as checkpoint_eos_ids
from .llama import PRESETS, DecoderModel, ModelSpec, build_model
from .packaged import PACKAGES, is_packaged, is_pulled, packaged_path
from .tokenizer import ByteTokenizer, CheckpointTokenizer

HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,95}(@[\w./-]{1,100})?$")
KINDS = ("preset", "package", "gguf", "checkpoint", "hub")


@dataclass(frozen=True)
class ResolvedModel:
    setting: str  # the --model string as given
    kind: str  # one of KINDS
    name: str  # the header's name
    directory: Path | None  # the Hugging Face directory loaded (None: a random preset)

    @property
    def random(self) -> bool:
        return self.directory is None


def is_preset(model: str) -> bool:
    return model in PRESETS


def is_hub_name(model: str) -> bool:
    """ORG/NAME or ORG/NAME@REVISION, and no such path here."""
    return (bool(HUB_NAME.match(model)) and not os.path.exists(os.path.expanduser(model))
            and not model.startswith((".", "~", "/")) and not model.lower().endswith(".gguf"))


def check(model: str) -> None:
    """Cheap checks of a --model setting (no conversion, no Hub access): CheckpointError, one line."""
    if is_preset(model) or is_hub_name(model):
        return
    if is_packaged(model):
        if not is_pulled(model):
            raise CheckpointError(f"model {model!r} is not pulled yet (into {packaged_path(model).parent}); "
                                  f"run `cbtui pull {model}` once, with network")
        return
    from .gguf_file import is_gguf

    if not is_gguf(model):
        checkpoint_dir(model)


def resolve(model: str) -> ResolvedModel:
    """The model a --model setting names, converted or located as needed (CheckpointError: one line)."""
    if is_preset(model):
        return ResolvedModel(model, "preset", model, None)
    check(model)
    if is_packaged(model):
        from .gguf_file import gguf_checkpoint

        return ResolvedModel(model, "package", PACKAGES[model].title, gguf_checkpoint(str(packaged_path(model))))
    from .gguf_file import gguf_checkpoint, is_gguf

    if is_gguf(model):
        path = Path(os.path.expanduser(model))
        return ResolvedModel(model, "gguf", path.stem, gguf_checkpoint(model))
    if is_hub_name(model):
        from .hub import hub_checkpoint

        directory = hub_checkpoint(model)
        return ResolvedModel(model, "hub", model.split("@")[0].split("/")[-1], directory)
    return ResolvedModel(model, "checkpoint", checkpoint_spec(model).name, checkpoint_dir(model))


def model_spec(model: str) -> ModelSpec:
    """A preset's spec, or the real model's (its config, named as the header names it)."""
    if is_preset(model):
        return PRESETS[model]
    resolved = resolve(model)
    assert resolved.directory is not None
    return dataclasses.replace(checkpoint_spec(str(resolved.directory)), name=resolved.name)


def eos_token_ids(model: str) -> tuple[int, ...]:
    """The ids that end a sequence: the model's own; none for the presets."""
    if is_preset(model):
        return ()
    resolved = resolve(model)
    return checkpoint_eos_ids(str(resolved.directory))


def load_model(model: str, seed: int, device: torch.device, dtype: torch.dtype) -> DecoderModel:
    """The weights: seeded random for a preset, the real model's otherwise."""
    if is_preset(model):
        return build_model(model, seed, device, dtype)
    resolved = resolve(model)
    return load_checkpoint(str(resolved.directory), device, dtype)


def tokenizer_for(model: str) -> ByteTokenizer | CheckpointTokenizer:
    """Bytes for a preset; the model's own tokenizer otherwise."""
    if is_preset(model):
        return ByteTokenizer()
    resolved = resolve(model)
    assert resolved.directory is not None
    return CheckpointTokenizer(resolved.directory)
