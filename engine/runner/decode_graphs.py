"""Decode-only steps replayed from CUDA graphs, one graph per (batch, block-width) bucket.

A decode step of the `small` preset launches about a thousand small kernels; replaying them as
one graph removes the per-kernel host cost, which is most of a decode step in eager mode.

A graph has fixed shapes and fixed addresses, so a step is padded up to its bucket: inputs go
into static buffers (token ids, positions, write slots, block tables, key lengths) and the graph
reads them from there. Padding rows compute garbage that nobody reads: their keys/values go to a
spare block of the pool that the allocator never hands out, their table rows hold valid block
ids (zeros at first, an earlier step's later) and they see one key. Table columns past an item's
own blocks are masked by its key length.

Off CUDA (or with capture off) the same padded forward runs eagerly on the same buffers, so the
CPU tests check everything but the capture itself.
"""

from __future__ import annotations

import contextlib
import time
import warnings

import torch

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 320, 384, 448, 512)
WIDTH_UNIT_TOKENS = 256  # table widths are padded to this many tokens' worth of blocks


class _StaticWrites:
    """The cache as the graphed model sees it: writes go to the static slot buffer."""

    def __init__(self, kv, slots: torch.Tensor):
        self.kv, self.slots = kv, slots

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.kv.write_at(layer, self.slots, k, v)


class _StaticDecodeAttention:
    def __init__(self, decode, tables: torch.Tensor, key_lens: torch.Tensor, block_size: int):
        self.decode, self.tables, self.key_lens, self.block_size = decode, tables, key_lens, block_size

    def __call__(self, q, cache, layer: int, batch):
        kv = cache.kv
        return self.decode(q, kv.k_pool[layer], kv.v_pool[layer], self.tables, self.key_lens, self.block_size)


class DecodeGraphs:
    def __init__(self, model, kv, decode, capture: bool, max_batch: int = BATCH_BUCKETS[-1]):
        self.model, self.kv, self.decode, self.capture = model, kv, decode, capture
        self.buckets = tuple(b for b in BATCH_BUCKETS if b < max_batch) + (max_batch,)
        self.max_blocks = kv.max_table_width
        dev, n = kv.device, self.buckets[-1]
        long = dict(dtype=torch.long, device=dev)
        self.token_ids, self.positions = torch.zeros(n, **long), torch.zeros(n, **long)
        self.write_slots, self.key_lens = torch.zeros(n, **long), torch.ones(n, **long)
        self.tables = torch.zeros((n, self.max_blocks), **long)
        self.graphs: dict[tuple[int, int], tuple] = {}  # bucket -> (graph or None, logits)
        self.mempool = torch.cuda.graph_pool_handle() if capture else None
        self.replays = 0  # decode steps served from a bucket (graph or eager)
        self.capture_s = 0.0  # time spent capturing graphs
        self.broken: str | None = None  # why capture failed; decodes then run eagerly
        self.last: tuple[int, int] | None = None  # (rows, keys per row) of the last step served

    @property
    def width_unit(self) -> int:
        """Table widths come in multiples of this. A kernel that reads tables only up to each key
        length takes them whole (one width); the gather, whose cost grows with the width, gets
        tight ones. Asked each step: the kernel may fall back to the gather mid-run."""
        return self.max_blocks if self.decode.reads_tables else max(1, WIDTH_UNIT_TOKENS // self.kv.block_size)

    def bucket(self, num_items: int, num_blocks: int) -> tuple[int, int] | None:
        n = next((b for b in self.buckets if b >= num_items), None)
        return None if n is None or num_blocks > self.max_blocks else (n, self.table_width(num_blocks))

    def table_width(self, num_blocks: int) -> int:
        """The block-table width of the bucket that holds num_blocks (<= max_blocks) blocks."""
        return min(-(-num_blocks // self.width_unit) * self.width_unit, self.max_blocks)

    def run(self, batch, samples: list[bool]) -> torch.Tensor | None:
        """Logits of a decode-only step (every item one token, every item sampling), or None when
        the step is not one (or is larger than the biggest bucket): run it eagerly then."""
        n = len(batch.q_lens)
        self.last = None
        if self.broken or n == 0 or batch.num_tokens != n or not all(samples):
            return None
        kv = self.kv
        width = kv.step_tables.shape[1]
        key = self.bucket(n, width)
        if key is None:
            return None
        if key not in self.graphs and not self._build(key):
            return None
        bn, bw = key
        self.token_ids[:n].copy_(batch.token_ids)
        self.positions[:n].copy_(batch.positions)
        self.write_slots[:n].copy_(kv.step_write_slots)
        self.tables[:n, :width].copy_(kv.step_tables)
        self.key_lens[:n].copy_(batch.key_lens)
        self._pad(n, bn)
        graph, logits = self.graphs[key]
        if graph is None:
            logits = self._forward(bn, bw)
        else:
            graph.replay()
        self.replays += 1
        self.last = (bn, bw * kv.block_size)
        return logits[:n]

    def _pad(self, start: int, end: int) -> None:
        self.write_slots[start:end].fill_(self.kv.scratch_slot)
        self.key_lens[start:end].fill_(1)

    def _forward(self, n: int, width: int) -> torch.Tensor:
        cache = _StaticWrites(self.kv, self.write_slots[:n])
        attention = _StaticDecodeAttention(self.decode, self.tables[:n, :width], self.key_lens[:n],
                                           self.kv.block_size)
        layers = [attention] * len(self.model.layers)
        return self.model(self.token_ids[:n], self.positions[:n], None, cache, layers, None)

    def _build(self, key: tuple[int, int]) -> bool:
        if not self.capture:
            self.graphs[key] = (None, None)
            return True
        try:
            self._capture(key)
            return True
        except Exception as exc:  # a kernel that cannot be captured: stay eager, say why
            self.broken = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            warnings.warn(f"decode graph capture failed, decodes run eagerly: {self.broken}", stacklevel=2)
            # drain the failed capture's work; under sync-debug "error" a sync raises itself
            with contextlib.suppress(RuntimeError):
                torch.cuda.synchronize()
            return False

    def _capture(self, key: tuple[int, int]) -> None:
        start = time.perf_counter()
        n, width = key
        self._pad(0, n)  # capture with every row padding: warm-up runs write only the spare block
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # kernel selection, cuBLAS workspaces, lazily built tables
                self._forward(n, width)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the dashboard captures on its engine thread while the UI thread runs; another
        # thread's CUDA call must not invalidate the capture (global mode would).
        with torch.cuda.graph(graph, pool=self.mempool, capture_error_mode="thread_local"):
            logits = self._forward(n, width)
        self.graphs[key] = (graph, logits)
        self.capture_s += time.perf_counter() - start

    def capture_up_to(self, num_items: int, key_len: int) -> int:
        """Builds every bucket a run of up to num_items decodes of up to key_len keys can use,
        largest first (so smaller graphs reuse the larger ones' memory); returns how many."""
        blocks = min(self.kv.blocks_for(key_len), self.max_blocks)
        top = next(b for b in self.buckets if b >= min(num_items, self.buckets[-1]))
        widths = sorted({self.table_width(b) for b in range(1, blocks + 1)}, reverse=True)
        built = 0
        for n in reversed([b for b in self.buckets if b <= top]):
            for width in widths:
                if (n, width) not in self.graphs:
                    if not self._build((n, width)):
                        return built
                    built += 1
        return built
