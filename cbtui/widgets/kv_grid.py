"""The KV cache: physical blocks coloured by owner (paged), or one bar per request (dense).

A request's last block shows how full it is; free blocks are dim dots; blocks that a finished
or preempted request gave back in this step (the record's `freed_blocks`) are marked with a cross
in its colour. With prefix caching, a block several requests share shows its reference count as a
circled digit (② .. ⑳, a diamond beyond), bold, in the colour of its oldest holder (or of the
selected one); a cached-free block (nobody holds it, its keys kept for a later hit) is a ring.
Glyphs, not colours alone, tell them apart, so they read the same under 16 colours and NO_COLOR.
With contiguous runs (contiguous_up_to), a short request's blocks are one run reserved for its whole
length at admission: the blocks it has not written yet are squares in its colour.
A sharded engine shows one pool per shard (the record's `shards`), a request in the same colour on
every shard: by heads the pools look alike (each holds its heads of every block); by sequence a
request's blocks alternate between them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from engine.records import CommView, KVView, ShardView
from engine.records.kv_history import flat_history

from ..render.colors import FULL, NONE, color_mode, glyph_key, needs_glyphs, request_color, request_glyph
from ..render.formatting import duration, first_that_fits, human_bytes

FILL_GLYPHS = "▁▂▃▄▅▆▇█"  # the last block's fill, eighths
FREE_GLYPH, FREED_GLYPH = "·", "×"
SHARED_GLYPH, CACHED_GLYPH = "◆", "○"
RESERVED_GLYPH = "□"  # a block of a contiguous run, reserved but holding no token yet
COUNT_GLYPHS = "①②③④⑤⑥⑦⑧⑨⑩⑪⑫⑬⑭⑮⑯⑰⑱⑲⑳"  # a shared block's reference count (not a request's glyph)
CACHED_STYLE = Style(color="cyan", dim=True)


class BlockCell(NamedTuple):
    owner: int | None  # request id, None when free
    fill: float  # share of the block's slots holding tokens (1.0 for every block but the last)
    freed_by: int | None = None  # request that gave this block back in this step
    shared: int = 0  # requests holding it, when more than one (prefix caching)
    cached: bool = False  # nobody holds it, but its keys stay for a later prefix hit
    reserved: bool = False  # in its owner's contiguous run, no token written yet


FREE_CELL = BlockCell(None, 0.0)
CACHED_CELL = BlockCell(None, 0.0, cached=True)


def block_cells(kv: KVView, selected: int | None = None) -> list[BlockCell]:
    cells = [FREE_CELL] * kv.num_blocks
    prefix = kv.prefix
    if prefix is not None:
        for block in prefix.cached:
            cells[block] = CACHED_CELL
    runs = set(kv.runs)
    for rid, table in kv.block_tables.items():
        held = kv.tokens.get(rid, 0)
        owner = int(rid)
        full = BlockCell(owner, 1.0)
        reserved = BlockCell(owner, 0.0, reserved=True) if owner in runs else None
        gone = kv.evicted.get(rid, ())  # entries whose block was evicted hold a stand-in: not a block of theirs
        for n, block in enumerate(table):
            if n in gone:
                continue
            if cells[block].owner is not None:  # shared: only full blocks are, so it is full
                first = cells[block].owner
                cells[block] = BlockCell(owner if owner == selected else first, 1.0, shared=cells[block].shared)
                continue
            in_block = min(kv.block_size, max(held - n * kv.block_size, 0))
            if in_block == 0 and reserved is not None:
                cells[block] = reserved
            else:
                cells[block] = full if in_block == kv.block_size else BlockCell(owner, in_block / kv.block_size)
    if prefix is not None:
        for key, count in prefix.shared.items():
            block = int(key)
            if cells[block].owner is not None:
                cells[block] = cells[block]._replace(shared=count)
    for rid, blocks in kv.freed_blocks.items():
        for block in blocks:
            if cells[block].owner is None:  # not handed straight to another request
                cells[block] = BlockCell(None, 0.0, freed_by=int(rid))
    return cells


def _cell_glyph(cell: BlockCell, glyphs: bool) -> str:
    if cell.owner is None:
        if cell.freed_by is not None:
            return FREED_GLYPH
        return CACHED_GLYPH if cell.cached else FREE_GLYPH
    if cell.reserved:
        return RESERVED_GLYPH
    if cell.shared:
        return COUNT_GLYPHS[cell.shared - 1] if cell.shared <= len(COUNT_GLYPHS) else SHARED_GLYPH
    if glyphs:
        return request_glyph(cell.owner)
    return FILL_GLYPHS[max(0, min(len(FILL_GLYPHS) - 1, round(cell.fill * len(FILL_GLYPHS)) - 1))]


@lru_cache(maxsize=256)
def _style(owner: int | None, freed_by: int | None, selected: int | None, mode: str, cached: bool = False,
           shared: bool = False) -> Style:
    color = None if mode == NONE else request_color(owner if owner is not None else freed_by or 0, mode).hex
    if owner is None:
        if freed_by is not None:
            return Style(color=color, bold=True)
        return CACHED_STYLE if cached else Style(dim=True)
    dim = selected is not None and owner != selected
    return Style(color=color, dim=dim, bold=owner == selected or shared,
                 underline=owner == selected and mode == NONE)


def _merge(cells: list[BlockCell], group: int) -> list[BlockCell]:
    """More blocks than cells: each cell shows the owner of most of its blocks."""
    merged = []
    for start in range(0, len(cells), group):
        chunk = cells[start:start + group]
        owners = [c.owner for c in chunk if c.owner is not None]
        if owners:
            top = max(set(owners), key=owners.count)
            merged.append(BlockCell(top, len(owners) / len(chunk), shared=max(c.shared for c in chunk)))
        else:
            freed = next((c.freed_by for c in chunk if c.freed_by is not None), None)
            merged.append(BlockCell(None, 0.0, freed, cached=any(c.cached for c in chunk)))
    return merged


def freed_parts(kv: KVView) -> tuple[Text, Text] | None:
    """Whose blocks were freed in this step and how many (the grid's ×), long and short: '× request 3
    freed 8 blocks' / '× r3 freed 8'. (It said '× freed: 3', a request id that read as a count.)
    None when nothing was freed."""
    if not kv.freed:
        return None
    ids = list(kv.freed)
    counts = [kv.freed_blocks.get(str(r)) for r in ids]
    who = f"request {ids[0]}" if len(ids) == 1 else "requests " + ", ".join(map(str, ids))
    short_who = ", ".join(f"r{r}" for r in ids)
    if kv.layout != "paged" or any(c is None for c in counts):  # dense K/V (or a recording without blocks)
        what = "blocks" if kv.layout == "paged" else "K/V"
        return (Text(f"{FREED_GLYPH} {what} freed by {who}", style="bold"),
                Text(f"{FREED_GLYPH} freed by {short_who}", style="bold"))
    blocks = sum(len(c or ()) for c in counts)
    unit = "block" if blocks == 1 else "blocks"
    return (Text(f"{FREED_GLYPH} {who} freed {blocks} {unit}", style="bold"),
            Text(f"{FREED_GLYPH} {short_who} freed {blocks}", style="bold"))


def summary_lines(kv: KVView, width: int, group: int, glyph_ids: list[int] | None,
                  max_lines: int = 99) -> list[Text]:
    """The pool's figures, then what the grid's marks mean, packed into lines of `width`: a part that
    does not fit goes to the next line, never cut (`glyph_ids`: the requests drawn as glyphs). Past
    `max_lines` (the grid keeps a row), the prefix counts and the runs shorten and what still does not
    fit is left out."""
    parts: list[tuple[Text, Text | None]] = [  # (the part, a shorter form for when lines run out)
        (Text.assemble(("used ", "dim"), f"{kv.blocks_used}/{kv.num_blocks}", ("  free ", "dim"),
                       str(kv.blocks_free), ("  block ", "dim"), f"{kv.block_size} tok"),
         Text.assemble(f"{kv.blocks_used}/{kv.num_blocks}", (" used", "dim")))]
    if group > 1:
        parts.append((Text(f"1 cell = {group} blocks", style="dim"), Text(f"{group}/cell", style="dim")))
    freed = freed_parts(kv)
    if freed is not None:
        parts.append(freed)
    if kv.contiguous_up_to:
        parts.append((Text.assemble(RESERVED_GLYPH, (f" reserved; runs for ≤{kv.contiguous_up_to} tok: ", "dim"),
                                    str(len(kv.runs))),
                      Text.assemble(RESERVED_GLYPH, (" runs ", "dim"), str(len(kv.runs)))))
    if glyph_ids is not None:
        key = glyph_key(glyph_ids)
        parts.append((Text(key, style="dim"), Text(key.replace("glyph = request id", "glyph=id"), style="dim")))
    prefix = prefix_part(kv)
    if prefix is not None:
        parts.append((prefix, prefix_part(kv, short=True)))
    lines, dropped = _pack(parts, width, max_lines, shorten=False)
    # Short forms throughout may make room for what was left out (the glyph key, say); the pool's
    # figures last ('8/96 used'): in a panel of one line they leave room for whose blocks were freed.
    for first_too in (False, True):
        if not dropped:
            break
        shorter, dropped_short = _pack(parts, width, max_lines, shorten=True, shorten_first=first_too)
        if dropped_short < dropped:
            lines, dropped = shorter, dropped_short
    return lines


def _pack(parts: list[tuple[Text, Text | None]], width: int, max_lines: int, shorten: bool,
          shorten_first: bool = False) -> tuple[list[Text], int]:
    """The parts packed into lines of `width`, at most `max_lines`: (lines, how many parts were left out).
    A part that does not fit goes on a new line while there are lines left, then in its short form
    (always, with `shorten`) if that fits."""
    first, first_short = parts[0]
    lines, dropped = [first_short if shorten_first and first_short is not None else first], 0
    for part, short in parts[1:]:
        if shorten and short is not None:
            part = short
        if lines[-1].cell_len + 2 + part.cell_len <= width:
            lines[-1] = Text.assemble(lines[-1], "  ", part)
        elif len(lines) < max_lines:
            lines.append(part if part.cell_len <= width or short is None else short)
        elif short is not None and lines[-1].cell_len + 2 + short.cell_len <= width:
            lines[-1] = Text.assemble(lines[-1], "  ", short)
        else:
            dropped += 1
    return lines, dropped


def prefix_part(kv: KVView, short: bool = False) -> Text | None:
    """With prefix caching, once there is any: how many blocks are shared and cached-free (the glyphs
    the grid draws), and this step's hits; `short`: the counts after the glyphs alone ("②3 ○12")."""
    prefix = kv.prefix
    if prefix is None or not (prefix.shared or prefix.cached or prefix.hit_blocks):
        return None
    if short:
        return Text.assemble(("②", "bold"), f"{len(prefix.shared)} ", (CACHED_GLYPH, CACHED_STYLE),
                             f"{len(prefix.cached)}")
    line = Text.assemble(("②", "bold"), (f" shared {len(prefix.shared)}", "dim"),
                         (f"  {CACHED_GLYPH}", CACHED_STYLE), (f" cached-free {len(prefix.cached)}", "dim"))
    if prefix.hit_blocks:
        line.append(f"  hit {prefix.hit_blocks}", style="cyan")
    return line


def paged_text(kv: KVView, width: int, rows: int, selected: int | None, mode: str) -> Text:
    cells = block_cells(kv, selected)
    owners = sorted({c.owner for c in cells if c.owner is not None})
    glyphs = needs_glyphs(owners, mode)
    # The selected request's blocks as PagedAllocator.flatten reads them, on a line of its own.
    history = flat_history(kv, selected) if selected is not None and rows > 2 else None
    if history is not None:
        rows -= 1
    # The summary's extra lines come out of the grid's; fewer rows may merge blocks into cells, which
    # the summary then says (a line longer, at most).
    summary: list[Text] = []
    group, grid_rows = 0, max(rows, 1)
    for _ in range(3):
        grid_rows = max(rows - max(len(summary) - 1, 0), 1)
        fits = -(-len(cells) // max(width * grid_rows, 1)) if cells else 1
        if fits == group:
            break
        group = fits
        summary = summary_lines(kv, width, group, owners if glyphs else None, max_lines=max(rows, 1))
    text, _ = _grid(cells, width, grid_rows, selected, mode, glyphs)
    if history is not None and selected is not None:
        color = None if mode == NONE else request_color(selected, mode).hex
        summary.append(Text(history.describe(max_blocks=max(3, (width - 30) // 3)), style=Style(color=color)))
    return Text("\n").join([*summary, text])


def comm_parts(comm: CommView | None) -> tuple[Text, Text] | None:
    """What the shards sent each other in this step (the record's comm), long and short."""
    if comm is None:
        return None
    sent = human_bytes(comm.bytes)
    return (Text.assemble(("⇄ shards sent ", "dim"), sent, (f" in {comm.collectives} collectives, ", "dim"),
                          duration(comm.seconds)),
            Text.assemble(("⇄ sent ", "dim"), sent, (f" ×{comm.collectives}", "dim")))


def sharded_text(kv: KVView, shards: list[ShardView], width: int, rows: int, selected: int | None,
                 mode: str, comm: CommView | None = None) -> Text:
    """One pool per shard, each under a line naming it: its device, blocks used and its pool's bytes,
    then what the shards sent each other in this step (`comm`). Too few rows for that (80x24): one
    line a shard, its grid after its name ("s1 ███▄··"), and the bytes sent on a row left over."""
    cells = block_cells(kv)
    glyphs = needs_glyphs(sorted({c.owner for c in cells if c.owner is not None}), mode)
    sent = comm_parts(comm)
    if rows < 2 * len(shards) + (sent is not None):
        lines = []
        for shard in shards[:rows]:
            mine = cells[shard.first_block:shard.first_block + shard.num_blocks]
            label = Text(f"s{shard.rank} ", style="bold")
            grid, _ = _grid(mine, max(width - label.cell_len, 1), 1, selected, mode, glyphs)
            lines.append(Text.assemble(label, grid))
        if sent is not None and rows > len(lines):
            lines.append(first_that_fits(width, *sent))
        return Text("\n").join(lines)
    rows -= sent is not None
    per_shard = max((rows - len(shards)) // len(shards), 1)
    parts = []
    for shard in shards:
        mine = cells[shard.first_block:shard.first_block + shard.num_blocks]
        grid, group = _grid(mine, width, per_shard, selected, mode, glyphs)
        title = Text.assemble((f"shard {shard.rank} ", "bold"), (f"{shard.device} ", "dim"),
                              f"{shard.blocks_used}/{shard.num_blocks}", (" used  pool ", "dim"),
                              human_bytes(shard.pool_bytes))
        if group > 1:  # the panel is narrow: blocks per cell in a few characters
            title.append(f" {group}/cell", style="dim")
        parts += [title, grid]
    if sent is not None:
        parts.append(first_that_fits(width, *sent))
    freed = freed_parts(kv)
    if freed is not None:
        parts.append(first_that_fits(width, *freed))
    return Text("\n").join(parts)


def _grid(cells: list[BlockCell], width: int, rows: int, selected: int | None, mode: str,
          glyphs: bool) -> tuple[Text, int]:
    """The cells drawn in `rows` lines of `width`; returns the text and how many blocks a cell shows."""
    capacity = max(width * rows, 1)
    group = -(-len(cells) // capacity) if cells else 1
    if group > 1:
        cells = _merge(cells, group)
    # Wider cells with a gap when there is room, so single blocks (pages) can be counted.
    cell_width = next((w for w in (3, 2) if (width // w) * rows >= len(cells)), 1)
    per_row = max(width // cell_width, 1)
    gap = " " if cell_width > 1 else ""
    text = Text(no_wrap=True)
    for row_start in range(0, len(cells), per_row):
        if row_start:
            text.append("\n")
        # Consecutive cells with one style become one span: a full pool is a few spans, not
        # thousands.
        run_text: list[str] = []
        run_style = None
        for cell in cells[row_start:row_start + per_row]:
            style = _style(cell.owner, cell.freed_by, selected, mode, cell.cached, bool(cell.shared))
            if style is not run_style and run_text:
                text.append("".join(run_text), run_style)
                run_text = []
            run_style = style
            run_text.append(_cell_glyph(cell, glyphs) * max(cell_width - 1, 1) + gap)
        if run_text:
            text.append("".join(run_text), run_style)
    return text, group


def dense_text(kv: KVView, width: int, rows: int, selected: int | None, mode: str = FULL) -> Text:
    held = sorted(((int(r), n) for r, n in kv.tokens.items()), key=lambda x: x[0])
    longest = max((n for _, n in held), default=1) or 1
    label_width = 12
    bar_width = max(width - label_width, 1)
    lines = [Text.assemble(("dense: one growing K/V tensor per request", "dim"))]
    shown = held if len(held) <= rows - 1 else held[:max(rows - 2, 0)]
    for rid, n in shown:
        cells = max(1, round(bar_width * n / longest))
        dim = selected is not None and rid != selected
        color = None if mode == NONE else request_color(rid, mode).hex
        lines.append(Text.assemble(f"r{rid:<3} {n:>5} ", ("█" * cells, Style(color=color, dim=dim))))
    if len(shown) < len(held):
        lines.append(Text(f"+{len(held) - len(shown)} more requests", style="dim"))
    freed = freed_parts(kv)
    if freed is not None:
        lines.append(first_that_fits(width, *freed))
    return Text("\n").join(lines)


class KVGrid(Static):
    DEFAULT_CSS = """
    KVGrid { height: 1fr; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._kv: KVView | None = None
        self._selected: int | None = None
        self._shards: list[ShardView] = []
        self._comm: CommView | None = None

    def show(self, kv: KVView | None, selected: int | None, shards: list[ShardView] | None = None,
             comm: CommView | None = None) -> None:
        self._kv, self._selected, self._shards, self._comm = kv, selected, shards or [], comm
        self.refresh()

    def render(self) -> Text:
        kv = self._kv
        if kv is None:
            return Text("no step yet", style="dim")
        width, height = max(self.size.width, 1), max(self.size.height, 2)
        mode = color_mode(self.app)
        if kv.layout == "paged" and self._shards:
            return sharded_text(kv, self._shards, width, height, self._selected, mode, self._comm)
        if kv.layout == "paged":
            return paged_text(kv, width, height - 1, self._selected, mode)
        return dense_text(kv, width, height, self._selected, mode)
