"""Grokking experiments of the paper (its Figure 1 and the modular-addition case).

:func:`run_grok` trains a preset with an :class:`~lcfast.train.tracker.LCTracker`,
checkpoints so that an interrupted run resumes (``resume=True``), and draws the
figure.  Presets (``PRESETS``):

* ``mnist-mlp``: 784-200x4-10 ReLU MLP (four hidden layers of 200) on 1,000 MNIST training images,
  batch 200, AdamW (lr 1e-3, weight decay 0.01), cross-entropy, 100,000 steps; LC on
  1,000 train / 1,000 test / 1,000 uniform random points (r = 0.005, P = 25);
  accuracy on them and PGD accuracy (eps 0.03, 0.06, 0.1; 10 steps) on the test
  points.  ``init_scale=8`` gives the paper's Figure 3 setting.
* ``modadd-transformer``: ``a + b mod 97``, one-layer transformer (d 128, 4 heads,
  GELU MLP 512), 30% of the pairs for training, full batch, AdamW (lr 1e-3,
  weight decay 1, betas 0.9/0.98); LC of the GELU block in embedding space.

Each has a ``quick`` variant that finishes in a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..datasets import load_mnist, modular_addition, random_points
from .models import mlp, modadd_transformer
from .tracker import LCTracker

__all__ = ["GrokConfig", "PRESETS", "preset", "run_grok", "save_weights", "weights_path"]


@dataclasses.dataclass
class GrokConfig:
    """Settings of one grokking run (see ``PRESETS``)."""

    task: str = "mnist-mlp"            # "mnist-mlp" | "modadd-transformer"
    steps: int = 100_000
    batch_size: int = 200              # 0: full batch
    lr: float = 1e-3
    weight_decay: float = 0.01
    optimizer: str = "adamw"           # "adamw" (decoupled) | "adam" (L2 in the gradient)
    betas: tuple[float, float] = (0.9, 0.999)
    loss: str = "ce"                   # "ce" | "mse" (one-hot targets, Omnigrok style)
    seed: int = 0
    # model
    width: int = 200
    depth: int = 4                     # hidden layers (lcfast.train.models.mlp): 784-200x4-10
    act: str = "relu"
    init_scale: float = 1.0
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    # data
    n_train: int = 1000
    n_test: int = 1000
    n_random: int = 1000
    modulus: int = 97
    train_frac: float = 0.3
    data_root: str | None = None
    # measurement
    radius: float = 0.005
    extra_radii: tuple[float, ...] = ()   # also logged (plot them with `lcfast plot --radius`)
    n_dirs: int = 25
    n_logs: int = 100
    n_lc: int | None = None            # points per LC set (None: all of n_train / n_test / n_random)
    adv_eps: tuple[float, ...] = (0.03, 0.06, 0.1)
    adv_steps: int = 10
    backend: str = "auto"
    device: str = "cpu"
    ckpt_every: int = 5000
    # keep the model's weights at every logged step in out_dir/weights/step-NNNNNNN.pt, a
    # plain state_dict that `lcfast measure --weights` (and lcfast.cli.build_model) loads
    # for the same model name (mnist-mlp: the CLI's Flatten + MLP layout); ~1.1 MB each
    # for the 784-200x4-10 MLP, ~100 files per run
    keep_weights: bool = True
    # CPU threads for the training steps (None: leave torch's setting).  The MNIST
    # step (batch 200 through an MLP of width 200) is too small to split: on the shared
    # 2-core box it took 4.6 ms with 1 thread vs 114 ms with 2 (oversubscribed OpenMP;
    # measured with the earlier 784-200x3-10 preset, not re-measured for 784-200x4-10).
    # Measurements (LC, PGD) run with torch's original thread count.
    train_threads: int | None = None
    # CPU threads for the whole run (None: torch's default).  The presets use 1: on the
    # shared 2-core box (load ~7) one mnist-mlp --quick log (LC of 3 x 1,000 points +
    # PGD) took 16 s with 2 threads and ~3 s with 1; pass --threads 2 on a quiet machine.
    threads: int | None = None


PRESETS: dict[str, dict[str, Any]] = {
    "mnist-mlp": dict(task="mnist-mlp", threads=1, extra_radii=(0.05,)),
    "mnist-mlp/quick": dict(task="mnist-mlp", steps=4000, n_logs=25, threads=1),
    "modadd-transformer": dict(task="modadd-transformer", steps=20_000, batch_size=0, lr=1e-3, weight_decay=1.0,
                               betas=(0.9, 0.98), modulus=97, train_frac=0.3, n_lc=500, n_random=500,
                               radius=0.005, n_dirs=25, n_logs=80, adv_eps=(), ckpt_every=2000, threads=1),
    # a + b mod 31 with half of the pairs, d 32, lr 1e-2: memorised by step ~250,
    # test accuracy 1.0 by ~1,500 (measured: 30 s of training on 1 busy core)
    "modadd-transformer/quick": dict(task="modadd-transformer", steps=3000, batch_size=0, lr=1e-2,
                                     weight_decay=1.0, betas=(0.9, 0.98), modulus=31, train_frac=0.5,
                                     d_model=32, d_mlp=128, n_lc=None, n_random=480, radius=0.02,
                                     extra_radii=(0.005,), n_dirs=25, n_logs=30, adv_eps=(), ckpt_every=1000,
                                     threads=1),
}


def preset(name: str, quick: bool = False, **overrides) -> GrokConfig:
    """The :class:`GrokConfig` of preset ``name`` (``"mnist-mlp"`` or
    ``"modadd-transformer"``), its quick variant, with ``overrides`` applied
    (``None`` values are ignored)."""
    base = [k for k in PRESETS if "/" not in k]
    if name not in base:
        raise ValueError(f"preset must be one of {base}, got {name!r}")
    d = dict(PRESETS[name + "/quick" if quick else name])
    fields = {f.name for f in dataclasses.fields(GrokConfig)}
    for k, v in overrides.items():
        if k not in fields:
            raise ValueError(f"unknown setting {k!r}")
        if v is not None:
            d[k] = v
    return GrokConfig(**d)


# ---------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    return dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate())


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def _save_ckpt(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


class _Batches:
    """Epoch-wise shuffled mini-batches of ``range(n)`` from the global torch RNG
    (``batch_size`` 0: full batch in order)."""

    def __init__(self, n: int, batch_size: int):
        self.n, self.bs = n, batch_size
        self.perm, self.pos = None, n

    def next(self) -> torch.Tensor | None:
        if self.bs <= 0 or self.bs >= self.n:
            return None
        if self.pos + self.bs > self.n:
            self.perm, self.pos = torch.randperm(self.n), 0
        idx = self.perm[self.pos:self.pos + self.bs]
        self.pos += self.bs
        return idx

    def state(self):
        return dict(perm=self.perm, pos=self.pos)

    def load(self, s):
        self.perm, self.pos = s["perm"], s["pos"]


def _loss(cfg: GrokConfig, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if cfg.loss == "ce":
        return F.cross_entropy(logits, y)
    if cfg.loss == "mse":
        return F.mse_loss(logits, F.one_hot(y, logits.shape[-1]).to(logits.dtype))
    raise ValueError(f"loss must be 'ce' or 'mse', got {cfg.loss!r}")


def _optimizer(cfg: GrokConfig, params):
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    raise ValueError(f"optimizer must be 'adamw' or 'adam', got {cfg.optimizer!r}")


def _build(cfg: GrokConfig):
    """Model, training tensors and tracker kwargs of a task."""
    dev = torch.device(cfg.device)
    if cfg.task == "mnist-mlp":
        xtr, ytr = load_mnist(cfg.data_root, train=True, n=cfg.n_train)
        xte, yte = load_mnist(cfg.data_root, train=False, n=cfg.n_test)
        xtr, xte = xtr.flatten(1).to(dev), xte.flatten(1).to(dev)
        ytr, yte = ytr.to(dev), yte.to(dev)
        xrd = random_points(cfg.n_random, (784,), seed=cfg.seed + 12345).to(dev)
        model = mlp(784, cfg.width, cfg.depth, 10, cfg.act, cfg.init_scale).to(dev)
        k = cfg.n_lc
        sets = {"train": xtr[:k], "test": xte[:k], "random": xrd[:k]}
        track = dict(points=sets, labels={"train": ytr[:k], "test": yte[:k]},
                     adversarial=(dict(set="test", eps=list(cfg.adv_eps), steps=cfg.adv_steps, clamp=(0.0, 1.0))
                                  if cfg.adv_eps else None))
        return model, (xtr, ytr), track
    if cfg.task == "modadd-transformer":
        xtr, ytr, xte, yte = modular_addition(cfg.modulus, cfg.train_frac, seed=cfg.seed)
        xtr, ytr, xte, yte = xtr.to(dev), ytr.to(dev), xte.to(dev), yte.to(dev)
        model = modadd_transformer(cfg.modulus, cfg.d_model, cfg.n_heads, cfg.d_mlp).to(dev)
        k = cfg.n_lc
        g = torch.Generator().manual_seed(cfg.seed + 12345)
        z = torch.randn(cfg.n_random, 3, cfg.d_model, generator=g).to(dev)
        sets = {"train": xtr[:k], "test": xte[:k], "random": z}

        def lc_input(name, x):
            # tokens -> their (current) embeddings; "random": Gaussian points at the
            # current embedding scale
            if name == "random":
                return x * model.embed(xtr[:256]).std()
            return model.embed(x)

        # accuracy and LC on the first n_lc pairs of each split
        track = dict(points=sets, labels={"train": ytr[:k], "test": yte[:k]}, lc_model=model.embedded,
                     lc_input=lc_input)
        return model, (xtr, ytr), track
    raise ValueError(f"task must be 'mnist-mlp' or 'modadd-transformer', got {cfg.task!r}")


def run_grok(cfg: GrokConfig, out_dir: str | os.PathLike, resume: bool = False, plot: bool = True,
             progress: bool = True, name: str | None = None) -> dict[str, Any]:
    """Train ``cfg`` with LC tracking; write ``log.jsonl``, ``config.json``, ``ckpt.pt``
    and ``<name>.png`` into ``out_dir``.

    Args:
        cfg: the settings.
        out_dir: output folder (created).
        resume: continue from ``out_dir/ckpt.pt`` and the existing log (no record is
            lost or duplicated); ``False`` starts afresh (an existing log is replaced).
        plot: draw the PNG at the end.
        progress: tqdm bar on stderr.
        name: PNG file stem (default ``grok-<task>``).

    Returns:
        dict with ``log``, ``png``, ``wall_seconds`` (this invocation),
        ``train_seconds``, ``log_seconds`` (time in the tracker), ``final`` (last record).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    threads0 = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        return _run(cfg, out, resume, plot, progress, name, t_start)
    finally:
        torch.set_num_threads(threads0)


