"""Splitting one mapping's Rss between address ranges inside it, so the parts sum to its Rss exactly.

smaps reports one Rss per VMA, and the kernel merges adjacent anonymous mappings with equal flags, so a
runtime's region (an NMT region, a V8 page, a pymalloc arena) often shares its VMA with memory that is
not its own. The present pages of each part, counted in /proc/PID/pagemap, weight the split; without
them the parts' sizes do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nativewatch.sources.procfs import Mapping

__all__ = ["Region", "apportion", "split_by_regions"]


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` in proportion to `weights` (largest remainder): parts sum to `total` exactly."""
    if total <= 0 or not weights:
        return [0] * len(weights)
    ws = [max(0, w) for w in weights]
    s = sum(ws)
    if s == 0:
        ws = [1] * len(ws)
        s = len(ws)
    base = [total * w // s for w in ws]
    rem = total - sum(base)
    order = sorted(range(len(ws)), key=lambda i: (-(total * ws[i] % s), i))
    for i in order[:rem]:
        base[i] += 1
    return base


# [start, end), the raw NMT category name, and whether NMT says the range is committed (False for the
# reserved-only gaps of a region: resident pages there are the category's, but a size-based split
# gives them no weight, since memory NMT has not committed is not resident).
Region = tuple[int, int, str, bool]


def split_by_regions(m: Mapping, regions: Sequence[Region],
                     present: Callable[[int, int], int | None] | None) -> tuple[dict[str | None, int], bool]:
    """Split one mapping's Rss between the NMT regions inside it and the uncovered rest (key None).

    `regions` must be sorted and non-overlapping. Returns (parts, exact) where exact says the split
    came from counted pages (or needed none) rather than from sizes.
    """
    rss = m.rss
    parts: list[tuple[int, int, str | None, bool]] = []
    cur = m.start
    for s, e, name, committed in regions:
        lo, hi = max(s, m.start), min(e, m.end)
        if hi <= lo:
            continue
        if lo > cur:
            parts.append((cur, lo, None, True))
        parts.append((lo, hi, name, committed))
        cur = hi
    if cur < m.end:
        parts.append((cur, m.end, None, True))
    keys = {p[2] for p in parts}
    if len(keys) <= 1:
        return {parts[0][2] if parts else None: rss}, True
    weights: list[int] | None = None
    exact = False
    if present is not None and rss > 0:
        counted = [present(lo, hi) for lo, hi, _, _ in parts]
        if all(c is not None for c in counted) and sum(c for c in counted if c) > 0:
            weights = [c or 0 for c in counted]
            exact = True
    if weights is None:
        weights = [hi - lo if committed else 0 for lo, hi, _, committed in parts]
    out: dict[str | None, int] = {}
    for (_, _, name, _), v in zip(parts, apportion(rss, weights), strict=True):
        out[name] = out.get(name, 0) + v
    return out, exact
