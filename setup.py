"""Build script: the pure-Python package plus the optional native extension ``lcfast._C``.

The extension is built from ``csrc/*.cpp`` (op schemas and CPU kernels) and, when a
CUDA-enabled torch and ``nvcc`` are present, ``csrc/cuda/*.cu``.  Switches:

* ``LCFAST_NO_EXT=1``: skip the extension (``import lcfast`` still works and
  ``backend="native"`` says what is missing);
* ``LCFAST_NO_CUDA=1``: build only the CPU part;
* ``TORCH_CUDA_ARCH_LIST``: CUDA architectures (default ``8.0;9.0``).
"""
import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_home_with_runtime():
    """A CUDA toolkit root that has both ``bin/nvcc`` and a linkable ``libcudart.so``.

    torch derives CUDA_HOME from ``which nvcc``; when nvcc is a wrapper script
    (``/usr/local/bin/nvcc`` exec-ing ``/usr/local/cuda-13.0/bin/nvcc``, as on the CI
    machine) that gives ``/usr/local``, which has no ``libcudart.so`` to link.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return None
    cands = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    cands += sorted(glob.glob("/usr/local/cuda*"))
    for root in cands:
        has_nvcc = os.path.exists(os.path.join(root, "bin", "nvcc"))
        has_rt = any(os.path.exists(os.path.join(root, d, "libcudart.so")) for d in ("lib64", "lib"))
        if has_nvcc and has_rt:
            return root
    return None


def _extensions():
    if os.environ.get("LCFAST_NO_EXT", "0") == "1":
        return [], {}
    cpp = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not cpp:
        return [], {}
    want_cuda = os.environ.get("LCFAST_NO_CUDA", "0") != "1"
    home = _cuda_home_with_runtime() if want_cuda else None
    if home:
        os.environ["CUDA_HOME"] = home  # before torch.utils.cpp_extension reads it
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, CUDA_HOME

    # torch >= 2.10 headers need C++20.  -fno-math-errno: sqrtf without the errno branch,
    # so that the compiler can vectorise the portable loop of csrc/counter_normal_cpu.cpp
    # (used where the AVX2 kernel is not; scalar otherwise) and inlines sqrtf in the AVX2
    # kernel's scalar tail (no result changes: only errno, which no kernel reads).
    cxx = ["-O3", "-fopenmp", "-std=c++20", "-fno-math-errno"]
    ldflags = ["-fopenmp"]
    cu = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    use_cuda = bool(cu) and want_cuda and torch.version.cuda is not None and CUDA_HOME is not None
    if use_cuda:
        # No GPU to probe on build machines: Ampere and Hopper (the lent device is an
        # H200).  Measured on the 2-core CI machine (CPU time of the whole extension
        # build): "9.0" 47 s, "8.0;9.0" 51 s, so both.  Set the variable for other GPUs.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        ext = CUDAExtension(
            "lcfast._C",
            cpp + cu,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++20"]},
            extra_link_args=ldflags,
        )
    else:
        ext = CppExtension("lcfast._C", cpp, extra_compile_args={"cxx": cxx}, extra_link_args=ldflags)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
