"""Cases whose answer follows from the definition alone (docs/design.md#testing)."""
import pytest
import torch
import torch.nn as nn

import lcfast


@pytest.mark.parametrize("P", [1, 3, 25])
@pytest.mark.parametrize("act", [nn.ReLU, nn.LeakyReLU, nn.GELU])
def test_zero_bias_origin_crosses_every_first_layer_neuron(P, act):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(40, 37), act(), nn.Linear(37, 21), act(), nn.Linear(21, 3))
    for m in mlp:
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    x = torch.zeros(4, 40)
    res = lcfast.local_complexity(mlp, x, radius=1e-3, n_dirs=P, backend="reference")
    # every first-layer hyperplane passes through x: +-r*W v_p are of opposite signs
    assert res.counts[:, 0].tolist() == [37] * 4
    assert res.neurons.tolist() == [37, 21]


@pytest.mark.parametrize("P", [1, 2])
def test_one_neuron_crossed_iff_within_reach(P):
    """w.x + b crossed  <=>  |w.x + b| <= r * max_p |w.v_p|."""
    torch.manual_seed(1)
    lin = nn.Linear(2, 1)
    model = nn.Sequential(lin, nn.ReLU())
    w, b = lin.weight.detach()[0].double(), lin.bias.detach()[0].double()
    r = 0.05
    n_per = 8
    ids = torch.arange(2 * n_per)
    frames = lcfast.random_frames((2,), P, seed=3, ids=ids)  # (N, P, 2), what the API draws
    reach = r * (frames @ w).abs().amax(1)  # (N,)
    # points at signed distance s * reach / |w| from the hyperplane along w
    normal = w / w.norm()
    x0 = -b * w / (w @ w)  # on the hyperplane
    s = torch.tensor([0.5, 0.9, -0.5, -0.9, 1.1, 1.5, -1.1, -2.0]).double().repeat(2)
    x = x0 + (s * reach / w.norm())[:, None] * normal
    expected = ((x @ w + b).abs() <= reach).long()
    assert expected.tolist() == (s.abs() <= 1).long().tolist()  # the margin is clear both sides
    res = lcfast.local_complexity(model, x.float(), radius=r, n_dirs=P, seed=3, ids=ids, backend="reference",
                                  dtype=torch.float64)
    assert res.counts[:, 0].tolist() == expected.tolist()


def test_three_valued_sign_rule():
    """Exact zeros: all zero -> not crossed; zero beside non-zero -> crossed."""
    from lcfast.engine.reference import crossing_counts
    pre = torch.tensor([
        [0.0, 0.0, 1.0, -1.0, 0.0],  # point 0, vertex 0
        [0.0, 2.0, 1.0, -3.0, -1.0],  # point 0, vertex 1
    ])
    # neuron: (0,0) same -> no; (0,2) -> yes; (1,1) -> no; (-1,-3) -> no; (0,-1) -> yes
    assert crossing_counts(pre, 2).tolist() == [2]


def test_identity_site_counts_linear_crossings():
    """sites= module outputs: a Linear's output neuron is crossed iff the polytope
    straddles its hyperplane; with given axis directions this is checkable by hand."""
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
        lin.bias.copy_(torch.tensor([-0.5, 0.0]))
    model = nn.Sequential(lin)
    x = torch.tensor([[0.45, 1.0, 0.0], [0.7, -0.02, 0.0]], dtype=torch.float64)
    dirs = torch.eye(3, dtype=torch.float64)  # shared frame
    res = lcfast.local_complexity(model, x, radius=0.1, directions=dirs, sites=["0"], backend="reference")
    # point 0: neuron 0 value -0.05 +- 0.1 -> crossed; neuron 1 value 1.0 +- 0.1 -> not
    # point 1: neuron 0 value 0.2 +- 0.1 -> not; neuron 1 value -0.02 +- 0.1 -> crossed
    assert res.counts[:, 0].tolist() == [1, 1]
    assert res.sites == ["0"]
