"""A speculating decode's 1 + k rows, run as 1 + k one-token decodes (paged cache only).

Row j of a decode at position p that verifies k drafts sees keys 0 .. p + j: exactly a decode at
position p + j whose keys (the drafts before it included, written earlier in the same layer) are
already in the pool. Split that way, a speculative step is a decode-only step: the paged decode
attention (the Triton kernel on CUDA, the block gather elsewhere) and the decode graphs run it,
instead of one masked attention call per speculating request. The record keeps the one item; only
the batch the model sees is split. A dense cache appends per item, so it keeps the one item.
"""

from __future__ import annotations

from ..records import ScheduledItem


def as_decode_rows(items: list[ScheduledItem], tokens: list[list[int]],
                   samples: list[bool]) -> tuple[list[ScheduledItem], list[list[int]], list[bool]]:
    """The step's items with every speculating decode split into one-token decodes, in order."""
    out_items, out_tokens, out_samples = [], [], []
    for item, fed, flag in zip(items, tokens, samples, strict=True):
        if not item.drafts:
            out_items.append(item)
            out_tokens.append(fed)
            out_samples.append(flag)
            continue
        for j, token in enumerate(fed):
            pos = item.first_pos + j
            out_items.append(ScheduledItem(item.request_id, "decode", pos, 1, pos + 1))
            out_tokens.append([token])
            out_samples.append(True)
    return out_items, out_tokens, out_samples
