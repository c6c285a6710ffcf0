"""StepOutput: everything the runner says about the step it ran, in one object.

Plain values but one: the tokens of an overlapped step stay on the device until the next step
(`on_device`, runner/overlap.py); `sampled` then holds placeholders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..records import CommView
from ..requests.request import Request


@dataclass
class StepOutput:
    sampled: list[int] = field(default_factory=list)  # one token per request that samples, in row order
    kept: dict[Request, list[int]] = field(default_factory=dict)  # speculating decode -> drafts it accepted
    on_device: Any = None  # overlap.DeviceTokens: the tokens are still on their way to the host
    device_time_s: float | None = None  # the GPU's span of the forward pass (CUDA, not overlapped)
    graph_bucket: list[int] | None = None  # [rows, keys per row] of the decode graph it ran in; None: eager
    comm: CommView | None = None  # sharded runs: the step's traffic between shards
    shard_memory: list[tuple[str, int]] = field(default_factory=list)  # sharded: (device, bytes) per shard
