"""Seed statistics: mean, standard deviation and paired t-intervals of differences.

Cells of one study share seeds: seed s fixes both the initialisation and the data order, so the
difference arm - reference is taken per seed and its mean gets a Student-t interval with n - 1
degrees of freedom. A difference counts only when its interval excludes 0.

    >>> d = paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    >>> d["mean"], d["n"], round(d["lo"], 3), round(d["hi"], 3)
    (2.0, 3, -0.484, 4.484)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from scipy import stats as _st

LEVEL = 0.95


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof=1; NaN for one value) and n of the finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    mean = sum(xs) / n if n else math.nan
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else math.nan
    return {"mean": mean, "std": std, "n": n}


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Two-sided Student-t interval of the mean (NaNs with fewer than two values)."""
    s = summary(values)
    if s["n"] < 2:
        return math.nan, math.nan
    half = float(_st.t.ppf(0.5 + level / 2, s["n"] - 1)) * s["std"] / math.sqrt(s["n"])
    return s["mean"] - half, s["mean"] + half


def paired_difference(
    arm: Sequence[float] | Mapping[int, float],
    ref: Sequence[float] | Mapping[int, float],
    *,
    lower_is_better: bool = True,
    level: float = LEVEL,
) -> dict[str, Any]:
    """`arm - ref` paired by seed (mappings seed -> value, or sequences in seed order).

    Returns mean, std, n, the t-interval (lo, hi), the seeds used and a verdict: "better" /
    "worse" when the interval excludes 0 (by `lower_is_better`), else "no detectable
    difference" (also with fewer than two pairs).
    """
    a = dict(enumerate(arm)) if not isinstance(arm, Mapping) else dict(arm)
    r = dict(enumerate(ref)) if not isinstance(ref, Mapping) else dict(ref)
    seeds = sorted(
        s for s in a.keys() & r.keys()
        if a[s] is not None and r[s] is not None
        and math.isfinite(float(a[s])) and math.isfinite(float(r[s]))
    )  # fmt: skip
    diffs = [float(a[s]) - float(r[s]) for s in seeds]
    out = summary(diffs)
    lo, hi = t_interval(diffs, level)
    verdict = "no detectable difference"
    if math.isfinite(lo) and (lo > 0 or hi < 0):
        improved = (hi < 0) if lower_is_better else (lo > 0)
        verdict = "better" if improved else "worse"
    out.update({"lo": lo, "hi": hi, "level": level, "seeds": seeds, "verdict": verdict})
    return out
