import json

import torch

import lcfast
from lcfast import LCResult
import zoo


def test_json_round_trip_and_summary():
    res = lcfast.local_complexity(zoo.mlp(), torch.randn(7, 20), radius=0.3, n_dirs=3, backend="reference")
    back = LCResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert torch.equal(back.counts, res.counts) and back.sites == res.sites
    assert torch.equal(back.neurons, res.neurons) and torch.equal(back.ids, res.ids)
    assert back.radius == res.radius and back.n_dirs == 3 and back.meta == res.meta
    assert torch.equal(res.total, res.counts.sum(1))
    s = res.summary()
    total = s.rows[-1]
    assert total["site"] == "total"
    assert abs(total["mean"] - res.total.double().mean().item()) < 1e-12
    assert total["ci_low"] <= total["mean"] <= total["ci_high"]
    row = s.rows[0]
    assert abs(row["density"] - row["mean"] / 33) < 1e-12
    text = str(s)
    assert "99% CI" in text and "1#1" in text


def test_save_load_concat(tmp_path):
    m = zoo.mlp()
    a = lcfast.local_complexity(m, torch.randn(3, 20), ids=[0, 1, 2], n_dirs=2, backend="reference")
    b = lcfast.local_complexity(m, torch.randn(2, 20), ids=[3, 4], n_dirs=2, backend="reference")
    c = LCResult.concat([a, b])
    c.save(tmp_path / "r.json")
    d = LCResult.load(tmp_path / "r.json")
    assert d.counts.shape == (5, 3) and d.ids.tolist() == [0, 1, 2, 3, 4]
