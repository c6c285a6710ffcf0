"""The model section: which model runs, where, in what precision, and when its sequences end."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import Section, setting

MODELS = ("tiny", "small")  # the random presets; `model` may also be a checkpoint directory (checkpoint.py)
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "float64", "bfloat16")
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class ModelConfig(Section):
    fixed_because = "the model is loaded when the engine is built"

    name: str = setting("tiny", type=str, flat="model", choices=MODELS, open_choice="a checkpoint directory",
                        metavar="MODEL",
                        help=f"A random preset ({', '.join(MODELS)}: outputs are noise), smollm2 (a real model, "
                             f"pulled once with `cbtui pull smollm2`), a .gguf file, a local Hugging Face checkpoint "
                             f"directory (config.json, *.safetensors, tokenizer.json) or a Hub name ORG/NAME[@REV] "
                             f"(from the Hugging Face cache).")
    device: str = setting("auto", type=str, choices=DEVICES,
                          help="Where the model runs (auto: CUDA when there is a GPU).")
    dtype: str = setting("auto", type=str, choices=DTYPES,
                         help="The weights' and activations' precision (auto: bfloat16 on CUDA, and for a real "
                              "model on a CPU with bf16 instructions; float32 elsewhere).")
    seed: int = setting(0, type=int, low=0, high=MAX_SEED,
                        help="Seeds the random presets' weights and every request's sampling.")
    eos_token_id: int | None = setting(None, type=int, low=0, optional=True,
                                       help="The token that ends a sequence (None: the checkpoint's own; presets "
                                            "have none).")
    ignore_eos: bool = setting(False, type=bool,
                               help="Generate exactly max_new_tokens, whatever the checkpoint says (benchmarks).")

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"model={self.name!r} must be a preset ({', '.join(MODELS)}) or a checkpoint directory")
        if self.name not in MODELS:
            from ..models.source import check

            check(self.name)  # one line naming the path when there is no such file or directory
        super().__post_init__()
