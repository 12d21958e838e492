"""Named models and point sets: the one definition that ``lcfast measure`` and the
benchmarks (``lcfast bench``, ``benchmarks/``) both build from.

Models (:func:`build_model`), always built under ``torch.manual_seed(seed)`` inside
a forked RNG (the same name and seed give the same weights in every process, and the
caller's global RNG is left untouched):

* ``mnist-mlp``: ``Sequential(Flatten(), mlp())``, the paper's MNIST MLP
  784-200x4-10 (four hidden ReLU layers of width 200,
  :func:`lcfast.train.models.mlp` with ``depth=4`` hidden layers); takes
  ``(N, 1, 28, 28)`` or ``(N, 784)``.  ``lcfast grok mnist-mlp`` trains the same
  ``mlp()``.
* ``paper-cnn``: :func:`lcfast.train.models.paper_cnn` (5 conv + 2 linear, 32x32).
* any torchvision classification model name (``resnet18``, ``vit_b_16``, ...): random
  init, nothing downloaded.
* ``package.module:attr``: an ``nn.Module`` instance or a callable returning one.

Points (:func:`build_points`): ``mnist``, ``images`` (scikit-image photographs),
``random`` (uniform in ``[0, 1]``) or a path (:func:`lcfast.datasets.load_path`).
"""
from __future__ import annotations

import importlib
import math
import os
import warnings
from typing import Callable

import torch
import torch.nn as nn

__all__ = ["PAPER_MODELS", "build_model", "input_shape", "build_points", "DATA_KINDS"]


def _mnist_mlp() -> nn.Module:
    from .train.models import mlp
    return nn.Sequential(nn.Flatten(), mlp(in_dim=784, width=200, depth=4, out_dim=10, act="relu"))


def _paper_cnn() -> nn.Module:
    from .train.models import paper_cnn
    return paper_cnn(in_channels=3, num_classes=10, batchnorm=False)


#: name -> (factory, input shape of one point)
PAPER_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mnist-mlp": (_mnist_mlp, (1, 28, 28)),
    "paper-cnn": (_paper_cnn, (3, 32, 32)),
}

#: point sets :func:`build_points` knows by name (anything else is a path)
DATA_KINDS = ("mnist", "images", "random")


def _from_module_attr(spec: str) -> nn.Module:
    mod, attr = spec.split(":", 1)
    obj = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    model = obj if isinstance(obj, nn.Module) else obj()
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {spec!r} did not give an nn.Module")
    return model


def build_model(spec: str, weights: str | os.PathLike | None = None, seed: int = 0) -> nn.Module:
    """A model from its name (see the module docstring), random-initialised under
    ``torch.manual_seed(seed)`` (global RNG state restored afterwards).

    Args:
        spec: ``mnist-mlp``, ``paper-cnn``, a torchvision model name or ``module:attr``.
        weights: a local ``state_dict`` file to load (``{"state_dict": ...}`` accepted).
        seed: seed of the random initialisation.

    Returns:
        the model (on the CPU, float32, as its constructor leaves it).
    """
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"model must be a non-empty string, got {spec!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if ":" in spec:
            model = _from_module_attr(spec)
        elif spec in PAPER_MODELS:
            model = PAPER_MODELS[spec][0]()
        else:
            import torchvision
            try:
                model = torchvision.models.get_model(spec, weights=None)
            except ValueError as e:
                raise ValueError(f"model: unknown model {spec!r} (a torchvision model name, "
                                 f"{', '.join(PAPER_MODELS)}, or module:attr)") from e
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    return model


def input_shape(spec: str, size: int = 224) -> tuple[int, ...] | None:
    """The shape ``S`` of one point for model ``spec``: fixed for the paper's models,
    ``(3, size, size)`` for torchvision models, ``None`` (unknown) for ``module:attr``."""
    if spec in PAPER_MODELS:
        return PAPER_MODELS[spec][1]
    if ":" in spec:
        return None
    return (3, size, size)


def _natural_shape(kind: str, size: int) -> tuple[int, ...]:
    return (1, 28, 28) if kind == "mnist" else (3, size, size)


def build_points(kind: str, n: int, shape: tuple[int, ...] | None = None, seed: int = 0, size: int = 224,
                 fallback: bool = False) -> tuple[torch.Tensor, str]:
    """Points ``(n, *shape)`` (float32, CPU) and a one-line description of them.

    Args:
        kind: ``mnist`` (training images, :func:`lcfast.datasets.load_mnist`, in
            ``[0, 1]``), ``images`` (scikit-image photographs, ImageNet-normalised;
            ``shape`` must be ``(3, s, s)``), ``random`` (uniform in ``[0, 1]``, from
            ``seed``) or a path (a ``.pt``/``.npy`` tensor ``(N, *S)`` or an image
            folder resized to ``size``; ``shape`` is then ignored).
        n: number of points.
        shape: shape of one point (``None``: the kind's own, ``(1, 28, 28)`` for mnist,
            ``(3, size, size)`` otherwise).  MNIST is reshaped to it (784 elements).
        seed: seed of random points and of random photo crops.
        size: image side for ``images``/folders when ``shape`` is ``None``.
        fallback: when MNIST or the photographs are not installed, return random
            points (uniform for mnist, standard normal for images) and say so in the
            description instead of raising (the benchmarks run anywhere; the CLI does
            not guess).

    Returns:
        ``(x, description)`` with ``x`` of shape ``(n, *shape)``.
    """
    from . import datasets
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"points: n must be an int >= 1, got {n!r}")
    if kind not in DATA_KINDS:
        side = shape[-1] if shape is not None and len(shape) == 3 else size
        x = datasets.load_path(kind, n=n, size=side)
        return x, f"file {kind}"
    shape = tuple(shape) if shape is not None else _natural_shape(kind, size)
    if kind == "random":
        return datasets.random_points(n, shape, seed=seed), "uniform random [0,1]"
    if kind == "mnist":
        if math.prod(shape) != 784:
            raise ValueError(f"data 'mnist' gives 28x28 images (784 values); the model takes points of shape {shape}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore" if fallback else "default")
                x, _ = datasets.load_mnist(train=True, n=n)
            return x.reshape(n, *shape).contiguous(), "MNIST train images"
        except (ImportError, FileNotFoundError, ValueError) as e:
            if not fallback:
                raise
            why = f"no {n} MNIST images installed ({type(e).__name__})"
        return datasets.random_points(n, shape, seed=seed), f"uniform random [0,1] ({why})"
    # images
    if len(shape) != 3 or shape[0] != 3 or shape[1] != shape[2]:
        raise ValueError(f"data 'images' gives (3, s, s) photographs; the model takes points of shape {shape}")
    try:
        return (datasets.natural_images(n, size=shape[1], seed=seed),
                "scikit-image photos (ImageNet-normalised)")
    except (ImportError, RuntimeError) as e:
        if not fallback:
            raise
        why = f"no scikit-image photos ({e})"
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), f"standard normal random ({why})"
