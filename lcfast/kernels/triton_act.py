"""@triton.jit activation helpers shared by the crossing kernels (float32/float64 math).

Only Triton *builtins* and the ``@triton.jit`` functions of this package are used
(``tl.reduce`` with the standard combine functions instead of ``tl.sum/min/max``,
``tl.full`` instead of ``tl.zeros``): the standard-library helpers are
``@triton.jit`` functions decorated when ``triton`` is imported, so if anything
imported triton before ``TRITON_INTERPRET=1`` was set (torchvision does) they are
compiled-mode functions the interpreter cannot call.  Our kernels then still run
under the interpreter, which is what CPU tests rely on.

Activation codes (``ACT`` constexpr) are the ``code`` column of :mod:`lcfast.acts`
(tests/test_acts.py checks the branches below against it):
0 identity, 1 relu, 2 leaky_relu, 3 gelu (erf), 4 gelu_tanh, 5 silu, 6 tanh, 7 sigmoid.
"""
import triton
import triton.language as tl


# Taylor coefficients of tanh(u)/u in u^2 (2^2n (2^2n - 1) B_2n / (2n)!, exact rationals
# rounded to float64), used below |u| < _TANH_SPLIT where the exp form cancels.
# Measured with numpy (round-to-nearest, exact exp) on 200,001 points per range
# against a long-double tanh: polynomial on |u| < 0.3 within 0.77 ulp (float32 and
# float64); exp form on [0.3, 20] within 2.7 ulp (float32) and 2.0 ulp (float64).
# The split 0.3 is where 13 terms still reach float64 (0.4: 1.9 ulp, 0.55: 5,000).
_TANH_SPLIT = tl.constexpr(0.3)


@triton.jit
def _tanh(u):
    """tanh with ~1 ulp relative error near 0 (the exp form alone loses ~1e-3 there:
    ``1 - 2/(exp(2u) + 1)`` cancels for small ``u``); float32 or float64 ``u``."""
    a = tl.where(u < 0, -u, u)
    # |u| >= split: 1 - 2/(exp(2|u|) + 1) (exp overflow -> inf -> exactly 1), sign restored
    e = 1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0)
    big = tl.where(u < 0, -e, e)
    u2 = u * u
    p = 1.5918905069328964e-05
    p = p * u2 - 3.927832388331683e-05
    p = p * u2 + 9.691537956929451e-05
    p = p * u2 - 0.00023912911424355248
    p = p * u2 + 0.000590027440945586
    p = p * u2 - 0.0014558343870513183
    p = p * u2 + 0.003592128036572481
    p = p * u2 - 0.008863235529902197
    p = p * u2 + 0.021869488536155203
    p = p * u2 - 0.05396825396825397
    p = p * u2 + 0.13333333333333333
    p = p * u2 - 0.3333333333333333
    small = tl.where(u == 0, u, u + u * (p * u2))  # -0.0 stays -0.0; tiny u stays u
    return tl.where(a < _TANH_SPLIT, small, big)  # NaN: a < split is false -> exp form -> NaN


@triton.jit
def apply_act(z, slope, ACT: tl.constexpr):
    """Elementwise activation of a float32 (or float64) block ``z`` (any shape)."""
    if ACT == 1:
        # PyTorch's CUDA ReLU: NaN stays NaN, -0.0 becomes +0.0 (its CPU ReLU keeps -0.0;
        # these kernels run on CUDA)
        y = tl.where((z > 0) | (z != z), z, 0.0)
    elif ACT == 2:
        y = tl.where(z > 0, z, z * slope)
    elif ACT == 3:
        y = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    elif ACT == 4:
        y = 0.5 * z * (1.0 + _tanh(0.7978845608028654 * (z + 0.044715 * z * z * z)))
    elif ACT == 5:
        y = z / (1.0 + tl.exp(-z))
    elif ACT == 6:
        y = _tanh(z)
    elif ACT == 7:
        y = 1.0 / (1.0 + tl.exp(-z))
    else:
        y = z
    return y


@triton.jit
def crossed_mask(mn, mx, nan):
    """docs/design.md#definition: crossed = not (mn > 0 or mx < 0 or (mn == 0 and mx == 0)), and a
    group holding a NaN counts as crossed (``nan``: boolean flag of the group).

    Triton's min/max reductions *drop* NaN (``tl.min`` and the interpreter's
    ``np.nanmin`` alike), whereas the reference's ``amin``/``amax`` propagate it and
    the native op keeps a NaN flag: hence the separate flag."""
    same = (mn > 0) | (mx < 0) | ((mn == 0) & (mx == 0))
    return ~same | nan


@triton.jit
def to_out(y, DT: tl.constexpr):
    """Cast float32 ``y`` to the output dtype ``DT`` with round-to-nearest-even.

    bfloat16 is rounded by hand (add ``0x7FFF + lsb`` to the float32 bits, keep the
    top half): the Triton 3.8 interpreter truncates fp32 -> bf16 casts even with
    ``fp_downcast_rounding="rtne"``, and the same integer sequence on the GPU gives
    the result PyTorch's rounding gives, so CPU tests check the GPU code path.
    NaNs keep the native cast (the carry could turn a NaN payload into inf).
    """
    if DT == tl.bfloat16:
        bits = y.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        r = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        out = tl.where(y != y, y.to(tl.bfloat16), r)
    else:
        out = y.to(DT)
    return out



# The combine functions are the standard library's own (what tl.min/max/sum pass to
# tl.reduce on the GPU): the interpreter recognises them by identity and reduces
# with numpy; any other combine function runs element by element in Python there
# (measured: the triton test files went from ~45 s to ~450 s).


@triton.jit
def rmin(x, axis: tl.constexpr):
    """Minimum over ``axis``: ``tl.min`` without calling a standard-library jit helper."""
    return tl.reduce(x, axis, tl.standard._elementwise_min)


@triton.jit
def rmax(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._elementwise_max)


@triton.jit
def rsum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._sum_combine)
