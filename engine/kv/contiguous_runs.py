"""Contiguous runs: a cache layout chosen per request, by its length.

A paged pool hands a request blocks one at a time, as it grows, from anywhere in the pool. The older
way, contiguous allocation, reserves a request's whole length up front in one run of consecutive
blocks. The run costs memory the request has not written yet (and never will, if it stops early),
and it needs that many free blocks in a row, which a fragmented pool may not have although enough
are free. In exchange the request never asks for a block again, so it is never short and never
preempted, and its keys sit in one contiguous span (a kernel could read them without a table).

That trade favours short requests: their reservation is small and easy to place. With
`contiguous_up_to = N`, a request whose prompt plus max_new_tokens is at most N tokens gets a run;
longer ones are paged on demand. Outputs are the same either way (the table says where the keys
are); what changes is who waits, who is preempted, and how much of the pool is held empty.
"""

from __future__ import annotations


def run_tokens(prompt_len: int, max_new_tokens: int, up_to: int) -> int:
    """The tokens a request of this length reserves in one run at admission: its whole length, or 0
    when it is paged on demand (up_to 0: every request is)."""
    total = prompt_len + max_new_tokens
    return total if total <= up_to else 0


def first_run(free: list[int], length: int) -> int | None:
    """The first block of the lowest run of `length` consecutive blocks in `free` (sorted), if any."""
    start = count = 0
    previous = -2
    for block in free:
        if block == previous + 1:
            count += 1
        else:
            start, count = block, 1
        if count == length:
            return start
        previous = block
    return None


def longest_run(free: list[int]) -> int:
    """The most consecutive blocks in `free` (sorted)."""
    best = count = 0
    previous = -2
    for block in free:
        count = count + 1 if block == previous + 1 else 1
        best = max(best, count)
        previous = block
    return best
