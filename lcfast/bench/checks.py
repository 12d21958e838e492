"""The check every method passes before it is timed: its counts against the
reference (bit-identical, or the float64 tolerance rule of :mod:`lcfast.testing`)."""
from __future__ import annotations

import torch

from .prepared import Prepared

__all__ = ["CheckFailed", "check_counts"]


class CheckFailed(AssertionError):
    """A method's counts disagree with the reference beyond the float64 tolerance rule."""


def check_counts(p: Prepared, name: str, counts: torch.Tensor, sites: list[str], exact: bool) -> dict:
    """Check a method's counts against the reference (docs/design.md#testing).

    Bit-identical counts pass.  Otherwise a method that sees the reference's own
    pre-activations (``exact``) fails; any other passes when it matches the float64
    oracle within :func:`lcfast.testing.assert_counts_match` on the first ``verify``
    points.  Returns what the check established; raises :class:`CheckFailed`.
    """
    from ..testing import assert_counts_match
    ref, ref_sites = p.reference()
    if list(sites) != list(ref_sites):
        raise CheckFailed(f"{p.workload.name}/{name}: sites differ from the reference's "
                          f"({len(sites)} vs {len(ref_sites)}; first: {sites[:3]} vs {ref_sites[:3]})")
    counts = counts.cpu()
    if counts.shape == ref.shape and torch.equal(counts, ref):
        return {"check": "identical to reference", "points_checked": int(ref.shape[0])}
    if counts.shape != ref.shape:
        raise CheckFailed(f"{p.workload.name}/{name}: counts shape {tuple(counts.shape)} != {tuple(ref.shape)}")
    diff = (counts - ref).abs()
    summary = {"points_differing_from_reference": int((diff.sum(1) > 0).sum()),
               "max_abs_diff_vs_reference": int(diff.max())}
    if exact:
        raise CheckFailed(f"{p.workload.name}/{name}: counts differ from the reference although it sees the same "
                          f"pre-activations: {summary}")
    oracle = p.oracle()
    k = oracle.counts.shape[0]
    try:
        assert_counts_match(counts[:k], oracle)
    except AssertionError as e:
        raise CheckFailed(f"{p.workload.name}/{name}: float64 tolerance rule failed on the first {k} points: {e}") \
            from None
    ambiguous, crossed = int(oracle.ambiguous.sum()), int(oracle.counts.sum())
    return {"check": f"float64 rule on {k} of {ref.shape[0]} points", "points_checked": k,
            "ambiguous_fraction": ambiguous / max(1, k * int(oracle.neurons.sum())),
            "ambiguous_neurons": ambiguous, "crossed_neurons_float64": crossed, **summary}
