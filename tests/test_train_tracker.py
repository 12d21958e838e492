"""LCTracker: schedule, no disturbance (bitwise), crash-safe resume; grok runs and CLI."""
import argparse
import json
import random
import struct
import warnings

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings

from lcfast.train import LCTracker, log_schedule, read_log
from lcfast.train import cli as train_cli
from lcfast.train import experiments


@settings(max_examples=50, deadline=None)
@given(total=st.integers(0, 10**6), n=st.integers(2, 300))
def test_log_schedule(total, n):
    s = log_schedule(total, n)
    assert s == sorted(set(s)) and s[0] == 0 and s[-1] == total
    assert len(s) <= n + 1 and all(0 <= v <= total for v in s)
    if total >= 10 * n:  # log-spaced: the first half of the logs lies in the first 10% of steps
        assert sum(v <= total // 10 for v in s) > len(s) // 2 - 1


def test_log_schedule_bad():
    with pytest.raises(ValueError, match="total_steps"):
        log_schedule(-1)
    with pytest.raises(ValueError, match="n_logs"):
        log_schedule(10, 1)


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(40, 12, generator=g), torch.randint(0, 3, (40,), generator=g)
    return model, x, y


def _train(model, x, y, steps, tracker=None, log_between_backward_and_step=False):
    """Uses the global torch, numpy and python RNGs, so a tracker that touched any of
    them would change the weights."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps + 1):
        if tracker is not None:
            tracker.maybe_log(step)
        if step == steps:
            break
        idx = torch.randperm(40)[:8 + int(np.random.randint(0, 4)) + random.randint(0, 2)]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        if tracker is not None and log_between_backward_and_step:
            grads = [p.grad.clone() for p in model.parameters()]
            tracker.log(10_000 + step)
            assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
        opt.step()
    return opt


@pytest.mark.parametrize("between", [False, True])
def test_tracker_does_not_disturb_training_bitwise(tmp_path, between):
    results = []
    for use in (False, True):
        model, x, y = _setup()
        np.random.seed(0)
        random.seed(0)
        tracker = None
        if use:
            rnd = torch.rand(10, 12, generator=torch.Generator().manual_seed(5))
            tracker = LCTracker(model, {"train": x, "random": rnd}, labels={"train": y},
                                adversarial=dict(set="train", eps=[0.05, 0.1], steps=3), radius=[0.01, 0.1],
                                n_dirs=3, schedule=range(0, 20, 3), log_path=tmp_path / f"l{between}.jsonl")
        opt = _train(model, x, y, 12, tracker, between)
        assert model.training and all(m.training for m in model.modules())
        results.append((model.state_dict(), opt.state_dict()["state"], torch.get_rng_state(),
                        np.random.get_state()[1].copy(), random.getstate()))
        if use:
            assert [r["step"] for r in tracker.records][:5] == [0, 3, 6, 9, 12] or between
    (w0, o0, r0, n0, p0), (w1, o1, r1, n1, p1) = results
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    for i in o0:
        for k in o0[i]:
            assert torch.equal(torch.as_tensor(o0[i][k]), torch.as_tensor(o1[i][k]))
    assert torch.equal(r0, r1) and np.array_equal(n0, n1) and p0 == p1


def test_tracker_record_contents(tmp_path):
    model, x, y = _setup()
    tr = LCTracker(model, {"train": x, "test": x[:7]}, labels={"test": y[:7]}, radius=0.05, n_dirs=2,
                   schedule=[0, 5], log_path=tmp_path / "a.jsonl", adversarial=dict(set="test", eps=0.1))
    assert tr.maybe_log(1) is None
    rec = tr.maybe_log(0, loss=1.5)
    assert rec["step"] == 0 and set(rec["lc"]) == {"train", "test"}
    d = rec["lc"]["train"]["0.05"]
    assert d["ci_low"] <= d["mean"] <= d["ci_high"] and set(d["sites"]) == {"1#1", "4#1"}
    assert set(rec["acc"]) == {"test"} and set(rec["adv_acc"]["test"]) == {"0.1"}
    assert rec["extra"] == {"loss": 1.5}
    assert tr.maybe_log(0) is None  # once per step
    # the same numbers as a direct measurement with the tracker's ids
    import lcfast
    direct = lcfast.local_complexity(model, x[:7], radius=0.05, n_dirs=2, ids=torch.arange(40, 47))
    assert rec["lc"]["test"]["0.05"]["mean"] == pytest.approx(direct.total.double().mean().item())
    meta, recs = read_log(tmp_path / "a.jsonl")
    assert meta["n_dirs"] == 2 and recs == [json.loads(json.dumps(rec))]


def test_tracker_bad_arguments():
    model, x, y = _setup()
    with pytest.raises(ValueError, match="points"):
        LCTracker(model, {})
    with pytest.raises(ValueError, match="total_steps"):
        LCTracker(model, {"a": x})
    with pytest.raises(ValueError, match="radius"):
        LCTracker(model, {"a": x}, schedule=[0], radius=0)
    with pytest.raises(ValueError, match="labels"):
        LCTracker(model, {"a": x}, schedule=[0], labels={"b": y})
    with pytest.raises(ValueError, match="adversarial"):
        LCTracker(model, {"a": x}, schedule=[0], adversarial=dict(set="a", eps=[0.1]))


def test_tracker_resume_after_crash_no_loss_no_duplicates(tmp_path):
    path = tmp_path / "log.jsonl"
    model, x, y = _setup()
    sched = log_schedule(60, 12)

    def make():
        return LCTracker(model, {"train": x}, labels={"train": y}, n_dirs=2, radius=0.05, total_steps=60,
                         n_logs=12, log_path=path)

    tr = make()
    for s in range(0, 31):
        tr.maybe_log(s)
    n_before = len(tr.records)
    # a crash in the middle of a write leaves a torn line
    with open(path, "a") as f:
        f.write('{"step": 31, "lc": {"tra')
    # restart from a checkpoint taken at step 20: steps 20..30 come again
    tr2 = make()
    assert len(tr2.records) == n_before and tr2.logged == {s for s in sched if s <= 30}
    for s in range(20, 61):
        tr2.maybe_log(s)
    meta, recs = read_log(path)
    steps = [r["step"] for r in recs]
    assert steps == sched  # every scheduled step exactly once, in order
    assert "meta" not in recs[0] and meta["sets"] == ["train"]
    # a complete record torn just before its newline is kept (repaired), not lost
    with open(path, "a") as f:
        f.write(json.dumps({"step": 999, "lc": {}}))
    tr3 = make()
    assert 999 in tr3.logged
    assert open(path).read().endswith("\n")
    # a corrupt line in the middle is an error, not silently dropped
    lines = open(path).read().splitlines()
    lines[2] = "{not json"
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 3"):
        make()


def test_tracker_fresh_start_and_tensorboard(tmp_path):
    model, x, _ = _setup()
    path = tmp_path / "l.jsonl"
    LCTracker(model, {"a": x}, n_dirs=2, schedule=[0], log_path=path).maybe_log(0)
    try:
        import torch.utils.tensorboard  # noqa: F401
        have_tb = True
    except ImportError:
        have_tb = False
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        tr = LCTracker(model, {"a": x}, n_dirs=2, schedule=[0], log_path=path, resume=False,
                       tensorboard_dir=tmp_path / "tb")
    assert tr.records == [] and read_log(path)[1] == []
    tr.maybe_log(0)
    tr.close()
    if have_tb:
        assert any((tmp_path / "tb").iterdir())
    else:
        assert any("TensorBoard" in str(x.message) for x in w)


# ---------------------------------------------------------------------------
# grok experiments end to end (tiny settings, tiny IDX files)
# ---------------------------------------------------------------------------


def _idx(arr):
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


@pytest.fixture
def mnist_root(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 40)):
        lab = rng.integers(0, 10, n).astype(np.uint8)
        img = (rng.random((n, 28, 28)) < 0.2).astype(np.uint8) * 255
        img[np.arange(n), lab * 2, :] = 255  # a learnable stripe per class
        (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(img))
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(lab))
    return tmp_path


def _tiny(mnist_root, **kw):
    base = dict(steps=30, width=16, n_train=40, n_test=20, n_random=10, batch_size=10, n_dirs=3, n_logs=8,
                adv_steps=2, ckpt_every=10, data_root=str(mnist_root), extra_radii=(0.05,))
    base.update(kw)
    return experiments.preset("mnist-mlp", **base)


def _strip(recs):
    return [{k: v for k, v in r.items() if k not in ("elapsed", "log_seconds")} for r in recs]


def test_run_grok_resume_equals_uninterrupted(tmp_path, mnist_root, monkeypatch):
    cfg = _tiny(mnist_root)
    full = experiments.run_grok(cfg, tmp_path / "full", plot=False, progress=False)
    _, ref = read_log(full["log"])
    assert [r["step"] for r in ref] == log_schedule(30, 8)
    assert set(ref[-1]["adv_acc"]["test"]) == {"0.03", "0.06", "0.1"}
    assert set(ref[-1]["lc"]["train"]) == {"0.005", "0.05"}

    calls = {"n": 0}
    orig = experiments._Batches.next

    def crashing(self):
        calls["n"] += 1
        if calls["n"] == 18:
            raise KeyboardInterrupt("simulated crash")
        return orig(self)

    monkeypatch.setattr(experiments._Batches, "next", crashing)
    with pytest.raises(KeyboardInterrupt):
        experiments.run_grok(cfg, tmp_path / "crash", plot=False, progress=False)
    monkeypatch.setattr(experiments._Batches, "next", orig)
    _, partial = read_log(tmp_path / "crash" / "log.jsonl")
    assert partial[-1]["step"] == 17  # logged past the last checkpoint (step 10)
    res = experiments.run_grok(cfg, tmp_path / "crash", resume=True, plot=True, progress=False)
    _, got = read_log(res["log"])
    assert _strip(got) == _strip(ref)  # nothing lost, nothing duplicated, same numbers
    assert (tmp_path / "crash" / "grok-mnist-mlp.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="different settings"):
        experiments.run_grok(_tiny(mnist_root, seed=1), tmp_path / "crash", resume=True, plot=False,
                             progress=False)


def test_modadd_transformer_preset_runs(tmp_path):
    cfg = experiments.preset("modadd-transformer", quick=True, steps=6, modulus=7, d_model=8, d_mlp=12,
                             n_lc=10, n_random=5, n_dirs=2, n_logs=4, radius=0.1)
    res = experiments.run_grok(cfg, tmp_path, plot=False, progress=False)
    _, recs = read_log(res["log"])
    assert [r["step"] for r in recs] == log_schedule(6, 4)
    assert set(recs[0]["lc"]) == {"train", "test", "random"} and "adv_acc" not in recs[0]
    assert list(recs[0]["lc"]["train"]["0.1"]["sites"]) == ["blocks.0.mlp.1#1"]


def test_cli_parsers_and_plot(tmp_path, mnist_root):
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd")
    train_cli.add_parsers(sub)
    a = ap.parse_args(["grok", "mnist-mlp", "--quick", "--init-scale", "8"])
    assert a.func is train_cli._grok and a.init_scale == 8.0 and a.quick
    res = experiments.run_grok(_tiny(mnist_root, steps=5, n_logs=4), tmp_path / "r", plot=False, progress=False)
    out = tmp_path / "fig.png"
    assert train_cli.main(["plot", res["log"], "-o", str(out), "--sites"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert train_cli.main(["plot", res["log"], "-o", str(out), "--radius", "0.05"]) == 0
    assert train_cli.main(["plot", res["log"], "--radius", "0.7"]) == 1
    assert train_cli.main(["plot", str(tmp_path / "missing.jsonl")]) == 2
    assert train_cli.main(["grok", "mnist-mlp", "--data-root", str(tmp_path / "none"), "--out",
                           str(tmp_path / "x"), "--no-progress"]) == 1
