"""@triton.jit kernels only (no launchers, no torch.library)."""
