"""The reference backend at float64 with given directions agrees exactly with an
independent implementation of docs/design.md#definition written with module hooks and
explicit sign vectors (no shared code with lcfast beyond torch)."""
import pytest
import torch
import torch.nn as nn

import lcfast
import zoo

ACTS = (nn.ReLU, nn.GELU, nn.LeakyReLU)


def independent_lc(model, x, directions, r):
    """counts (N, L) by brute force: one point at a time, every vertex's sign vector."""
    model = zoo.copy_float64(model)
    model.eval()
    per_point = []
    for i in range(x.shape[0]):
        d = directions if directions.dim() == x.dim() else directions[i]
        verts = [x[i] + r * d[p] for p in range(d.shape[0])] + [x[i] - r * d[p] for p in range(d.shape[0])]
        batch = torch.stack(verts).double()
        seen = []
        hooks = [m.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
                 for m in model.modules() if isinstance(m, ACTS)]
        try:
            with torch.no_grad():
                model(batch)
        finally:
            for h in hooks:
                h.remove()
        row = []
        for z in seen:
            s = torch.sign(z.reshape(z.shape[0], -1))  # (V, neurons) in {-1, 0, 1}
            row.append(int((s != s[0:1]).any(0).sum()))
        per_point.append(row)
    return torch.tensor(per_point)


CASES = {
    "mlp": (zoo.mlp, (20,), 5),
    "mlp-gelu": (lambda: zoo.mlp(act=nn.GELU), (20,), 5),
    "cnn": (zoo.cnn, (3, 16, 16), 4),
    "resnet18": (zoo.resnet18, (3, 32, 32), 3),
    "vit": (zoo.small_vit, (3, 32, 32), 3),
}


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("name", list(CASES))
def test_reference_matches_independent_float64(name, shared):
    make, shape, P = CASES[name]
    model = make()
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    dshape = (P, *shape) if shared else (3, P, *shape)
    directions = torch.randn(*dshape, generator=g, dtype=torch.float64)
    r = 0.01
    # Gaussian, not orthonormal, on purpose: directions are used as given
    res = lcfast.local_complexity(model, x, radius=r, directions=directions, backend="reference",
                                  dtype=torch.float64, check_directions=False)
    expect = independent_lc(model, x, directions, r)
    assert res.counts.tolist() == expect.tolist()
    assert expect.sum() > 0
