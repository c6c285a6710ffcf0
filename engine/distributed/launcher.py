"""Starting, watching and stopping the worker processes of a sharded engine.

Two ways in, one code path after the rendezvous:
- self-launched (`Engine(EngineConfig(shards=2))`): rank 0 opens a TCPStore listening on 127.0.0.1
  only (a port the OS picks, so nothing races for it), starts ranks 1..N-1 as
  `python -m engine.distributed.worker` with the rendezvous and the config in their environment,
  and owns them: they stop when the engine is closed or garbage-collected and when this process
  exits (weakref.finalize runs at exit too); a worker also ends when its parent dies (worker.py
  watches), so none is orphaned.
- torchrun (`torchrun --nproc-per-node 2 -m cbtui ...`, any number of nodes): every rank runs the
  same command; RANK/WORLD_SIZE/MASTER_ADDR come from the environment; rank 0 goes on as the
  driver and the other ranks serve until it stops them.
gloo on the CPU; NCCL on CUDA when every shard has its own GPU, else gloo through the host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ..config import EngineConfig
from .errors import ShardFailure

CONFIG_ENV = "CBTUI_SHARD_CONFIG"  # set for self-launched workers: the engine's config as JSON
PROGRESS_KEY = "cbtui/progress/{}"  # the last step a worker finished, in the store
READY_KEY = "cbtui/ready/{}"  # a worker reached the store (it is about to join the group)
BUILT_KEY = "cbtui/built/{}"  # a worker has built its shard (its steps can start)
STOP_WAIT_S = 5.0  # a worker asked to stop that has not exited by then is killed
# Starting is not a step: importing torch and building a shard took 3-10 s on this project's busy 2-core
# machine, far past a tight collective timeout. Starting has its own bound, with liveness checks.
START_TIMEOUT_S = 180.0


def backend_for(device: torch.device, shards: int) -> str:
    if device.type == "cuda" and torch.cuda.device_count() >= shards:
        return "nccl"
    return "gloo"


def loopback_store(world: int) -> dist.TCPStore:
    """Rank 0's rendezvous store, listening on 127.0.0.1 only, on a port the OS picks.
    TCPStore("127.0.0.1", ...) alone listens on every interface, and anyone who reaches it can read
    and write its keys (it has no authentication): it is handed a socket bound to loopback instead
    (a duplicate, which the store owns and closes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        return dist.TCPStore("127.0.0.1", listener.getsockname()[1], world, True,
                             timeout=timedelta(seconds=START_TIMEOUT_S), wait_for_workers=False,
                             master_listen_fd=os.dup(listener.fileno()))


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and CONFIG_ENV not in os.environ


def _signal_name(code: int) -> str:
    with contextlib.suppress(ValueError):
        return f" ({signal.Signals(-code).name})" if code < 0 else ""
    return ""


class WorkerGroup:
    """The driver's handle on its workers: start, liveness, diagnosis, stop."""

    def __init__(self, config: EngineConfig, device: torch.device):
        assert config.parallel is not None, "workers start under a parallel section"
        self.config, self.world, self.timeout_s = config, config.parallel.shards, config.parallel.shard_timeout_s
        self.timeout = timedelta(seconds=self.timeout_s)
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.store: dist.Store | None = None
        self.step = -1  # the step being run, for messages
        self.failed: str | None = None
        if dist.is_initialized():
            raise ValueError("a sharded engine is already running in this process (one process group per "
                             "process); close it first with engine.close()")
        backend = backend_for(device, self.world)
        if launched_by_torchrun():
            if int(os.environ["WORLD_SIZE"]) != self.world:
                raise ValueError(f"shards={self.world} but torchrun started {os.environ['WORLD_SIZE']} processes; "
                                 f"use --nproc-per-node (times nodes) = shards")
            dist.init_process_group(backend, init_method="env://", timeout=self.timeout)
            self.rank = dist.get_rank()
            return
        self.rank = 0
        self.store = loopback_store(self.world)
        try:
            self._spawn(self.store.port)
            self.wait_for(READY_KEY)
            dist.init_process_group(backend, store=self.store, rank=0, world_size=self.world, timeout=self.timeout)
        except BaseException:
            self.kill()
            raise

    def _spawn(self, port: int) -> None:
        config = json.dumps(dataclasses.asdict(self.config))
        root = str(Path(__file__).resolve().parents[2])  # the directory holding the engine package
        for rank in range(1, self.world):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(self.world), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CBTUI_SHARD_PARENT=str(os.getpid()),
                       PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p))
            env[CONFIG_ENV] = config
            fd, log = tempfile.mkstemp(prefix=f"cbtui-shard{rank}-", suffix=".log")
            self.logs.append(Path(log))
            with os.fdopen(fd, "w") as err:
                self.procs.append(subprocess.Popen([sys.executable, "-m", "engine.distributed.worker"], env=env,
                                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err))

    def wait_for(self, key: str) -> None:
        """Until every worker has set `key` in the store, or one has died (its last words), or
        START_TIMEOUT_S. Nothing to wait for under torchrun (no store of ours): the first step waits."""
        if self.store is None:
            return
        deadline = time.monotonic() + START_TIMEOUT_S
        keys = [key.format(r) for r in range(1, self.world)]
        while not self.store.check(keys):
            self.check()
            if time.monotonic() > deadline:
                raise ShardFailure(self.fail(f"shard workers did not start within {START_TIMEOUT_S:g} s"))
            time.sleep(0.02)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check(self) -> None:
        """Raises ShardFailure when a worker has exited (cheap: one waitpid per worker)."""
        if self.failed:
            raise ShardFailure(self.failed)
        for rank, proc in enumerate(self.procs, start=1):
            if proc.poll() is not None:
                raise ShardFailure(self.fail(self._exited(rank, proc.returncode)))

    def _exited(self, rank: int, code: int) -> str:
        where = f" at step {self.step}" if self.step >= 0 else " while starting"
        last = self._last_words(rank)
        return f"shard worker rank {rank} exited with code {code}{_signal_name(code)}{where}" + (
            f": {last}" if last else "")

    def _last_words(self, rank: int) -> str:
        try:
            lines = self.logs[rank - 1].read_text(errors="replace").strip().splitlines()
        except (OSError, IndexError):
            return ""
        return lines[-1][:300] if lines else ""

    def diagnose(self, exc: BaseException) -> str:
        """The one line a failed collective ends the run with, naming the rank; then stops the rest."""
        if self.failed:
            return self.failed
        deadline = time.monotonic() + 1.0  # a worker that just died may take a moment to be reaped
        while time.monotonic() < deadline:
            for rank, proc in enumerate(self.procs, start=1):
                if proc.poll() is not None:
                    return self.fail(self._exited(rank, proc.returncode))
            time.sleep(0.05)
        if self.procs and self.store is not None:  # all alive: the one(s) behind are hung
            behind = self._behind()
            return self.fail(f"shard worker rank {', '.join(map(str, behind))} did not answer within "
                             f"{self.timeout_s:g} s at step {self.step} (hung); stopped")
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return self.fail(f"shard collective failed at step {self.step} (rank {self.rank}): {first}")

    def _behind(self) -> list[int]:
        """Workers whose last finished step is the oldest (the store holds each one's)."""
        assert self.store is not None
        done = {}
        for rank in range(1, self.world):
            key = PROGRESS_KEY.format(rank)
            try:
                done[rank] = int(self.store.get(key)) if self.store.check([key]) else -1
            except (RuntimeError, ValueError):
                done[rank] = -1
        oldest = min(done.values())
        return [r for r, s in done.items() if s == oldest]

    def fail(self, message: str) -> str:
        self.failed = message
        self.kill()
        return message

    def kill(self) -> None:
        """Stops every worker now (no goodbye), and leaves the process group."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_WAIT_S)
        self._leave()

    def stopped(self) -> None:
        """After the stop plan went out: wait for the workers, kill what lingers, leave the group."""
        deadline = time.monotonic() + STOP_WAIT_S
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        self.kill()

    def _leave(self) -> None:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        self.store = None
        for log in self.logs:  # a failure's last words are in its message already
            log.unlink(missing_ok=True)
        self.logs = []
