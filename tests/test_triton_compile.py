"""The Triton kernels compile for the GPU (Hopper, sm_90) on a machine without one.

The interpreter runs the kernels' Python, not Triton's compiler: typing (a float
argument becomes float32 on the GPU), constexpr branches and lowering are only
exercised by a real compile.  ``triton.compile`` needs no GPU to produce PTX and a
cubin, so the GPU code path is checked here in a subprocess (the test process may
have set ``TRITON_INTERPRET=1``).
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

_CODE = r"""
import struct
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lcfast.kernels.triton_crossing import crossing_epilogue_kernel as epi
from lcfast.kernels.triton_linear_crossing import linear_crossing_kernel as lin

target = GPUTarget("cuda", 90, 32)

def epilogue(dt, act, slope):
    p = "*" + dt
    sig = {"pre_ptr": p, "out_ptr": p, "res_ptr": p, "scale_ptr": p, "shift_ptr": p, "counts_ptr": "*i64",
           "F": "i32", "C": "i32", "CH_DIV": "i32", "NT": "i32"}
    consts = dict(SLOPE=slope, V=50, VB=64, BLOCK_F=64, ACT=act, AFFINE=True, RESIDUAL=True, STORE=True,
                  F64=dt == "fp64")
    sig.update({k: "constexpr" for k in consts})
    return triton.compile(ASTSource(epi, sig, consts), target=target)

# float64 LeakyReLU: the slope is the float64 0.01 (0x3F847AE147AE147B), not 0.01f widened
c = epilogue("fp64", 2, 0.01)
bits = "%016X" % struct.unpack("<Q", struct.pack("<d", 0.01))[0]
assert ("0d" + bits) in c.asm["ptx"].upper().replace("0D", "0d"), "float64 slope constant not in the PTX"
assert c.asm.get("cubin"), "no cubin"
# float32 tanh (polynomial + exp branches) and the NaN flag
c = epilogue("fp32", 6, 0.0)
assert c.asm.get("cubin")
# fused GEMM, fp16 operands, bf16 path on the GPU (no UPCAST)
sig = {"x_ptr": "*fp16", "w_ptr": "*fp16", "b_ptr": "*fp16", "out_ptr": "*fp16", "counts_ptr": "*i64",
       "n_groups": "i32", "K": "i32", "NOUT": "i32", "T": "i32", "stride_xm": "i32", "stride_xk": "i32",
       "stride_wn": "i32", "stride_wk": "i32", "slope": "fp32"}
consts = dict(V=50, VP=64, G=1, BLOCK_N=64, BLOCK_K=32, ACT=1, HAS_BIAS=True, COUNT=True, PRECISION="tf32",
              UPCAST=False)
sig.update({k: "constexpr" for k in consts})
c = triton.compile(ASTSource(lin, sig, consts), target=target)
assert c.asm.get("cubin")
print("ok")
"""


def test_kernels_compile_for_sm90():
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception as e:  # pragma: no cover - Triton without its NVIDIA backend
        pytest.skip(f"Triton has no NVIDIA backend here: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _CODE], capture_output=True, text=True, env=env, timeout=600,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-4000:]
