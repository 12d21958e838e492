"""Per-point frames (lcfast.frames): keyed on (seed, id, index) only; the native
counter_normal op against the torch recipe and an independent float64 evaluation;
orthonormality of CholeskyQR2 on the sizes lcfast draws."""
from __future__ import annotations

import math

import pytest
import torch

import lcfast
from lcfast import _extension, frames, neighborhood
from lcfast.frames import (FRAMES_VERSION, counter_normal, counter_normal_torch, frame_keys, gaussian_frames,
                           orthonormal_rows, random_frames, shared_frame)

native = pytest.mark.skipif(not _extension.has_kernel("counter_normal", "cpu"),
                            reason=f"lcfast._C not loaded: {_extension.ERROR}")


def _splitmix_py(z: int) -> int:
    """Independent pure-Python splitmix64 finaliser (the reference for the tensor code)."""
    m = (1 << 64) - 1
    z &= m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def _recipe_f64(key: int, j: int) -> float:
    """Value j of the stream of `key`, from Python ints and float64 math (u1, u2 exact)."""
    h = _splitmix_py(key + (j // 2 + 1) * 0x9E3779B97F4A7C15)
    u1 = float(torch.tensor(((h >> 40) + 0.5), dtype=torch.float32)) * 2.0 ** -24  # (k + 0.5) rounded to float32
    u2 = float(torch.tensor(((h & 0xFFFFFF) + 0.5), dtype=torch.float32)) * 2.0 ** -24
    ang = float(torch.tensor(2 * math.pi, dtype=torch.float32)) * u2
    r = math.sqrt(-2 * math.log(u1))
    return r * (math.cos(ang) if j % 2 == 0 else math.sin(ang))


SEED, IDS = 12345, [0, 1, 2**40 + 7, 999, -1]


def test_integer_hash_matches_python():
    base = _splitmix_py(SEED * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019)
    want = [_splitmix_py(i * 0x9E3779B97F4A7C15 + base) for i in IDS]
    got = [k & ((1 << 64) - 1) for k in frame_keys(SEED, IDS).tolist()]
    assert got == want


@pytest.mark.parametrize("path", ["torch", pytest.param("native", marks=native)])
def test_stream_matches_float64_recipe(path):
    """Both float paths against the recipe evaluated in float64 from the exact integers:
    within float32 rounding of log/sqrt/cos/sin (|g| < 6, so 1e-6 is ~16 float32 ulps
    of the largest values)."""
    keys = frame_keys(SEED, IDS)
    g = counter_normal_torch(keys, 41) if path == "torch" else torch.ops.lcfast.counter_normal(keys, 41)
    assert g.shape == (len(IDS), 41) and g.dtype == torch.float32
    for r, key in enumerate(keys.tolist()):
        for j in (0, 1, 2, 17, 39, 40):
            assert abs(g[r, j].item() - _recipe_f64(key & ((1 << 64) - 1), j)) < 1e-6, (r, j)


@native
def test_native_equals_torch_recipe_within_ulps():
    """The native kernel (Cephes polynomials) and the torch fallback (ATen's log/cos/sin)
    draw the same stream: the integer hash is the same (any difference there would give
    unrelated values), the floats differ in the last bits.  Measured on 1000 x 19,600
    values (seed 0): max |diff| 9.5e-7 = 3.5e-7 * max(1, |g|), 68% bit-identical,
    at most 4 float32 ulps where |g| > 1e-3 (7 near zero)."""
    keys = frame_keys(0, torch.arange(300))
    for count in (784 * 25, 1, 3, 7, 513):
        a = torch.ops.lcfast.counter_normal(keys, count)
        b = counter_normal_torch(keys, count)
        d = (a - b).abs() / b.abs().clamp_min(1)
        assert d.max().item() <= 4e-7, count
        ulps = (a.view(torch.int32).long() - b.view(torch.int32).long()).abs()
        assert ulps[b.abs() > 1e-3].max().item() <= 8, count


def _fma32(a, b, c):
    """Correctly rounded float32 a * b + c (numpy has no fma): the product is exact in
    float64, the float64 sum is made round-to-odd with its exact error (TwoSum), and
    rounding that to float32 is correct rounding (53 >= 24 + 2 bits)."""
    import numpy as np
    p = a.astype(np.float64) * b.astype(np.float64)
    c = np.broadcast_to(np.float64(c) if np.isscalar(c) else c.astype(np.float64), p.shape)
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    even = (s.view(np.uint64) & np.uint64(1)) == 0
    s = np.where((err != 0) & even, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


def _counter_normal_numpy(keys: torch.Tensor, count: int) -> torch.Tensor:
    """Independent evaluation of csrc/counter_normal.h's arithmetic (the native op's
    definition): numpy uint64 wrapping integers, float32 numpy operations (correctly
    rounded, like the kernel's) and _fma32 where the kernel has an fma.  (N,) -> (N, count)."""
    import numpy as np
    f = np.float32
    u64 = np.uint64
    half = (count + 1) // 2
    ctr = np.arange(1, half + 1, dtype=u64) * u64(0x9E3779B97F4A7C15)
    z = keys.numpy().view(u64).reshape(-1, 1) + ctr
    z = (z ^ (z >> u64(30))) * u64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> u64(27))) * u64(0x94D049BB133111EB)
    h = (z ^ (z >> u64(31))).reshape(-1)
    u1 = ((h >> u64(40)).astype(np.int32).astype(f) + f(0.5)) * f(2.0 ** -24)
    u2 = ((h & u64(0xFFFFFF)).astype(np.int32).astype(f) + f(0.5)) * f(2.0 ** -24)
    # log_f
    b = u1.view(np.uint32)
    e = (b >> np.uint32(23)).astype(np.int32) - 126
    m = ((b & np.uint32(0x007FFFFF)) | np.uint32(0x3F000000)).view(f)
    lo = m < f(0.707106781186547524)
    e = e - lo
    m = m * (1 + lo).astype(f)
    x = m + f(-1.0)
    zz = x * x
    y = np.full_like(x, f(7.0376836292E-2))
    for cst in (-1.1514610310E-1, 1.1676998740E-1, -1.2420140846E-1, 1.4249322787E-1, -1.6668057665E-1,
                2.0000714765E-1, -2.4999993993E-1, 3.3333331174E-1):
        y = _fma32(y, x, f(cst))
    y = (y * x) * zz
    ef = e.astype(f)
    y = _fma32(ef, f(-2.12194440e-4), y)
    y = _fma32(zz, f(-0.5), y)
    lg = _fma32(ef, f(0.693359375), x + y)
    rad = np.sqrt(f(-2.0) * lg)
    # sincos_f
    ang = f(6.28318530717958647692) * u2
    j = (ang * f(1.27323954473516)).astype(np.int32)
    j = (j + 1) & ~1
    yj = j.astype(f)
    r = _fma32(yj, f(-0.78515625), ang)
    r = _fma32(yj, f(-2.4187564849853515625e-4), r)
    r = _fma32(yj, f(-3.77489497744594108e-8), r)
    zz = r * r
    ps = _fma32(np.full_like(zz, f(-1.9515295891E-4)), zz, f(8.3321608736E-3))
    ps = _fma32(ps, zz, f(-1.6666654611E-1))
    ps = _fma32(ps * zz, r, r)
    pc = _fma32(np.full_like(zz, f(2.443315711809948E-5)), zz, f(-1.388731625493765E-3))
    pc = _fma32(pc, zz, f(4.166664568298827E-2))
    pc = _fma32(pc * zz, zz, _fma32(zz, f(-0.5), f(1.0)))
    q = (j >> 1) & 3
    sv, cv = np.where(q & 1, pc, ps), np.where(q & 1, ps, pc)
    s = np.where(q & 2, -sv, sv)
    c = np.where((q + 1) & 2, -cv, cv)
    g = np.stack([rad * c, rad * s], -1).reshape(keys.numel(), 2 * half)
    return torch.from_numpy(np.ascontiguousarray(g[:, :count]))


@native
def test_native_bits_equal_independent_reference():
    """The CPU kernel (on AVX2+FMA machines the intrinsics of counter_normal_avx2.h, else
    the portable loop) gives exactly the bits of the recipe's float32 arithmetic
    evaluated independently in numpy, on 1.1e6 values: row lengths around the kernel's
    8-pair groups and 32-pair blocks (odd counts end on a cosine), count 1, random and
    frame keys, and two threads that split a row at an odd pair (3 x 66,667 values)."""
    gen = torch.Generator().manual_seed(5)
    rand = torch.randint(-2**63, 2**63 - 1, (2000,), generator=gen, dtype=torch.long)
    cases = [(rand, c) for c in (1, 2, 3, 15, 16, 17, 31, 33, 63, 64, 65, 66, 127, 129)]
    cases += [(frame_keys(0, torch.arange(20)), 784 * 25), (frame_keys(9, torch.tensor([2**40 + 7, -1, 0])), 2 * 33333 + 1)]
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for keys, count in cases:
            got = torch.ops.lcfast.counter_normal(keys, count)
            want = _counter_normal_numpy(keys, count)
            assert torch.equal(got.view(torch.int32), want.view(torch.int32)), count
    finally:
        torch.set_num_threads(n)


@native
def test_native_thread_and_chunk_independent():
    keys = frame_keys(3, torch.arange(7))
    full = torch.ops.lcfast.counter_normal(keys, 50001)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.lcfast.counter_normal(keys, 50001)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(full, one)
    assert torch.equal(torch.ops.lcfast.counter_normal(keys[[5, 2]], 50001), full[[5, 2]])
    assert torch.equal(torch.ops.lcfast.counter_normal(keys, 1001), full[:, :1001])  # a prefix of the stream


@native
def test_opcheck_and_bad_input():
    torch.library.opcheck(torch.ops.lcfast.counter_normal.default, (frame_keys(0, torch.arange(3)), 11))
    torch.library.opcheck(torch.ops.lcfast.counter_normal.default, (frame_keys(0, torch.arange(0)), 4))
    with pytest.raises(RuntimeError, match="keys must be a 1-d int64"):
        torch.ops.lcfast.counter_normal(torch.zeros(3), 4)
    with pytest.raises(RuntimeError, match="count must be >= 0"):
        torch.ops.lcfast.counter_normal(frame_keys(0, [1]), -1)


@native
def test_frames_without_native_agree(monkeypatch):
    """LCFAST_DISABLE_NATIVE=1 draws the frames with the torch recipe: the same frames up
    to float32 rounding."""
    want = random_frames((3, 8, 8), 5, 1, torch.arange(6), dtype=torch.float32)
    monkeypatch.setattr(frames._extension, "has_kernel", lambda op, dev: False)
    got = random_frames((3, 8, 8), 5, 1, torch.arange(6), dtype=torch.float32)
    assert (got - want).abs().max().item() < 2e-6


def test_chunk_and_order_independent():
    full = random_frames((3, 5, 7), 4, 7, torch.arange(10))
    part = random_frames((3, 5, 7), 4, 7, torch.tensor([8, 2, 5]))
    assert torch.equal(part, full[[8, 2, 5]])
    assert not torch.equal(full[0], full[1])
    assert not torch.equal(random_frames((3, 5, 7), 4, 8, torch.arange(1)), full[:1])
    assert torch.equal(shared_frame((3, 5, 7), 4, seed=7), random_frames((3, 5, 7), 4, 7, [-1])[0])


def test_same_frame_on_every_dtype():
    f32 = random_frames((50,), 6, 0, torch.arange(3), dtype=torch.float32)
    for dt in (torch.float64, torch.bfloat16, torch.float16):
        assert torch.equal(random_frames((50,), 6, 0, torch.arange(3), dtype=dt), f32.to(dt))
    assert torch.equal(shared_frame((50,), 6, 0, dtype=torch.float64), shared_frame((50,), 6, 0).to(torch.float64))


def _orth_err(q: torch.Tensor) -> float:
    q = q.double().reshape(q.shape[0], q.shape[1], -1)
    return (q @ q.mT - torch.eye(q.shape[1], dtype=torch.float64)).abs().max().item()


@pytest.mark.parametrize("shape,P,n", [((784,), 25, 1000), ((3, 224, 224), 25, 2), ((17,), 17, 300),
                                       ((2,), 2, 300), ((64,), 64, 50), ((300,), 1, 20), ((64,), 2, 2000),
                                       ((799,), 25, 50), ((50,), 25, 200)])
def test_orthonormal(shape, P, n):
    """One pass (D >= 8 P) and two; measured (max over seeds 0-2) with the native Gram
    (lcfast-frames-4): 784 x 25 1.6e-7, 3x224x224 x 25 9.0e-8, 17 x 17 2.0e-7, 50 x 25
    1.8e-7, 64 x 2 1.8e-7; with the float32 bmm Gram (the fallback): 784 x 25 5.2e-7,
    3x224x224 x 25 1.35e-6, 17 x 17 3.1e-7, 50 x 25 4.5e-7, 64 x 2 6.4e-7."""
    q = random_frames(shape, P, 3, torch.arange(n), dtype=torch.float32)
    assert _orth_err(q) < 2e-6


def test_orthonormal_rows_is_qr_and_per_point():
    """Equal to Householder QR (diag(R) > 0) up to float32 rounding, also for a point whose
    Cholesky factor fails (rank-deficient rows) or is too ill-conditioned: those go to
    Householder alone, without changing the other points."""
    g = gaussian_frames(0, torch.arange(4), 40, 6)
    g[1, 5] = g[1, 4]                           # rank-deficient: Cholesky fails
    g[2, 5] = g[2, 4] + 1e-5 * g[2, 3]          # cond ~1e6 > _COND_LIMIT
    q = orthonormal_rows(g)
    ref, r = torch.linalg.qr(g.double().mT)
    ref = (ref * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)).mT
    for i in (0, 2, 3):
        assert (q[i].double() - ref[i]).abs().max().item() < 1e-5, i
    assert _orth_err(q) < 2e-6
    assert torch.equal(orthonormal_rows(g[[0, 3]]), q[[0, 3]])


