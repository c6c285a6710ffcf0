"""config.json checked whole, in one place, before any value of it is used: every key the loader reads
must have the type and range a real checkpoint gives it. A value of another type (a dict where a list
belongs, a string for a number, null for a number) or an absurd size is one CheckpointError line naming
the key, what it holds and what it should hold, instead of a traceback or gigabytes allocated later.

The upper bounds are far above any released model (Llama 3.1 405B: 126 layers, width 16384, 128 heads,
a 128k context) and far below sizes that would exhaust memory before the weights are even looked at.
Keys the loader does not read are not checked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checkpoint_files import CheckpointError

MAX_CONTEXT = 1 << 30
Check = Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and abs(value) < 1e300)


def integer(low: int, high: int) -> tuple[str, Check]:
    return f"an integer from {low} to {high}", lambda v: _is_int(v) and low <= v <= high


def number_above_0(high: float = 1e300) -> tuple[str, Check]:
    return "a number above 0", lambda v: _is_number(v) and 0 < v <= high


def optional(rule: tuple[str, Check]) -> tuple[str, Check]:
    return f"null or {rule[0]}", lambda v: v is None or rule[1](v)


BOOLEAN: tuple[str, Check] = ("true or false (or null)", lambda v: v is None or isinstance(v, bool))
TEXT: tuple[str, Check] = ("a string", lambda v: isinstance(v, str))
OBJECT: tuple[str, Check] = ("null or a JSON object", lambda v: v is None or isinstance(v, dict))
TOKEN_IDS: tuple[str, Check] = ("null, a token id or a list of token ids",
                                lambda v: v is None or (_is_int(v) and 0 <= v < 1 << 31)
                                or (isinstance(v, list) and len(v) <= 1024
                                    and all(_is_int(i) and 0 <= i < 1 << 31 for i in v)))

# key -> (what it should hold, its check); checked when present
CONFIG_RULES: dict[str, tuple[str, Check]] = {
    "architectures": ('a list of class names such as ["LlamaForCausalLM"]',
                      lambda v: isinstance(v, list) and 1 <= len(v) <= 16 and all(isinstance(a, str) for a in v)),
    "model_type": TEXT,
    "hidden_act": TEXT,
    "vocab_size": integer(1, 1 << 24),
    "hidden_size": integer(1, 1 << 16),
    "intermediate_size": integer(1, 1 << 18),
    "num_hidden_layers": integer(1, 1024),
    "num_attention_heads": integer(1, 1024),
    "num_key_value_heads": optional(integer(1, 1024)),
    "head_dim": optional(integer(2, 1024)),
    "max_position_embeddings": integer(1, MAX_CONTEXT),
    "sliding_window": optional(integer(1, MAX_CONTEXT)),
    "use_sliding_window": BOOLEAN,
    "rms_norm_eps": ("a number above 0 and below 1", lambda v: _is_number(v) and 0 < v < 1),
    "rope_theta": number_above_0(),
    "rope_parameters": OBJECT,
    "rope_scaling": OBJECT,
    "attention_bias": BOOLEAN,
    "mlp_bias": BOOLEAN,
    "tie_word_embeddings": BOOLEAN,
    "eos_token_id": TOKEN_IDS,
}

# inside rope_parameters / rope_scaling
ROPE_RULES: dict[str, tuple[str, Check]] = {
    "rope_type": TEXT,
    "type": TEXT,
    "rope_theta": number_above_0(),
    "factor": number_above_0(1e6),
    "low_freq_factor": number_above_0(1e6),
    "high_freq_factor": number_above_0(1e6),
    "original_max_position_embeddings": integer(1, MAX_CONTEXT),
}


def _shown(value: Any) -> str:
    text = json.dumps(value)  # as the file writes it: null, true, "16"
    return text if len(text) <= 60 else text[:57] + "..."


def _check(table: dict, rules: dict[str, tuple[str, Check]], where: Path, prefix: str = "") -> None:
    for key, (should, ok) in rules.items():
        if key in table and not ok(table[key]):
            raise CheckpointError(f"{where}: {prefix}{key}={_shown(table[key])} must be {should}; "
                                  f"fix the file or use another checkpoint")


def check_config(config: dict, where: Path) -> None:
    """CheckpointError, one line, for the first key of `config` (config.json) that is not as it must be."""
    _check(config, CONFIG_RULES, where)
    for section in ("rope_parameters", "rope_scaling"):
        if isinstance(config.get(section), dict):
            _check(config[section], ROPE_RULES, where, f"{section}.")
    for section in ("rope_parameters", "rope_scaling"):
        table = config.get(section) or {}
        low, high = table.get("low_freq_factor"), table.get("high_freq_factor")
        if low is not None and high is not None and not high > low:
            raise CheckpointError(f"{where}: {section}.high_freq_factor={high!r} must be above "
                                  f"low_freq_factor={low!r} (llama3 rope blends between them)")
