"""A worker rank's life: join the group, build its shard, run every step rank 0 sends, until stopped.

Started by the driver (`python -m engine.distributed.worker`, the config in the environment) or by
torchrun (through Engine, launcher.py). A failure is said in one line on stderr (the driver quotes
it) and the exit code is 1.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from ..config import EngineConfig
from ..models.llama import PRESETS
from ..plugins.host import PluginHost
from .comm import Comm
from .errors import ShardFailure
from .launcher import BUILT_KEY, CONFIG_ENV, PROGRESS_KEY, READY_KEY, START_TIMEOUT_S, backend_for
from .shard_runner import ShardRunner, decode_plan

PARENT_POLL_S = 0.25


def serve(config: EngineConfig, store: dist.Store | None = None) -> None:
    """The loop, once the process group is up: a plan in, the same forward pass, until a stop plan."""
    rank = dist.get_rank()

    def lost(exc: BaseException) -> str:
        return f"rank {rank}: lost the other shards ({type(exc).__name__})"

    runner = ShardRunner(config, PluginHost([], config, PRESETS[config.llm.name].num_layers),
                         Comm(rank, dist.get_world_size(), _device(config), lost))
    if store is not None:
        store.set(BUILT_KEY.format(rank), "1")
    while True:
        plan = decode_plan(runner.comm.receive_plan())
        if plan.stop:
            break
        runner.run_plan(plan)
        runner.comm.take()
        if store is not None:
            store.set(PROGRESS_KEY.format(rank), str(plan.step))


def _device(config: EngineConfig) -> torch.device:
    if config.llm.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def _die_with_parent() -> None:
    """Ends this process soon after its parent dies, however it dies (no orphan workers): a thread
    that watches for being re-parented. Not PR_SET_PDEATHSIG, which fires when the parent *thread*
    ends: an engine built in a short-lived thread would lose its workers with it. (A collective
    also fails at once when the driver's sockets close; this covers a worker between steps.)"""
    parent = int(os.environ.get("CBTUI_SHARD_PARENT", os.getppid()))

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> int:
    _die_with_parent()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    try:
        config = EngineConfig(**json.loads(os.environ[CONFIG_ENV]))
        assert config.parallel is not None, "a worker serves under a parallel section"
        timeout = timedelta(seconds=config.parallel.shard_timeout_s)
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, False,
                              timeout=timedelta(seconds=START_TIMEOUT_S))
        store.set(READY_KEY.format(rank), "1")
        device = _device(config)
        dist.init_process_group(backend_for(device, world), store=store, rank=rank, world_size=world,
                                timeout=timeout)
        if device.type == "cpu" and config.llm.name == "tiny":
            torch.set_num_threads(1)  # as the driver does: the tiny model's ops are too small for threads
        serve(config, store)
    except ShardFailure as exc:
        print(exc, file=sys.stderr, flush=True)
        return 1
    except Exception as exc:  # one line for the driver to quote
        print(f"rank {rank}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr, flush=True)
        return 1
    with_group = dist.is_initialized()
    if with_group:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
