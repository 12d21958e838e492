"""Points to measure for the CLI: natural images that install offline, random points,
and a user's own files.  (Training data sets -- MNIST, CIFAR-10, modular addition --
are in :mod:`lcfast.train.data`.)"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["natural_images", "random_points", "load_path", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Photographs shipped inside the scikit-image wheel (no download at run time).
_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field",
                   "retina", "camera", "moon", "coins", "grass", "gravel", "brick", "cell", "page")


def _skimage_photos():
    try:
        import skimage.io
        import skimage.data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("data='images' needs scikit-image (pip install scikit-image), "
                           "which ships its sample photographs offline") from e
    root = os.path.dirname(skimage.data.__file__)
    out = []
    for name in _SKIMAGE_PHOTOS:
        for ext in (".png", ".jpg"):
            p = os.path.join(root, name + ext)
            if os.path.exists(p):
                out.append((name, skimage.io.imread(p)))
                break
    if not out:  # pragma: no cover
        raise RuntimeError(f"no sample photographs found in {root}")
    return out


def _to_chw(img: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(img)).float()
    if t.dim() == 2:
        t = t.unsqueeze(-1).expand(*t.shape, 3)
    t = t[..., :3].permute(2, 0, 1)
    return t / (255.0 if t.max() > 1.5 else 1.0)


def natural_images(n: int, size: int = 224, normalize: bool = True, seed: int = 0) -> torch.Tensor:
    """``n`` natural photographs (scikit-image's samples), as ImageNet-style inputs.

    The first image of each photo is a centre crop; when ``n`` exceeds the number of
    photographs, further points are random crops (reproducible from ``seed``).

    Returns:
        ``(n, 3, size, size)`` float32, normalised with ImageNet mean/std when
        ``normalize``, else in ``[0, 1]``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    photos = [_to_chw(img) for _, img in _skimage_photos()]
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        _, h, w = img.shape
        side = min(h, w)
        if i < len(photos):
            top, left, crop = (h - side) // 2, (w - side) // 2, side
        else:
            crop = int(side * (0.5 + 0.5 * torch.rand((), generator=g).item()))
            top = int(torch.randint(0, h - crop + 1, (), generator=g))
            left = int(torch.randint(0, w - crop + 1, (), generator=g))
        patch = img[:, top:top + crop, left:left + crop].unsqueeze(0)
        out.append(F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    x = torch.cat(out) if out else torch.zeros(0, 3, size, size)
    x = x.clamp(0, 1)
    if normalize:
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x.contiguous()


def random_points(n: int, shape, low: float = 0.0, high: float = 1.0, seed: int = 0) -> torch.Tensor:
    """``(n, *shape)`` points uniform in ``[low, high]``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g) * (high - low) + low


def load_path(path: str, n: int | None = None, size: int | None = None, normalize: bool = True) -> torch.Tensor:
    """Points from a file or folder.

    * ``.pt`` / ``.pth``: a saved tensor ``(N, *S)`` (or a dict with key ``"x"``);
    * ``.npy``: an array ``(N, *S)``;
    * a folder: its image files (sorted), as ``(N, 3, size, size)`` like
      :func:`natural_images` (``size`` default 224).
    """
    if os.path.isdir(path):
        from PIL import Image
        files = sorted(f for f in os.listdir(path)
                       if f.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")))
        if not files:
            raise ValueError(f"data: folder {path!r} holds no image files")
        files = files[:n] if n is not None else files
        size = size or 224
        imgs = []
        for f in files:
            t = _to_chw(np.asarray(Image.open(os.path.join(path, f)).convert("RGB")))
            imgs.append(F.interpolate(t.unsqueeze(0), size=(size, size), mode="bilinear", antialias=True))
        x = torch.cat(imgs).clamp(0, 1)
        if normalize:
            x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return x
    if not os.path.exists(path):
        raise ValueError(f"data: no such file or folder {path!r}")
    if path.endswith((".pt", ".pth")):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        x = obj["x"] if isinstance(obj, dict) else obj
    elif path.endswith(".npy"):
        x = torch.from_numpy(np.load(path))
    else:
        raise ValueError(f"data: {path!r} is not a folder, .pt/.pth or .npy file")
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"data: {path!r} must hold a tensor of shape (N, *S)")
    x = x.float()
    return x[:n] if n is not None else x
