"""llama.cpp in a process of its own, so a crash in its native code (a kernel this CPU or this
build cannot run: a segfault, an illegal instruction) or a hang ends its row, not the bench.

The child is spawned, not forked: it starts with none of this process' threads or memory (torch's
OpenMP pool, the engines' tensors). It may import torch (spawn re-imports the parent's main module,
the `cbtui` command's) but runs nothing of it. It loads the GGUF once, then runs the workloads it
is sent: greedy, one request at a time as `Llama.generate` serves them, timed in the child. Messages are tuples over a
multiprocessing pipe; every wait on the child is bounded, and `close` leaves no process behind.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import time
from collections.abc import Sequence

LOAD_TIMEOUT_S = 120.0
JOIN_S = 5.0


class LlamaCppFailed(RuntimeError):
    """The child said it failed, died, or did not answer in time; the message says which."""


def generate(llm, prompt: list[int], max_new: int, stop_ids: Sequence[int]) -> tuple[list[int], list[float]]:
    """One request's greedy tokens (up to and including a stop id) and the time each came."""
    tokens: list[int] = []
    stamps: list[float] = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        tokens.append(int(token))
        stamps.append(time.perf_counter())
        if len(tokens) == max_new or token in stop_ids:
            break
    return tokens, stamps


def run_requests(llm, warm: list[int], prompts: list[list[int]], max_new: list[int],
                 stop_ids: Sequence[int]) -> dict:
    """The requests in arrival order, each to its end before the next starts (after a short
    warm-up, not timed): outputs, each request's time to first token from the start (it includes
    waiting for the ones before it, as behind one server), time per output token, wall time."""
    generate(llm, warm, 2, ())
    outputs, ttft, tpot = [], [], []
    start = time.perf_counter()
    for prompt, n in zip(prompts, max_new, strict=True):
        tokens, stamps = generate(llm, list(prompt), n, stop_ids)
        outputs.append(tokens)
        if stamps:
            ttft.append(stamps[0] - start)
        if len(stamps) > 1:
            tpot.append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
    return {"outputs": outputs, "ttft_s": ttft, "tpot_s": tpot, "wall_s": time.perf_counter() - start}


def _serve(conn, path: str, threads: int, context: int, batch: int) -> None:
    """The child: load, say so (or why not), then answer ('run', ...) until ('stop',) or the pipe closes."""
    # Ctrl-C reaches the whole process group: the parent reports what it measured and closes this
    # process; a KeyboardInterrupt here would only print a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import llama_cpp

        llm = llama_cpp.Llama(model_path=path, n_ctx=context, n_batch=batch, n_threads=threads,
                              n_threads_batch=threads, seed=0, verbose=False)
    except Exception as exc:  # the model or the release: the parent says why
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", getattr(llama_cpp, "__version__", "?")))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] != "run":
            return
        try:
            conn.send(("done", run_requests(llm, *message[1:])))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class LlamaCppProcess:
    """One child holding the loaded model for every run of the bench."""

    def __init__(self, path: str, threads: int, context: int, batch: int = 512,
                 load_timeout_s: float = LOAD_TIMEOUT_S):
        ctx = multiprocessing.get_context("spawn")  # none of this process' threads or tensors
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child, path, threads, context, batch), daemon=True,
                                    name="cbtui-llama-cpp")
        self._process.start()
        child.close()
        try:
            self.version = self._answer(load_timeout_s, "loading the GGUF")
        except LlamaCppFailed:
            self.close()
            raise

    def run(self, warm: list[int], prompts: list[list[int]], max_new: list[int], stop_ids: Sequence[int],
            timeout_s: float) -> dict:
        """run_requests in the child; LlamaCppFailed when it fails, dies or takes over timeout_s
        (then the child is gone, and every later run fails at once)."""
        if not self._process.is_alive():
            raise LlamaCppFailed(f"llama.cpp's process is gone ({self._exit()})")
        try:
            self._conn.send(("run", warm, prompts, max_new, list(stop_ids)))
        except OSError:
            raise LlamaCppFailed(f"llama.cpp's process is gone ({self._exit()})") from None
        return self._answer(timeout_s, "running the requests")

    def _answer(self, timeout_s: float, doing: str):
        if not self._conn.poll(timeout_s):
            self.close()
            raise LlamaCppFailed(f"llama.cpp gave no answer in {timeout_s:.0f} s {doing}; stopped it")
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            self._process.join(JOIN_S)
            raise LlamaCppFailed(f"llama.cpp crashed {doing} ({self._exit()})") from None
        if kind == "error":
            raise LlamaCppFailed(f"llama.cpp failed {doing}: {payload}")
        return payload

    def _exit(self) -> str:
        code = self._process.exitcode
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def close(self) -> None:
        """Ends the child: asked first, then terminated, then killed; never left running."""
        if self._process.is_alive():
            with contextlib.suppress(OSError):  # the pipe broke: the child is going anyway
                self._conn.send(("stop",))
            self._process.join(JOIN_S)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(JOIN_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(JOIN_S)
        self._conn.close()
