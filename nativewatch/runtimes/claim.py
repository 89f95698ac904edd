"""A runtime's own memory, found by address, moved out of `native`: the split every in-memory heap uses.

Runtimes whose heap is only recognisable from their own data (V8 pages, pymalloc arenas) hand over
address ranges with a category each. Only memory the base attribution left to the malloc pool (private
anonymous mappings, the brk heap, glibc arenas) can be claimed: a thread stack, a file or shared memory
keeps its category even if a hostile process writes a fake header into it. Within a mapping the
claimed ranges and the rest split its Rss by present pages (regions.split_by_regions), so a process's
categories still sum exactly to its Rss.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nativewatch.attribute import Attribution
from nativewatch.model import CATEGORIES
from nativewatch.regions import Region, split_by_regions

__all__ = ["CLAIMABLE_KINDS", "Claimed", "claim_ranges"]

CLAIMABLE_KINDS = ("anon", "brk-heap", "malloc-arena")


@dataclass(frozen=True, slots=True)
class Claimed:
    categories: dict[str, int]
    by_label: dict[str, int]  # resident bytes per range label (e.g. V8 space kind), for the runtime's details
    exact: bool  # every split came from counted pages (or needed none)


def claim_ranges(base: Attribution, ranges: Sequence[tuple[int, int, str, str]],
                 present: Callable[[int, int], int | None] | None) -> Claimed:
    """`ranges` are (start, end, category, label); overlapping ones keep the first in address order."""
    regs: list[Region] = []
    cat_of: dict[str, str] = {}
    for s, e, cat, label in sorted(ranges):
        if e <= s or cat not in CATEGORIES:
            continue
        if regs and s < regs[-1][1]:
            continue
        regs.append((s, e, label, True))
        cat_of[label] = cat
    starts = [r[0] for r in regs]
    cats = dict(base.categories)
    by_label: dict[str, int] = {}
    exact = True
    for sh in base.shares:
        m = sh.mapping
        native = sh.categories.get("native", 0)
        if not regs or sh.kind not in CLAIMABLE_KINDS or native <= 0 or len(sh.categories) != 1:
            continue
        i = max(0, bisect.bisect_right(starts, m.start) - 1)
        inside: list[Region] = []
        while i < len(regs) and regs[i][0] < m.end:
            if regs[i][1] > m.start:
                inside.append(regs[i])
            i += 1
        if not inside:
            continue
        parts, ok = split_by_regions(m, inside, present)
        exact = exact and ok
        for label, v in parts.items():
            if label is None or v <= 0:
                continue
            cats["native"] -= v
            cats[cat_of[label]] += v
            by_label[label] = by_label.get(label, 0) + v
    return Claimed(cats, by_label, exact)
