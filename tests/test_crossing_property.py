"""Property test of the crossing rule against a direct reading of docs/design.md#definition."""
import torch
from hypothesis import given, settings, strategies as st

from lcfast.engine.reference import crossing_counts


def by_definition(pre, V):
    n = pre.shape[0] // V
    out = []
    for i in range(n):
        group = pre[i * V:(i + 1) * V].reshape(V, -1)
        c = 0
        for j in range(group.shape[1]):
            signs = {(v > 0) - (v < 0) for v in group[:, j].tolist()}
            c += len(signs) > 1
        out.append(c)
    return out


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 4), V=st.sampled_from([1, 2, 3, 6]), f=st.integers(1, 7),
       data=st.data())
def test_crossing_rule(n, V, f, data):
    vals = data.draw(st.lists(st.sampled_from([-2.0, -1e-30, -0.0, 0.0, 1e-30, 0.5, 3.0]),
                              min_size=n * V * f, max_size=n * V * f))
    pre = torch.tensor(vals, dtype=torch.float64).reshape(n * V, f)
    assert crossing_counts(pre, V).tolist() == by_definition(pre, V)
