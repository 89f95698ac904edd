"""Byte-based sampling: the tables the BPF program uses, and the maths behind its scale-back.

Sample points form a Poisson process over the stream of allocated bytes with mean spacing T (the
interval), as in tcmalloc and Go's runtime.MemProfileRate. The kernel keeps, per CPU, the distance to
the next point; an allocation of s bytes that reaches it is sampled, and the next distance is drawn
fresh (the process is memoryless). So an allocation of size s is sampled with probability
    p(s) = 1 - exp(-s / T)
independently of what came before, and weighting each sampled allocation by 1/p(s) (bytes s/p(s),
count 1/p(s)) gives unbiased estimates of totals (Horvitz-Thompson). The relative standard error of
an estimated total B made of small allocations is about sqrt(T / B): 64 MiB at T = 512 KiB is ~9%,
at T = 64 KiB ~3%.

BPF has no floating point, so user space hands it two tables: EXP_SLOTS equiprobable quantiles of
Exp(T) to draw the next distance from, and s/p(s) at steps of T/256 up to 16 T (linearly interpolated;
beyond 16 T, p(s) = 1 to within 1e-7).
"""

from __future__ import annotations

import math

__all__ = ["EXP_SLOTS", "WEIGHT_STEPS", "WEIGHT_SLOTS", "FX_SHIFT", "exp_table", "weight_table",
           "sample_probability", "relative_error"]

EXP_SLOTS = 1024
WEIGHT_STEPS = 256
WEIGHT_SLOTS = 4097
FX_SHIFT = 16


def exp_table(interval: int) -> list[int]:
    """Quantiles of Exp(interval) at (i + 0.5) / EXP_SLOTS: a uniform pick from them is a draw."""
    return [max(1, round(-math.log((i + 0.5) / EXP_SLOTS) * interval)) for i in range(EXP_SLOTS)]


def sample_probability(size: int, interval: int) -> float:
    if interval <= 0:
        return 1.0
    return -math.expm1(-max(size, 1) / interval)


def weight_table(interval: int) -> list[int]:
    """Scaled-back bytes s / p(s) at s = i * step, step = interval // WEIGHT_STEPS (as the kernel computes)."""
    step = max(1, interval // WEIGHT_STEPS)
    out = []
    for i in range(WEIGHT_SLOTS):
        s = i * step
        out.append(interval if s == 0 else round(s / sample_probability(s, interval)))
    return out


def relative_error(total_bytes: float, interval: int) -> float:
    """Approximate relative standard error of a sampled total (small allocations)."""
    if interval <= 0 or total_bytes <= 0:
        return 0.0
    return math.sqrt(interval / total_bytes)
