"""The 99% interval of a mean count in ``LCResult.summary()`` (issue 11 item 8):
a percentile bootstrap, inside the data's range, never below zero."""
import math

import torch

from lcfast import LCResult
from lcfast.result import CI_METHOD, bootstrap_mean_ci

# 16 points whose normal interval mean +- 2.576 s / sqrt(16) is [-0.185, 1.435] (the table)
SKEWED = [0] * 12 + [1, 2, 3, 4]


def _result(counts):
    c = torch.as_tensor(counts, dtype=torch.long)
    c = c if c.dim() == 2 else c[:, None]
    return LCResult(c, [f"s{i}#1" for i in range(c.shape[1])], torch.full((c.shape[1],), 10),
                    torch.arange(c.shape[0]), 0.1, 2)


def test_skewed_counts_interval_is_not_negative():
    t = torch.tensor(SKEWED, dtype=torch.float64)
    normal_low = t.mean() - 2.5758293035489004 * t.std() / 4
    assert round(float(normal_low), 3) == -0.185  # the data that made the old interval negative
    s = _result(SKEWED).summary()
    for row in s.rows:
        assert 0 <= row["ci_low"] <= row["mean"] <= row["ci_high"] <= max(SKEWED)
        assert row["ci_high"] > row["ci_low"]
    assert f"99% CI ({CI_METHOD})" in str(s) and CI_METHOD == "bootstrap"


def test_deterministic_and_degenerate_columns():
    counts = torch.stack([torch.tensor(SKEWED), torch.full((16,), 7)], 1)
    a, b = _result(counts).summary(), _result(counts).summary()
    assert a.rows == b.rows
    const = a.rows[1]
    assert const["ci_low"] == const["mean"] == const["ci_high"] == 7.0
    one = _result([[3]]).summary().rows[0]
    assert one["ci_low"] == one["ci_high"] == 3.0
    empty = _result(torch.zeros(0, 1, dtype=torch.long)).summary().rows[0]
    assert math.isnan(empty["ci_low"]) and math.isnan(empty["mean"])


def test_large_sample_matches_normal_interval():
    """For a large, mildly skewed sample the bootstrap interval agrees with the normal one
    (both the exact-histogram path, <= 256 distinct values, and the binned path)."""
    g = torch.Generator().manual_seed(5)
    few = torch.poisson(torch.full((20000,), 3.0), generator=g)          # ~15 distinct values
    many = torch.poisson(torch.full((20000,), 2000.0), generator=g)      # > 256 distinct: binned
    for col in (few, many):
        lo, hi = bootstrap_mean_ci(col[:, None])
        half = 2.5758293035489004 * col.std() / math.sqrt(col.numel())
        m = col.mean()
        assert abs(float(lo[0] - (m - half))) < 0.1 * float(half)
        assert abs(float(hi[0] - (m + half))) < 0.1 * float(half)