def _run(cfg, out, resume, plot, progress, name, t_start):
    log_path, ckpt_path = out / "log.jsonl", out / "ckpt.pt"
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    model, (xtr, ytr), track = _build(cfg)
    opt = _optimizer(cfg, model.parameters())
    batches = _Batches(xtr.shape[0], cfg.batch_size)
    start = 0
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        if ck["config"] != dataclasses.asdict(cfg):
            raise ValueError(f"resume: {ckpt_path} was written with different settings; use another out_dir")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        batches.load(ck["batches"])
        _set_rng_state(ck["rng"])
        start = ck["step"]
    elif log_path.exists():  # a fresh start (or nothing to resume from): a new log
        log_path.unlink()
    with open(out / "config.json", "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)

    radii = [cfg.radius] + [r for r in cfg.extra_radii if r != cfg.radius]
    tracker = LCTracker(model, log_path=log_path, radius=radii, n_dirs=cfg.n_dirs, seed=cfg.seed,
                        total_steps=cfg.steps, n_logs=cfg.n_logs, backend=cfg.backend, resume=True,
                        meta=dict(config=dataclasses.asdict(cfg), title=_title(cfg)), **track)
    bar = None
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415
        bar = tqdm(total=cfg.steps, initial=start, desc=f"grok {cfg.task}", unit="step",
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)
    train_s = 0.0
    log_s = 0.0
    last_loss = math.nan
    model.train()
    threads = torch.get_num_threads()
    train_threads = threads if cfg.device != "cpu" or not cfg.train_threads else int(cfg.train_threads)
    for step in range(start, cfg.steps + 1):
        t0 = time.perf_counter()
        if tracker.should_log(step):
            torch.set_num_threads(threads)
        rec = tracker.maybe_log(step, loss=last_loss)
        torch.set_num_threads(train_threads)
        if rec is not None and cfg.keep_weights:
            save_weights(cfg, model, weights_path(out, step))
        if rec is not None:
            log_s += time.perf_counter() - t0
            if bar is not None:
                post = {f"lc_{k}": f"{v[f'{cfg.radius:g}']['mean']:.2f}" for k, v in rec["lc"].items()}
                post.update({f"acc_{k}": f"{v:.3f}" for k, v in rec.get("acc", {}).items()})
                bar.set_postfix(post, refresh=False)
        if step > start and (step % cfg.ckpt_every == 0 or step == cfg.steps):
            _save_ckpt(ckpt_path, model=model.state_dict(), opt=opt.state_dict(), batches=batches.state(),
                       rng=_rng_state(), step=step, config=dataclasses.asdict(cfg))
        if step == cfg.steps:
            break
        t0 = time.perf_counter()
        idx = batches.next()
        xb, yb = (xtr, ytr) if idx is None else (xtr[idx], ytr[idx])
        loss = _loss(cfg, model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last_loss = loss.item()
        train_s += time.perf_counter() - t0
        if bar is not None:
            bar.update(1)
    torch.set_num_threads(threads)
    if bar is not None:
        bar.close()
    tracker.close()
    png = None
    if plot:
        from ..plot import plot_log  # noqa: PLC0415
        png = plot_log(log_path, out / f"{name or 'grok-' + cfg.task}.png")
    wall = time.perf_counter() - t_start
    summary = dict(log=str(log_path), png=str(png) if png else None, wall_seconds=wall, train_seconds=train_s,
                   log_seconds=log_s, final=tracker.records[-1] if tracker.records else None)
    with open(out / "summary.json", "w") as f:
        json.dump({k: v for k, v in summary.items() if k != "final"}, f, indent=1)
    return summary


def weights_path(out_dir: str | os.PathLike, step: int) -> Path:
    """Where :func:`run_grok` keeps the weights of ``step`` (``keep_weights``)."""
    return Path(out_dir) / "weights" / f"step-{int(step):07d}.pt"


def save_weights(cfg: GrokConfig, model: nn.Module, path: str | os.PathLike) -> None:
    """Save ``model``'s weights as a plain state_dict in the layout of the CLI's model of
    the same name (``lcfast measure --model mnist-mlp --weights PATH`` loads it): the
    mnist-mlp run trains on flattened images, the CLI's ``mnist-mlp`` is
    ``Sequential(Flatten(), mlp)``, so keys get the CLI's ``"1."`` prefix.  Tensors are
    cloned to the CPU."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if cfg.task == "mnist-mlp":
        state = nn.Sequential(nn.Flatten(), model).state_dict()
    _save_ckpt(path, **{k: v.detach().cpu().clone() for k, v in state.items()})


def _title(cfg: GrokConfig) -> str:
    if cfg.task == "mnist-mlp":
        return (f"MNIST MLP {cfg.depth}x{cfg.width} {cfg.act}, {cfg.n_train} train pts, init x{cfg.init_scale:g}, "
                f"{cfg.optimizer} wd {cfg.weight_decay:g}, r={cfg.radius:g}, P={cfg.n_dirs}")
    return (f"a+b mod {cfg.modulus} transformer d={cfg.d_model}, {cfg.train_frac:.0%} train, "
            f"{cfg.optimizer} wd {cfg.weight_decay:g}, r={cfg.radius:g}, P={cfg.n_dirs} (embedding space)")
