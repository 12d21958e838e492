"""PGD L-inf: checked on a linear model, where the optimal perturbation is known."""
import hypothesis.strategies as st
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings

from lcfast.train.pgd import accuracy, adversarial_accuracy, pgd_attack


def _linear(D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = nn.Linear(D, 2).double()
    with torch.no_grad():
        m.weight.copy_(torch.randn(2, D, generator=g, dtype=torch.float64))
        m.bias.copy_(torch.randn(2, generator=g, dtype=torch.float64))
    return m


def _optimum(m, x, y, eps, lo=0.0, hi=1.0):
    """For 2 classes, cross-entropy grows as the margin (w_y - w_o).x + (b_y - b_o) shrinks,
    so the worst point of the box [x - eps, x + eps] ∩ [lo, hi] moves each coordinate
    against the sign of d = w_y - w_o, as far as allowed."""
    W, b = m.weight.detach(), m.bias.detach()
    d = W[y] - W[1 - y]                         # (N, D)
    xa = torch.where(d > 0, (x - eps).clamp(min=lo), (x + eps).clamp(max=hi))
    margin = (d * xa).sum(1) + b[y] - b[1 - y]
    return xa, margin


def test_pgd_reaches_the_known_optimum_for_several_eps():
    torch.manual_seed(0)
    m = _linear()
    x = torch.rand(40, 6, dtype=torch.float64)
    x[:5] = 0.0                                 # on the boundary: clamping must bite
    x[5:10] = 1.0
    y = torch.randint(0, 2, (40,))
    eps = [0.0, 0.05, 0.2, 0.5]
    xa = pgd_attack(m, x, y, eps, steps=20, seed=3)
    assert xa.shape == (4, 40, 6)
    for i, e in enumerate(eps):
        ref, _ = _optimum(m, x, y, e)
        torch.testing.assert_close(xa[i], ref, rtol=0, atol=1e-12)
    # without a random start, too; and a scalar eps gives E = 1
    xa1 = pgd_attack(m, x, y, 0.2, steps=5, random_start=False)
    torch.testing.assert_close(xa1[0], _optimum(m, x, y, 0.2)[0], rtol=0, atol=1e-12)


def test_adversarial_accuracy_matches_hand_computed_margins():
    m = _linear(D=8, seed=1)
    x = torch.rand(200, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = m(x).argmax(1)                          # clean accuracy 1
    assert accuracy(m, x, y) == 1.0
    eps = [0.01, 0.1, 0.3]
    acc = adversarial_accuracy(m, x, y, eps, steps=10)
    for e in eps:
        _, margin = _optimum(m, x, y, e)
        assert acc[e] == pytest.approx((margin > 0).double().mean().item())
    assert acc[0.01] >= acc[0.1] >= acc[0.3]


def test_pgd_leaves_model_and_global_rng_alone():
    m = nn.Sequential(nn.Linear(5, 7), nn.Dropout(0.5), nn.ReLU(), nn.Linear(7, 3))
    m.train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    x, y = torch.rand(9, 5), torch.randint(0, 3, (9,))
    rng = torch.get_rng_state()
    a = pgd_attack(m, x, y, [0.1, 0.2], steps=3, seed=5)
    b = pgd_attack(m, x, y, [0.1, 0.2], steps=3, seed=5)
    assert torch.equal(a, b)                    # eval mode: dropout off, own generator
    assert torch.equal(torch.get_rng_state(), rng)
    assert m.training and all(l.training for l in m)
    assert all(p.grad is None for p in m.parameters())
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())


@settings(max_examples=25, deadline=None)
@given(eps=st.lists(st.floats(0, 0.5), min_size=1, max_size=3), steps=st.integers(0, 4),
       seed=st.integers(0, 10), clamp=st.sampled_from([(0.0, 1.0), (-1.0, 2.0), None]))
def test_pgd_stays_in_ball_and_box(eps, steps, seed, clamp):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.rand(5, 4)
    y = torch.randint(0, 3, (5,))
    xa = pgd_attack(m, x, y, eps, steps=steps, clamp=clamp, seed=seed)
    for i, e in enumerate(eps):
        assert (xa[i] - x).abs().max() <= e + 1e-6
        if clamp is not None:
            assert xa[i].min() >= clamp[0] and xa[i].max() <= clamp[1]


def test_pgd_bad_arguments():
    m = nn.Linear(3, 2)
    x, y = torch.rand(4, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="eps"):
        pgd_attack(m, x, y, -0.1)
    with pytest.raises(ValueError, match="eps"):
        pgd_attack(m, x, y, [])
    with pytest.raises(ValueError, match="steps"):
        pgd_attack(m, x, y, 0.1, steps=-1)
    with pytest.raises(ValueError, match="y must"):
        pgd_attack(m, x, y[:2], 0.1)
    with pytest.raises(TypeError, match="x must"):
        pgd_attack(m, x.long(), y, 0.1)
    with pytest.raises(ValueError, match="clamp"):
        pgd_attack(m, x, y, 0.1, clamp=(1, 0))
