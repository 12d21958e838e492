"""measure_series: three tiny checkpoints measured on the same points and frames, one table."""
import csv
import json

import pytest
import torch

import lcfast
from lcfast.series import COLUMNS, checkpoint_files, load_state_dict, measure_series, save_table
import zoo

KW = dict(radius=0.3, n_dirs=3, backend="reference")


def _checkpoints(tmp_path):
    """Steps 5, 40, 300 (files named out of order), one in lcfast grok's {"model": ...} layout."""
    models = {s: zoo.mlp(seed=s) for s in (5, 40, 300)}
    torch.save(models[5].state_dict(), tmp_path / "step5.pt")
    torch.save({"model": models[40].state_dict(), "step": 40}, tmp_path / "step40.pt")
    torch.save(models[300].state_dict(), tmp_path / "step300.pt")
    return models


def test_series_equals_each_checkpoint_measured_alone(tmp_path):
    models = _checkpoints(tmp_path)
    assert [s for s, _ in checkpoint_files(str(tmp_path / "step*.pt"))] == [5, 40, 300]
    x = {"train": torch.randn(9, 20, generator=torch.Generator().manual_seed(1)),
         "test": torch.randn(7, 20, generator=torch.Generator().manual_seed(2))}
    model = zoo.mlp(seed=99)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = measure_series(model, str(tmp_path / "step*.pt"), x, block_size=4, **KW)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    expect = []
    for step, m in models.items():
        for name, pts in x.items():
            s = lcfast.local_complexity(m, pts, **KW).summary()
            expect += [{"step": step, "points": name, "n": len(pts), **r} for r in s.rows]
    assert rows == [{k: r[k] for k in COLUMNS} for r in expect]
    assert len(rows) == 3 * 2 * 4 and [r["site"] for r in rows].count("total") == 6  # 3 ReLU sites + total
    assert [(r["step"], r["points"]) for r in rows[::4]] == [(s, n) for s in (5, 40, 300) for n in ("train", "test")]

    save_table(rows, tmp_path / "t.csv")
    back = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert len(back) == len(rows) and float(back[0]["mean"]) == rows[0]["mean"]
    save_table(rows, tmp_path / "t.json")
    assert json.load(open(tmp_path / "t.json")) == rows


def test_series_bad_input(tmp_path):
    _checkpoints(tmp_path)
    with pytest.raises(ValueError, match="no file matches"):
        checkpoint_files(str(tmp_path / "nothing*.pt"))
    torch.save(zoo.mlp().state_dict(), tmp_path / "last.pt")
    with pytest.raises(ValueError, match="no step number"):
        checkpoint_files(str(tmp_path / "*.pt"))
    with pytest.raises(ValueError, match="step 5 does not fit"):
        measure_series(zoo.mlp(width=8), [(5, str(tmp_path / "step5.pt"))], torch.randn(3, 20), **KW)
    torch.save([1, 2], tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="neither a state_dict"):
        load_state_dict(tmp_path / "bad.pt")
    with pytest.raises(TypeError, match="checkpoint"):
        measure_series(zoo.mlp(), [(0, zoo.mlp().state_dict())], torch.randn(3, 20), checkpoint="x", **KW)
