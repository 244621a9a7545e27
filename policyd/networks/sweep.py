"""Compile the ranges of one address family into sorted, disjoint intervals with a winner each.

The loader hands over one int per line, a *key*: ``first << 40 | code << 32 | line`` where
``first`` is the first address, ``line`` the line's number over all files (later lines are
larger) and ``code`` says where the last address is: a prefix length (``last = first |
hostmasks[code]``), ``OTHER`` (a range of another form: its last address is in ``others``) or
``EXCLUDED`` (an exclusion line: likewise). Keys sort by first address; the sweep turns them into
intervals, each pointing to the line of its winning range: the most specific (fewest addresses),
among equal sizes the later line; an exclusion beats every range.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import MutableSequence
from typing import Final

LINE_BITS: Final = 32
LINE_MASK: Final = (1 << LINE_BITS) - 1
CODE_SHIFT: Final = 32
FIRST_SHIFT: Final = 40
OTHER: Final = 255  # code: a range whose last address is in `others`
EXCLUDED: Final = 254  # code: an exclusion; its last address is in `others`
MAX_LINES: Final = LINE_MASK  # line numbers must fit the key's 32 bits

# Larger than any address: the sweep reads firsts[i + 1] without a bounds check.
_SENTINEL: Final = 1 << 129


def sweep(
    keys: list[int],
    hostmasks: list[int],
    others: dict[int, int],
    wide_min: int,
    starts: MutableSequence[int],
    ends: MutableSequence[int],
    winners: array[int],
    wide: list[int],
) -> None:
    """Fill starts, ends and winners (the line of each interval's winner) from sorted keys;
    append to `wide` the line of every range with more than `wide_min` addresses.

    Walks the starts in order. A range that overlaps nothing (the usual case) becomes an
    interval directly. Otherwise a heap of the ranges covering the current point, best (smallest
    priority) on top, gives the winner until it ends or the next range starts; ranges that
    ended are dropped lazily when they reach the top. O(n log n).
    """
    n = len(keys)
    if n == 0:
        return
    firsts: list[int] = [key >> FIRST_SHIFT for key in keys]
    firsts.append(_SENTINEL)
    # Priority: size << 32 | (LINE_MASK - line) for a range, so fewer addresses win and, for the
    # same size, the later line; LINE_MASK - line for an exclusion, below every range. Unique,
    # so the tuples never compare beyond their first item.
    heap: list[tuple[int, int, int]] = []
    # Local names for the methods the loop calls: faster than attribute lookups per call.
    push = heapq.heappush
    pop = heapq.heappop
    add_start = starts.append
    add_end = ends.append
    add_winner = winners.append
    i = 0
    while i < n:
        key = keys[i]
        pos = firsts[i]
        line = key & LINE_MASK
        code = key >> CODE_SHIFT & 0xFF
        end = pos | hostmasks[code] if code < EXCLUDED else others[line]
        if firsts[i + 1] > end:
            # Overlaps nothing: no heap needed.
            if code != EXCLUDED:
                add_start(pos)
                add_end(end)
                add_winner(line)
                if end - pos >= wide_min:
                    wide.append(line)
            i += 1
            continue
        while True:
            # Ranges starting here become candidates; ranges that ended drop out.
            while firsts[i] == pos:
                key = keys[i]
                line = key & LINE_MASK
                code = key >> CODE_SHIFT & 0xFF
                last = pos | hostmasks[code] if code < EXCLUDED else others[line]
                if code == EXCLUDED:
                    prio = LINE_MASK - line
                else:
                    prio = (last - pos + 1) << LINE_BITS | (LINE_MASK - line)
                    if last - pos >= wide_min:
                        wide.append(line)
                push(heap, (prio, last, line))
                i += 1
            while heap and heap[0][1] < pos:
                pop(heap)
            if not heap:
                break
            prio, end, best = heap[0]
            if firsts[i] <= end:
                end = firsts[i] - 1
            if prio > LINE_MASK:  # a range, not an exclusion
                if winners and winners[-1] == best and ends[-1] == pos - 1:
                    ends[-1] = end
                else:
                    add_start(pos)
                    add_end(end)
                    add_winner(best)
            pos = end + 1
