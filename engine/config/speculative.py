"""The speculative section (engine/speculation/): a decode also verifies up to k proposed tokens.
EngineConfig.speculation is None when nothing proposes."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import Section, setting

SPECULATIVE = ("off", "ngram", "draft")  # "off" is None, for files and command lines that cannot write None
DRAFT_MODELS = ("micro", "tiny", "small")  # presets a draft may be; it must share the target's vocabulary
MAX_SPECULATIVE_TOKENS = 16


@dataclass(frozen=True)
class SpeculativeConfig(Section):
    fixed_because = "the proposer (and a draft model) is built with the engine"

    # ngram: prompt lookup in the request's own tokens; draft: a smaller model of the same vocabulary.
    method: str | None = setting(type=str, flat="speculative", choices=SPECULATIVE, optional=True, off=(None, "off"),
                                 help="Speculative decoding: ngram (prompt lookup), draft (a smaller model) or off.")
    num_speculative_tokens: int = setting(4, type=int, low=1, high=MAX_SPECULATIVE_TOKENS, live=True,
                                          help="The most tokens proposed (and verified) per decode.")
    # Built with the model section's seed: the target's own preset is the target.
    draft_model: str = setting("micro", type=str, choices=DRAFT_MODELS, only_if=("method", "draft"),
                               help="The preset that drafts (it must share the target's vocabulary).")

    def __post_init__(self) -> None:
        if self.method is not None and self.method not in SPECULATIVE:
            raise ValueError(f"speculative={self.method!r} is not allowed; choose one of: None (or 'off'), "
                             f"'ngram', 'draft'")
        super().__post_init__()
