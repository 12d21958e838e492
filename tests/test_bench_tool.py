"""The benchmark tooling at toy size: workload config, checks before timing, the
report script, ``lcfast bench`` and the pytest-benchmark suite (no timing asserted)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lcfast import bench

ROOT = Path(__file__).resolve().parents[1]

TINY = """
[defaults]
radius = 0.005
n_dirs = 3
seed = 0
dtype = "float32"

[workloads.tiny-mlp]
model = "mnist-mlp"
data = "random"
shape = [784]
n = { cpu = 5, gpu = 7 }
chunk = { cpu = 2, gpu = 7 }
rounds = 1
verify = 5

[workloads.gpu-only]
model = "mnist-mlp"
data = "random"
shape = [784]
n = { cpu = 0, gpu = 3 }
skip = "not at CPU size"
"""


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY)
    return p


def test_repo_config_loads_at_both_sizes():
    cpu, gpu = bench.load_workloads(None, "cpu"), bench.load_workloads(None, "gpu")
    assert list(cpu) == list(gpu)
    for name in ("mnist-mlp", "mnist-mlp-track", "cifar-cnn", "resnet18-224", "resnet50-224", "vit-b16-224"):
        assert name in cpu
        assert gpu[name].n > 0 and gpu[name].n_dirs == 25 and gpu[name].radius == 0.005
    # the one switch scales sizes
    assert (cpu["resnet18-224"].n, gpu["resnet18-224"].n) == (2, 1000)
    assert gpu["resnet50-224"].n == 1000
    assert gpu["mnist-mlp-track"].n == 21000
    assert gpu["vit-b16-224"].n == 256 and cpu["vit-b16-224"].n == 1
    assert cpu["mnist-mlp-track"].n == 0 and cpu["mnist-mlp-track"].skip


def test_config_errors(tmp_path, tiny, monkeypatch):
    with pytest.raises(ValueError, match="size"):
        bench.load_workloads(tiny, "tpu")
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace("n = { cpu = 5, gpu = 7 }", "n = { gpu = 7 }"))
    with pytest.raises(ValueError, match="no value for size 'cpu'"):
        bench.load_workloads(bad, "cpu")
    monkeypatch.setenv(bench.CONFIG_ENV, str(tiny))
    assert bench.find_config() == tiny
    monkeypatch.setenv(bench.CONFIG_ENV, str(tmp_path / "gone.toml"))
    with pytest.raises(FileNotFoundError, match=bench.CONFIG_ENV):  # never silently the default
        bench.find_config()
    monkeypatch.delenv(bench.CONFIG_ENV)
    with pytest.raises(FileNotFoundError, match="--config"):
        bench.find_config(tmp_path / "missing.toml")
    # the default is package data inside lcfast/bench (what an installed wheel has)
    assert bench.find_config() == bench.DEFAULT_CONFIG
    assert bench.DEFAULT_CONFIG.parent == Path(bench.__file__).resolve().parent
    w = bench.load_workloads(tiny, "cpu")["gpu-only"]
    assert w.n == 0 and w.skip == "not at CPU size"
    with pytest.raises(ValueError, match="not run at size"):
        bench.prepare(w, "cpu")


def test_workload_model_and_points_come_from_the_zoo(tiny):
    from lcfast import zoo
    w = bench.load_workloads(tiny, "cpu")["tiny-mlp"]
    p = bench.prepare(w, "cpu")
    ref = zoo.build_model("mnist-mlp", seed=w.seed)
    assert str(p.model) == str(ref)
    assert all(torch.equal(a, b) for a, b in zip(p.model.state_dict().values(), ref.state_dict().values()))
    lin = [m for m in p.model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(784, 200)] + [(200, 200)] * 3 + [(200, 10)]
    x, _ = zoo.build_points("random", 5, (784,), seed=w.seed)
    assert torch.equal(p.x, x)


def test_methods_check_before_timing(tiny):
    w = bench.load_workloads(tiny, "cpu")["tiny-mlp"]
    p = bench.prepare(w, "cpu")
    assert p.x.shape == (5, 784) and p.frames.shape == (5, 3, 784)
    ref = bench.prepare_method(p, "reference")
    counts, sites = p.reference()
    # mnist-mlp = Flatten + 784-200x4-10 (lcfast.zoo): four ReLU sites of 200 neurons
    assert counts.shape == (5, 4) and sites == ["1.1#1", "1.3#1", "1.5#1", "1.7#1"]
    paper = bench.prepare_method(p, "paper")
    assert paper.info["check"] == "identical to reference"
    c2, s2 = paper.timed()
    assert torch.equal(c2, counts) and s2 == sites
    bare = bench.prepare_method(p, "bare-forward")
    assert bare.timed() is None and ref.timed()[1] == sites
    # the compile baseline's module (here eager) counts exactly like the reference
    wrapper = bench.HookCountingForward(p.model, p.V)
    from lcfast.neighborhood import vertices
    got = wrapper(vertices(p.x, p.frames, w.radius))
    wrapper.close()
    assert torch.equal(got, counts)
    # a wrong answer never reaches timing
    with pytest.raises(bench.CheckFailed, match="same pre-activations"):
        bench.check_counts(p, "paper", counts + (counts == 0).long(), sites, exact=True)
    wrong = counts.clone()
    wrong[0, 0] += 5
    with pytest.raises(bench.CheckFailed, match="float64 tolerance rule"):
        bench.check_counts(p, "x", wrong, sites, exact=False)
    with pytest.raises(bench.CheckFailed, match="sites differ"):
        bench.check_counts(p, "x", counts, ["a", "b", "c"], exact=False)
    from lcfast import _extension
    backends = bench.available_methods("cpu")[len(bench.BASELINES):]
    assert ("native" in backends) == _extension.available()
    for b in backends:
        m = bench.prepare_method(p, b)
        got, got_sites = m.timed()
        assert got_sites == sites and m.info["points_checked"] == 5
        if m.info["check"] == "identical to reference":
            assert torch.equal(got, counts)
        else:  # what the check claims: the float64 rule holds on all 5 points
            assert m.info["check"] == "float64 rule on 5 of 5 points", m.info
            assert m.info["max_abs_diff_vs_reference"] == int((got - counts).abs().max()) > 0
            from lcfast.testing import assert_counts_match
            assert_counts_match(got, p.oracle())


def _report_input():
    def b(method, median, order, **extra):
        return {"group": "w", "name": f"w[{method}]", "stats": {"median": median, "rounds": 3},
                "extra_info": {"workload": "w", "method": method, "n": 10, "n_dirs": 25, "radius": 0.005,
                               "workload_order": 0, "method_order": order, "check": "identical to reference",
                               "data": "uniform random", **extra}}
    return {"machine_info": {"lcfast": bench.conditions("cpu", "cpu")},
            "benchmarks": [b("reference", 2.0, 1), b("bare-forward", 1.0, 0), b("torch.compile", 4.0, 2),
                           b("native", 0.5, 4),
                           {"group": "op", "name": "other file", "stats": {"median": 1.0}, "extra_info": {}}],
            "lcfast_failures": [{"workload": "w", "method": "paper", "error": "CheckFailed: boom"}],
            "lcfast_skipped": [{"workload": "big", "reason": "GPU only"}]}


def test_report_table(tmp_path):
    data = _report_input()
    text = bench.format_report(data)
    lines = [ln for ln in text.splitlines() if ln.startswith("| w |")]
    assert [ln.split("|")[3].strip() for ln in lines] == ["bare-forward", "reference", "torch.compile", "native"]
    native = lines[-1].split("|")
    # speedups = t_other / t, time / bare = t / t_bare, points/s = N / t (computed, not stored)
    assert native[5].strip() == "20" and native[6].strip() == "4.00x" and native[7].strip() == "8.00x"
    assert native[8].strip() == "0.50x"
    assert "Device:" in text and "torch " + torch.__version__ in text and "load average" in text
    assert "w/paper: not in the table: CheckFailed: boom" in text and "big: not run: GPU only" in text
    # the script, two files merged
    a, b2 = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(data))
    other = _report_input()
    for x in other["benchmarks"]:
        if x.get("extra_info"):
            x["extra_info"]["workload"] = "v"
            x["extra_info"]["workload_order"] = 1
    b2.write_text(json.dumps(other))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), str(a), str(b2),
                          "--out", str(tmp_path / "t.md"), "--json-out", str(tmp_path / "m.json")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.count("| w |") == 4 and out.stdout.count("| v |") == 4
    assert (tmp_path / "t.md").read_text() == out.stdout
    assert len(json.loads((tmp_path / "m.json").read_text())["benchmarks"]) == 10
    # a workload killed at its limit leaves an empty JSON: the others are still reported
    (tmp_path / "killed.json").write_text("")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), str(a), str(tmp_path / "killed.json")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.count("| w |") == 4 and "killed.json: left out, unreadable" in out.stdout
    assert subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), str(tmp_path / "killed.json")],
                          capture_output=True, text=True).returncode == 1


def test_lcfast_bench_command(tiny, tmp_path, capsys):
    import argparse
    parser = argparse.ArgumentParser(prog="lcfast")
    sub = parser.add_subparsers()
    bench.add_parser(sub)
    out = tmp_path / "run.json"
    args = parser.parse_args(["bench", "--workload", "tiny-mlp", "--device", "cpu", "--config", str(tiny),
                              "--no-compile", "--rounds", "2", "--json", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    for m in ("bare-forward", "reference", "paper"):
        assert f"| tiny-mlp | 5 | {m} |" in text
    assert "(2r)" in text and "Device:" in text
    data = json.loads(out.read_text())
    rows = {b["extra_info"]["method"]: b for b in data["benchmarks"]}
    assert rows["reference"]["extra_info"]["speedup_vs_reference"] == pytest.approx(1.0)
    assert rows["paper"]["extra_info"]["check"] == "identical to reference"
    assert len(rows["paper"]["stats"]["data"]) == 2
    # through the lead's CLI, and the skip of a workload with n = 0
    from lcfast.cli import main
    assert main(["bench", "--workload", "gpu-only", "--device", "cpu", "--config", str(tiny)]) == 0
    assert "gpu-only: not run: not at CPU size" in capsys.readouterr().out
    assert main(["bench", "--workload", "nope", "--config", str(tiny)]) == 2
    assert main(["bench", "--list", "--config", str(tiny), "--device", "cpu"]) == 0


def test_pytest_suite_tiny(tiny, tmp_path):
    out = tmp_path / "suite.json"
    env = dict(os.environ, LCFAST_BENCH_CONFIG=str(tiny), LCFAST_BENCH_DEVICE="cpu")
    env.pop("LCFAST_BENCH_SIZE", None)
    r = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "benchmarks" / "test_bench_workloads.py"),
                        "-q", "-p", "no:cacheprovider", "--benchmark-only", "--lc-no-compile",
                        f"--benchmark-json={out}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads(out.read_text())
    mine = [b for b in data["benchmarks"] if b["extra_info"].get("workload")]
    assert {b["group"] for b in mine} == {"tiny-mlp"}
    methods = [b["extra_info"]["method"] for b in mine]
    assert methods[:3] == ["bare-forward", "reference", "paper"]
    for b in mine:
        e = b["extra_info"]
        assert e["device"] == "cpu" and e["dtype"] == "float32" and e["torch"] == torch.__version__
        assert e["points_per_s"] > 0 and e["speedup_vs_reference"] > 0 and e["time_vs_bare_forward"] > 0
    assert data["machine_info"]["lcfast"]["load_start"] is not None
    assert any(s["workload"] == "gpu-only" for s in data["lcfast_skipped"])


@pytest.mark.skipif(os.environ.get("LCFAST_WHEEL_TEST") != "1",
                    reason="builds a wheel and a venv (measured 176 s at load 14 on 2 cores): set LCFAST_WHEEL_TEST=1")
def test_lcfast_bench_from_an_installed_wheel(tmp_path):
    """``lcfast bench`` from a wheel installed in a fresh venv, run outside the source
    tree: the workload file is package data (it used to raise FileNotFoundError)."""
    import venv
    env = dict(os.environ, LCFAST_NO_EXT="1")  # the pure-Python part is what is tested here
    env.pop(bench.CONFIG_ENV, None)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "whl")], check=True, env=env, timeout=600)
    wheel = next((tmp_path / "whl").glob("lcfast-*.whl"))
    venv.create(tmp_path / "venv", system_site_packages=True, with_pip=True)
    py = tmp_path / "venv" / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   env=env, timeout=300)
    run = tmp_path / "elsewhere"
    run.mkdir()
    code = "import lcfast.bench as b; print(b.find_config())"
    where = subprocess.run([str(py), "-c", code], cwd=run, env=env, capture_output=True, text=True, check=True)
    assert str(tmp_path / "venv") in where.stdout and where.stdout.strip().endswith("lcfast/bench/workloads.toml")
    lcfast_exe = str(tmp_path / "venv" / "bin" / "lcfast")
    assert subprocess.run([lcfast_exe, "bench", "--workload", "mnist-mlp", "--help"], cwd=run, env=env,
                          capture_output=True, timeout=300).returncode == 0
    r = subprocess.run([lcfast_exe, "bench", "--workload", "mnist-mlp", "--device", "cpu", "--n", "2", "--rounds", "1",
                        "--no-compile", "--no-paper", "--backends"], cwd=run, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| mnist-mlp | 2 | reference |" in r.stdout and "| mnist-mlp | 2 | bare-forward |" in r.stdout
