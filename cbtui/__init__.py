"""cbtui: see and debug continuous batching in LLM inference."""

__version__ = "0.1.0"
