"""L-infinity PGD (Madry et al. 2018) for the "delayed robustness" curves.

Several radii ``eps`` are attacked in one batched run (each point is replicated
once per ``eps``).  The attack leaves the model as found (mode restored, no
parameter gradient accumulated) and never touches the global RNG: the random
start uses its own generator.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["pgd_attack", "adversarial_accuracy", "accuracy"]


def _eps_list(eps) -> list[float]:
    vals = [eps] if isinstance(eps, numbers.Real) else list(eps)
    if not vals:
        raise ValueError("eps must be a number or a non-empty sequence of numbers")
    out = []
    for e in vals:
        if isinstance(e, bool) or not isinstance(e, numbers.Real) or not math.isfinite(e) or e < 0:
            raise ValueError(f"eps values must be finite numbers >= 0, got {e!r}")
        out.append(float(e))
    return out


def _check_xy(x, y, name_x="x", name_y="y", floating=True):
    if not isinstance(x, torch.Tensor) or (floating and not x.is_floating_point()) or x.dim() < 1:
        raise TypeError(f"{name_x} must be a {'floating ' if floating else ''}tensor of shape (N, *S)")
    if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name_y} must be an integer tensor of shape ({x.shape[0]},), got "
                         f"{tuple(getattr(y, 'shape', ()))}")


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | Sequence[float],
               steps: int = 10, step_size: float | None = None, random_start: bool = True,
               clamp: tuple[float, float] | None = (0.0, 1.0), seed: int = 0,
               loss_fn=None, batch_size: int = 4096) -> torch.Tensor:
    """Projected gradient ascent of the loss in the L-infinity ball ``|delta| <= eps``.

    Each step: ``x_adv <- proj(x_adv + step_size * sign(grad))``, projection onto the
    ball of ``x`` intersected with the ``clamp`` box.

    Args:
        model: classifier ``(N, *S) -> (N, C)``; run in eval mode, restored afterwards.
        x: ``(N, *S)`` clean points.
        y: ``(N,)`` integer labels.
        eps: one radius or a sequence of ``E`` radii (attacked together).
        steps: gradient steps (>= 0; 0 returns the random start).
        step_size: per-step size; default ``2.5 * eps / steps`` (per eps).
        random_start: start uniformly inside the ball.
        clamp: ``(low, high)`` data range, or ``None``.
        seed: seed of the random start (own generator; the global RNG is untouched).
        loss_fn: ``loss_fn(logits (B, C), y (B,)) -> (B,)`` per-example loss to
            maximise; default cross-entropy.
        batch_size: rows (points x eps) per forward/backward.

    Returns:
        ``(E, N, *S)`` adversarial points (``E = 1`` for a scalar ``eps``), detached.
    """
    _check_xy(x, y)
    eps_l = _eps_list(eps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if step_size is not None and (not math.isfinite(step_size) or step_size <= 0):
        raise ValueError(f"step_size must be None or a finite number > 0, got {step_size!r}")
    if clamp is not None and not clamp[0] < clamp[1]:
        raise ValueError(f"clamp must be None or (low, high) with low < high, got {clamp!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    loss_fn = loss_fn or (lambda logits, t: F.cross_entropy(logits, t, reduction="none"))
    E, N, S = len(eps_l), x.shape[0], tuple(x.shape[1:])
    x0 = x.detach().unsqueeze(0).expand(E, *x.shape).reshape(E * N, *S)
    yy = y.unsqueeze(0).expand(E, N).reshape(E * N)
    shape_b = (E * N,) + (1,) * len(S)
    e = torch.tensor(eps_l, dtype=x.dtype, device=x.device).repeat_interleave(N).reshape(shape_b)
    if step_size is None:
        alpha = e * (2.5 / max(steps, 1))
    else:
        alpha = torch.full_like(e, float(step_size))
    lo = x0 - e
    hi = x0 + e
    if clamp is not None:
        lo = lo.clamp(min=clamp[0])
        hi = hi.clamp(max=clamp[1])
    if random_start:
        g = torch.Generator(device=x.device).manual_seed(int(seed))
        u = torch.rand(x0.shape, generator=g, device=x.device, dtype=x.dtype)
        xa = x0 + (2 * u - 1) * e
    else:
        xa = x0.clone()
    xa = torch.max(torch.min(xa, hi), lo)

    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for _ in range(steps):
            grads = []
            for s in range(0, E * N, batch_size):
                xb = xa[s:s + batch_size].detach().requires_grad_(True)
                with torch.enable_grad():
                    loss = loss_fn(model(xb), yy[s:s + batch_size]).sum()
                    (gb,) = torch.autograd.grad(loss, [xb])
                grads.append(gb)
            grad = torch.cat(grads) if grads else torch.zeros_like(xa)
            xa = xa.detach() + alpha * grad.sign()
            xa = torch.max(torch.min(xa, hi), lo)
    finally:
        for m, flag in modes:
            m.training = flag
    return xa.detach().reshape(E, N, *S)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    """Fraction of ``x`` ``(N, *S)`` (any dtype the model takes) classified as ``y`` ``(N,)``,
    in eval mode (mode restored)."""
    _check_xy(x, y, floating=False)
    if x.shape[0] == 0:
        return math.nan
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        correct = 0
        for s in range(0, x.shape[0], batch_size):
            correct += (model(x[s:s + batch_size]).argmax(-1) == y[s:s + batch_size]).sum().item()
    finally:
        for m, flag in modes:
            m.training = flag
    return correct / x.shape[0]


def adversarial_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | Sequence[float],
                         steps: int = 10, step_size: float | None = None, random_start: bool = True,
                         clamp: tuple[float, float] | None = (0.0, 1.0), seed: int = 0,
                         batch_size: int = 4096) -> dict[float, float]:
    """Accuracy under :func:`pgd_attack` for each ``eps``.

    Args: as :func:`pgd_attack`.

    Returns:
        ``{eps: accuracy}`` (floats in ``[0, 1]``).
    """
    xa = pgd_attack(model, x, y, eps, steps=steps, step_size=step_size, random_start=random_start,
                    clamp=clamp, seed=seed, batch_size=batch_size)
    eps_l = _eps_list(eps)
    N = xa.shape[1]
    return {e: accuracy(model, xa[i], y, batch_size) for i, e in enumerate(eps_l)} if N else \
        {e: math.nan for e in eps_l}
