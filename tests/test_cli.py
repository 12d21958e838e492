import json
import subprocess
import sys

import torch

from lcfast.cli import main


def test_measure_cli_writes_json_and_png(tmp_path, capsys):
    out = tmp_path / "res.json"
    rc = main(["measure", "--model", "resnet18", "--data", "images", "--points", "2", "--size", "64",
               "--dirs", "3", "--out", str(out), "--backend", "reference", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "layer1.0.relu#2" in text and "99% CI" in text and "total" in text
    d = json.loads(out.read_text())
    assert len(d["counts"]) == 2 and len(d["sites"]) == 17
    png = tmp_path / "res.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_measure_module_attr_and_tensor_file(tmp_path):
    x = torch.rand(3, 20)
    torch.save(x, tmp_path / "x.pt")
    out = tmp_path / "o.json"
    rc = main(["--model", "zoo:mlp", "--data", str(tmp_path / "x.pt"), "--points", "3", "--dirs", "2",
               "--radius", "0.1", "--out", str(out), "--no-progress", "--backend", "reference"])
    assert rc == 0
    assert len(json.loads(out.read_text())["counts"]) == 3


def test_cli_error_is_clear(tmp_path, capsys):
    rc = main(["measure", "--model", "no_such_model", "--out", str(tmp_path / "x.json")])
    assert rc == 2
    assert "unknown model" in capsys.readouterr().err


def test_python_dash_m_help():
    r = subprocess.run([sys.executable, "-m", "lcfast", "measure", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--radius" in r.stdout


def test_measure_paper_models_on_random_data(tmp_path):
    for model in ("mnist-mlp", "paper-cnn"):
        out = tmp_path / f"{model}.json"
        rc = main(["--model", model, "--data", "random", "--points", "2", "--dirs", "3",
                   "--out", str(out), "--no-progress"])
        assert rc == 0
        assert len(json.loads(out.read_text())["counts"]) == 2


def _measure_twice(tmp_path, capsys, *extra):
    outs = []
    for i in range(2):
        out = tmp_path / f"r{i}.json"
        torch.manual_seed(100 + i)  # as two processes would start: different global RNG states
        rc = main(["--model", "mnist-mlp", "--data", "random", "--points", "3", "--dirs", "4", "--radius", "0.1",
                   "--out", str(out), "--no-progress", "--backend", "reference", *extra])
        assert rc == 0
        text = capsys.readouterr().out
        # everything but the timing line and the file names
        outs.append(([ln for ln in text.splitlines() if "LC time" not in ln and "wrote" not in ln],
                     json.loads(out.read_text())))
    return outs


def test_measure_seeds_the_model_from_seed(tmp_path, capsys):
    """Two runs of the same command print the same counts (issue 11 item 3): the
    random-init model is built under torch.manual_seed(--seed)."""
    (text0, d0), (text1, d1) = _measure_twice(tmp_path, capsys)
    assert text0 == text1 and d0["counts"] == d1["counts"]
    assert any("random init under torch.manual_seed(0)" in ln for ln in text0)
    assert d0["meta"]["model_seed"] == 0 and "manual_seed(0)" in d0["meta"]["model_init"]
    assert sum(map(sum, d0["counts"])) > 0  # non-trivial counts, else equality proves nothing
    (_, e0), _ = _measure_twice(tmp_path, capsys, "--seed", "1")
    assert e0["counts"] != d0["counts"] and e0["meta"]["model_seed"] == 1


def test_measure_points_must_be_positive(tmp_path, capsys):
    assert main(["--model", "mnist-mlp", "--data", "random", "--points", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--points" in capsys.readouterr().err
