"""`lcfast measure --checkpoints 'ckpt/step*.pt'`: three state_dicts saved in the CLI's
model layout (lcfast.zoo.build_model, as `lcfast grok` saves them) load into the series,
and the table equals each checkpoint measured alone; plus the plot of LC over steps."""
import csv
import json

import torch

import lcfast
from lcfast import zoo
from lcfast.cli import main
from lcfast.series import COLUMNS

ARGS = ["--model", "mnist-mlp", "--data", "random", "--points", "5", "--dirs", "3", "--radius", "0.1",
        "--backend", "reference", "--block-size", "2", "--no-progress"]
STEPS = (0, 30, 1000)


def _save(tmp_path):
    (tmp_path / "ckpt").mkdir()
    models = {s: zoo.build_model("mnist-mlp", seed=s + 1) for s in STEPS}
    for s, m in models.items():
        torch.save(m.state_dict(), tmp_path / "ckpt" / f"step{s:06d}.pt")
    return models


def test_checkpoint_series_cli_table_and_plot(tmp_path, capsys):
    models = _save(tmp_path)
    out = tmp_path / "series.csv"
    assert main(["measure", *ARGS, "--checkpoints", str(tmp_path / "ckpt" / "step*.pt"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("step ") == 3 and "wrote" in text
    x, _ = zoo.build_points("random", 5, zoo.input_shape("mnist-mlp"), seed=0)
    expect = []
    for s, m in models.items():  # each checkpoint measured alone, same points and frames
        summ = lcfast.local_complexity(m, x, radius=0.1, n_dirs=3, backend="reference").summary()
        expect += [{"step": s, "points": "random", "n": 5, **r} for r in summ.rows]
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == list(COLUMNS) and len(rows) == len(expect) == 3 * 5  # 4 ReLU sites + total
    for got, want in zip(rows, expect):
        assert int(got["step"]) == want["step"] and got["site"] == want["site"] and got["points"] == "random"
        assert float(got["mean"]) == want["mean"] and float(got["ci_high"]) == want["ci_high"]
    totals = [float(r["mean"]) for r in rows if r["site"] == "total"]
    assert len(set(totals)) > 1  # the checkpoints differ, so the rows do
    assert (tmp_path / "series.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    js = tmp_path / "series.json"
    assert main(["measure", *ARGS, "--checkpoints", str(tmp_path / "ckpt" / "step*.pt"), "--out", str(js),
                 "--plot", str(tmp_path / "p.png")]) == 0
    assert [{k: r[k] for k in ("step", "site", "mean")} for r in json.loads(js.read_text())] == \
        [{k: r[k] for k in ("step", "site", "mean")} for r in expect]
    assert (tmp_path / "p.png").exists()


def test_checkpoint_series_cli_errors(tmp_path, capsys):
    _save(tmp_path)
    pattern = str(tmp_path / "ckpt" / "step*.pt")
    assert main(["measure", *ARGS, "--checkpoints", pattern, "--weights", "w.pt",
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "--checkpoints and --weights" in capsys.readouterr().err
    assert main(["measure", *ARGS, "--checkpoints", str(tmp_path / "none*.pt"), "--out", str(tmp_path / "x.json")]) == 2
    assert "no file matches" in capsys.readouterr().err
    assert main(["measure", *ARGS, "--model", "paper-cnn", "--checkpoints", pattern,
                 "--out", str(tmp_path / "x.json")]) == 2  # mnist-mlp weights into paper-cnn
    assert "does not fit the model" in capsys.readouterr().err


def test_plot_series_refuses_no_rows(tmp_path):
    import pytest
    from lcfast.plot import plot_series
    with pytest.raises(ValueError, match="rows"):
        plot_series([], tmp_path / "x.png")
