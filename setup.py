"""Build script: the pure-Python package plus the optional native extension ``lcfast._C``.

The extension is built from ``csrc/*.cpp`` (CPU kernels) and, when a CUDA-enabled torch
and ``nvcc`` are present, ``csrc/cuda/*.cu``.  Set ``LCFAST_NO_EXT=1`` to skip it (then
``import lcfast`` still works and ``backend="native"`` explains what is missing), or
``LCFAST_NO_CUDA=1`` to build only the CPU part.
"""
import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    if os.environ.get("LCFAST_NO_EXT", "0") == "1":
        return [], {}
    cpp = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not cpp:
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, CUDA_HOME

    cxx = ["-O3", "-fopenmp", "-std=c++20"]
    ldflags = ["-fopenmp"]
    cu = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    use_cuda = (
        bool(cu)
        and os.environ.get("LCFAST_NO_CUDA", "0") != "1"
        and torch.version.cuda is not None
        and (CUDA_HOME is not None or shutil.which("nvcc") is not None)
    )
    if use_cuda:
        # No GPU to probe on build machines: compile for Hopper (H100/H200) and Ampere.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        ext = CUDAExtension(
            "lcfast._C",
            cpp + cu,
            extra_compile_args={"cxx": cxx + ["-DLCFAST_WITH_CUDA"], "nvcc": ["-O3", "-DLCFAST_WITH_CUDA"]},
            extra_link_args=ldflags,
        )
    else:
        ext = CppExtension("lcfast._C", cpp, extra_compile_args={"cxx": cxx}, extra_link_args=ldflags)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
