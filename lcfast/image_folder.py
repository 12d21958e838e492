"""A folder of image files as a map-style data set of ImageNet-style inputs.

For :func:`lcfast.measure_dataset` with ``workers > 0``: decoding and resizing run in
``DataLoader`` worker processes, one file per item.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from .datasets import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ImageFiles"]


class ImageFiles(Dataset):
    """Every image file under ``root`` (recursively, sorted by relative path).

    The order is that of ``torchvision.datasets.ImageFolder`` for a ``root/<class>/``
    layout (ImageNet validation), and also covers a flat folder.  Item ``i`` is the
    point of ``files[i]``; its id in :func:`lcfast.measure_dataset` is ``i``.

    Args:
        root: the folder.
        size: side of the square output: the shorter side is resized to ``size`` and
            the centre ``size x size`` crop kept.
        normalize: subtract the ImageNet mean and divide by its std (else in ``[0, 1]``).
        transform: replaces the default pipeline: a callable from a ``PIL.Image``
            (RGB) to a tensor.

    Example:
        >>> ds = ImageFiles("imagenet/val")              # doctest: +SKIP
        >>> ds[0].shape                                   # doctest: +SKIP
        torch.Size([3, 224, 224])
    """

    def __init__(self, root: str | os.PathLike, size: int = 224, normalize: bool = True,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"root must be a folder of images, got {str(root)!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        self.files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()),
                            key=lambda p: p.relative_to(root).parts)
        if not self.files:
            raise ValueError(f"root {str(root)!r} holds no image file ({', '.join(IMG_EXTENSIONS)})")
        steps = [v2.PILToTensor(), v2.Resize(size, antialias=True), v2.CenterCrop(size),
                 v2.ToDtype(torch.float32, scale=True)]
        if normalize:
            steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
        self.transform = transform or v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        """``(3, size, size)`` float32 point of ``files[i]``."""
        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB"))
