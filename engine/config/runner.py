"""The runner section: how the model runner executes a step.

Why a section of its own: these four settings choose kernels, CUDA graphs and pipelining inside the
model runner (model_runner.py, decode_graphs.py, overlap.py); none of them changes what a step
computes (greedy outputs are the same whichever is picked: the exactness tests), unlike the
scheduler's settings (which change what runs when), the cache's (what memory holds) or the model's
(which model, in what precision). They depend on the device and on each other, not on the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from .fields import Section, setting

ATTENTION_BACKENDS = ("auto", "reference", "sdpa", "flex")
DECODE_GRAPHS = ("auto", "on", "off")
DECODE_ATTENTION = ("auto", "triton", "cpp", "gather")


@dataclass(frozen=True)
class RunnerConfig(Section):
    fixed_because = "kernels, graphs and pipelining are set up when the engine is built"

    attention: str = setting("auto", type=str, choices=ATTENTION_BACKENDS,
                             help="The attention backend (reference: the explicit ragged mask, for teaching and "
                                  "tests).")
    # Either way a layer wrapped by an attention plugin, or a cache plugin, runs eagerly.
    decode_graphs: str = setting("auto", type=str, choices=DECODE_GRAPHS,
                                 help="Decode-only steps from CUDA graphs (decode_graphs.py). auto: on CUDA with a "
                                      "paged cache and the sdpa/flex backend; on: also off CUDA, uncaptured (tests).")
    decode_attention: str = setting("auto", type=str, choices=DECODE_ATTENTION,
                                    help="How decodes read the paged pool (attention/decode_kernel.py): auto takes "
                                         "the Triton kernel on CUDA, the C++ one on the CPU (built on first use), "
                                         "the block gather where neither can run.")
    overlap_steps: bool = setting(False, type=bool,
                                  help="Schedule and launch step N+1 while the device still runs step N (overlap.py): "
                                       "records come one call late. Greedy requests that end at max_new_tokens, "
                                       "no plugins.")
