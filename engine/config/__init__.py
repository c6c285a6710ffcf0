"""EngineConfig: every knob of the engine, nested by concern, validated when it is built.

    model.py         ModelConfig        which model, where, in what precision, when sequences end (EngineConfig.llm)
    scheduler.py     SchedulerConfig    what one step takes on
    cache.py         CacheConfig        how the KV cache is laid out, sized and shared
    runner.py        RunnerConfig       how a step executes: kernels, graphs, overlap
    speculative.py   SpeculativeConfig  speculative decoding, or None (EngineConfig.speculation)
    parallel.py      ParallelConfig     the KV cache sharded over processes, or None
    combinations.py  the rules between sections
    fields.py        the metadata each field carries (help, choices, range, flag) and its check
    engine_config.py EngineConfig and the flat names (FLAT) that map to the sections' fields
"""

from .cache import KV_LAYOUTS, MAX_KV_MEMORY, MAX_POOL_TOKENS, CacheConfig
from .engine_config import FLAT, SECTIONS, EngineConfig, default_of, section_fields, setting_for
from .fields import Setting
from .model import DEVICES, DTYPES, MAX_SEED, MODELS, ModelConfig
from .parallel import MAX_SHARDS, SHARD_BY, ParallelConfig
from .runner import ATTENTION_BACKENDS, DECODE_ATTENTION, DECODE_GRAPHS, RunnerConfig
from .scheduler import MAX_BATCH_TOKENS, POLICIES, SchedulerConfig
from .speculative import DRAFT_MODELS, MAX_SPECULATIVE_TOKENS, SPECULATIVE, SpeculativeConfig

__all__ = [
    "ATTENTION_BACKENDS", "DECODE_ATTENTION", "DECODE_GRAPHS", "DEVICES", "DRAFT_MODELS", "DTYPES", "FLAT",
    "KV_LAYOUTS", "MAX_BATCH_TOKENS", "MAX_KV_MEMORY", "MAX_POOL_TOKENS", "MAX_SEED", "MAX_SHARDS",
    "MAX_SPECULATIVE_TOKENS", "MODELS", "POLICIES", "SECTIONS", "SHARD_BY", "SPECULATIVE", "CacheConfig",
    "EngineConfig", "ModelConfig", "ParallelConfig", "RunnerConfig", "SchedulerConfig", "Setting",
    "SpeculativeConfig", "default_of", "section_fields", "setting_for",
]
