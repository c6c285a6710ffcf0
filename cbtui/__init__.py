"""cbtui: see and debug continuous batching in LLM inference."""

__version__ = "0.1.0"

import engine as _engine  # noqa: F401  (before anything imports torch: the engine's OpenMP setting)