def test_gaussian():
    g = gaussian_frames(3, torch.arange(50), 784, 25).double()
    assert g.shape == (50, 25, 784)
    n = g.numel()
    assert abs(g.mean().item()) < 5 / math.sqrt(n) and abs(g.std().item() - 1) < 5 * math.sqrt(2 / n)
    assert abs(((g.abs() < 1).double().mean().item()) - 0.6826895) < 5 * math.sqrt(0.22 / n)


def test_version_and_errors():
    assert FRAMES_VERSION.startswith("lcfast-frames-")
    assert neighborhood.FRAMES_VERSION is FRAMES_VERSION and lcfast.random_frames is random_frames
    with pytest.raises(ValueError, match="n_dirs"):
        random_frames((4,), 5, 0, torch.arange(2))
    with pytest.raises(ValueError, match="n_dirs"):
        shared_frame((4,), 0)
    with pytest.raises(TypeError, match="seed"):
        random_frames((4,), 2, 0.5, torch.arange(2))
    assert random_frames((4,), 2, 0, torch.arange(0)).shape == (0, 2, 4)


def test_result_records_the_frame_generator():
    """Drawn frames name their generator in the result (they may change between
    versions); given directions do not."""
    import torch.nn as nn

    model, x = nn.Sequential(nn.Linear(5, 7), nn.ReLU()), torch.randn(3, 5)
    assert lcfast.local_complexity(model, x, n_dirs=2).meta["frames_version"] == FRAMES_VERSION
    assert lcfast.local_complexity(model, x, n_dirs=2, shared_directions=True).meta["frames_version"] == FRAMES_VERSION
    given = lcfast.local_complexity(model, x, directions=torch.eye(5)[:2])
    assert "frames_version" not in given.meta and given.meta["directions"] == "given"
