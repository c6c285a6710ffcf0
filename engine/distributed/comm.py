"""The collectives a sharded step uses, on torch.distributed, counted and timed for the records.

One object per process. Every call is a collective: all ranks make the same calls in the same order
(the driver's step plan makes sure of it). A collective that fails (a peer died: gloo sees the socket
close) or waits past the group's timeout (a peer hangs) raises ShardFailure with one line naming
the rank, from `diagnose` (the launcher knows which worker exited, and with what).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from .errors import ShardFailure

MAX_PLAN_BYTES = 1 << 30  # a step of 400,000 tokens encodes to a few MB


class Comm:
    def __init__(self, rank: int, world: int, device: torch.device, diagnose: Callable[[BaseException], str]):
        self.rank, self.world = rank, world
        # gloo (the CPU backend) moves CUDA tensors through host memory: when shards share one GPU,
        # NCCL refuses two ranks on a device, so they talk through gloo and the host.
        self.via_host = device.type == "cuda" and dist.get_backend() == "gloo"
        self.diagnose = diagnose
        self.bytes = 0  # since the last take(): payload bytes all-reduced, gathered or broadcast
        self.seconds = 0.0  # time spent inside collectives
        self.calls = 0

    def take(self) -> tuple[int, float, int]:
        """(bytes, seconds, collectives) since the last call."""
        out = (self.bytes, self.seconds, self.calls)
        self.bytes, self.seconds, self.calls = 0, 0.0, 0
        return out

    def _run(self, nbytes: int, fn: Callable[[], None]) -> None:
        start = time.perf_counter()
        try:
            fn()
        except ShardFailure:
            raise
        except Exception as exc:  # gloo/NCCL errors are RuntimeError subclasses (DistError, ...)
            raise ShardFailure(self.diagnose(exc)) from None
        self.seconds += time.perf_counter() - start
        self.bytes += nbytes
        self.calls += 1

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sums t over the shards, in place (row-parallel layers)."""
        if self.via_host:
            host = t.cpu()
            self._run(host.nbytes, lambda: dist.all_reduce(host))
            t.copy_(host)
        else:
            self._run(t.nbytes, lambda: dist.all_reduce(t))
        return t

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every shard's t, stacked: [world, *t.shape] (partial attention outputs)."""
        src = t.cpu() if self.via_host else t.contiguous()
        parts = [torch.empty_like(src) for _ in range(self.world)]
        self._run(src.nbytes * self.world, lambda: dist.all_gather(parts, src))
        return torch.stack(parts).to(t.device)

    def send_plan(self, plan: bytes) -> None:
        """Rank 0: the step's plan, encoded (shard_runner.encode_plan: JSON, never a pickle), to every
        worker: its length, then its bytes."""
        payload = torch.frombuffer(bytearray(plan), dtype=torch.uint8)
        size = torch.tensor([payload.numel()], dtype=torch.long)
        self._run(size.nbytes, lambda: dist.broadcast(size, src=0))
        self._run(payload.nbytes, lambda: dist.broadcast(payload, src=0))

    def receive_plan(self) -> bytes:
        """A worker: the next plan rank 0 sends, as bytes (decoded by shard_runner.decode_plan)."""
        size = torch.zeros(1, dtype=torch.long)
        self._run(size.nbytes, lambda: dist.broadcast(size, src=0))
        n = int(size.item())
        if not 0 < n <= MAX_PLAN_BYTES:
            raise ShardFailure(f"rank {self.rank}: a step plan of {n} bytes (at most {MAX_PLAN_BYTES >> 20} MiB)")
        payload = torch.empty(n, dtype=torch.uint8)
        self._run(payload.nbytes, lambda: dist.broadcast(payload, src=0))
        return payload.numpy().tobytes()
