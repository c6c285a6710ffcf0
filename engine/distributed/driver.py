"""Rank 0's runner: shard 0 of the model, plus the workers it sends every step's plan to.

To the Engine it is a ModelRunner like any other (run, free, kv, ...): before running its own
share of a step it broadcasts the plan (the batch, the tables that changed, the requests whose
blocks were freed), and then every rank runs the same forward pass, meeting in its collectives.
Rank 0 samples. close() (or garbage collection, or the process exiting) stops the workers.
"""

from __future__ import annotations

import functools
import os
import weakref

import torch

from ..config import EngineConfig
from ..models.llama import PRESETS
from ..plugins.host import PluginHost
from ..profiling.memory import process_rss_bytes
from ..profiling.nvml import Nvml
from ..records import CommView
from ..runner.output import StepOutput
from ..scheduler.plan import SchedulePlan
from .comm import Comm
from .errors import ShardFailure
from .launcher import BUILT_KEY, WorkerGroup
from .shard_runner import ShardRunner, StepPlan, encode_plan
from .tensor_parallel import check_divisible
from .worker import serve


def _stop(group: WorkerGroup, comm: Comm | None) -> None:
    """Stops the workers: politely (a stop plan) when the group is sound, by force otherwise."""
    if group.failed or (not group.procs and comm is None):
        group.kill()
        return
    try:
        if comm is not None:
            comm.send_plan(encode_plan(StepPlan(step=group.step, items=[], tokens=[], samples=[], stop=True)))
    except ShardFailure:
        pass
    group.stopped()


class ShardedRunner(ShardRunner):
    def __init__(self, config: EngineConfig, plugins: PluginHost):
        parallel = config.parallel
        assert parallel is not None, "a sharded runner runs under a parallel section"
        if plugins.plugins:
            raise ValueError(f"shards={parallel.shards} cannot run plugins yet (a plugin would see one shard's "
                             f"cache); drop the plugins or use shards=1")
        if parallel.shard_by == "heads":
            check_divisible(PRESETS[config.llm.name], parallel.shards)
        from ..runner.model_runner import resolve_device

        self.group = group = WorkerGroup(config, resolve_device(config.llm.device))
        self._finalizer = weakref.finalize(self, group.kill)  # garbage collected, or the process exits
        comm = Comm(group.rank, parallel.shards, resolve_device(config.llm.device), group.diagnose)
        if group.rank != 0:  # torchrun started this process as a worker: serve, then leave
            self._finalizer.detach()
            serve(config)
            group.kill()
            raise SystemExit(0)
        try:
            super().__init__(config, plugins, comm)
            group.wait_for(BUILT_KEY)  # every shard built: from here on each step has the collective timeout
        except BaseException:
            group.kill()
            raise
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, functools.partial(_stop, group, comm))
        self._nvml: Nvml | None = None
        self._tables: dict[int, tuple[int, ...]] = {}  # KV changes not sent to the workers yet
        self._released: list[int] = []

    def run(self, plan: SchedulePlan) -> StepOutput:
        """Sends the workers the plan's batch and KV changes, then runs shard 0's share of the step;
        the output says the step's communication and every shard's memory."""
        for rid in plan.released:  # KV changes wait for a step that runs (an empty one is not sent)
            self._tables.pop(rid, None)
        self._released += plan.released
        self._tables.update(plan.tables)
        if plan.items:
            self.group.check()  # a dead worker fails here, before anything is sent
            self.group.step += 1
            items = [(i.request_id, i.kind, i.first_pos, i.num_tokens, i.key_len) for i in plan.batch]
            self.comm.send_plan(encode_plan(StepPlan(self.group.step, items, plan.tokens, plan.samples, self._tables,
                                                     self._released)))
            self._tables, self._released = {}, []
        out = super().run(plan)
        out.comm = CommView(*self.comm.take())
        out.shard_memory = [(device, self._memory(rank, device))
                            for rank, device in enumerate(map(self._device_of, range(self.parallel.shards)))]
        return out

    def close(self) -> None:
        self._finalizer()

    @property
    def worker_pids(self) -> list[int]:
        return self.group.pids

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive


    # -- what the records show of the shards --------------------------------------------------------
    def _device_of(self, rank: int) -> str:
        if self.device.type != "cuda":
            return "cpu"
        return f"cuda:{rank % max(1, torch.cuda.device_count())}"

    def _memory(self, rank: int, device: str) -> int:
        """RSS of the shard's process on the CPU (read from /proc: the workers are our children);
        the GPU's used memory (NVML) on CUDA; 0 where neither can be read (torchrun on other nodes)."""
        if device.startswith("cuda"):
            if self._nvml is None:
                self._nvml = Nvml()
            try:
                return self._nvml.used(int(device.split(":")[1]))
            except Exception:  # NvmlError, or no NVML at all: not this figure, then
                return 0
        if rank == 0:
            return process_rss_bytes()
        pids = self.group.pids
        if rank - 1 >= len(pids):
            return 0
        try:
            with open(f"/proc/{pids[rank - 1]}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0
