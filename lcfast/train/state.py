"""Leave training exactly as it was around a measurement: global RNG states, module
modes and grad mode are saved and restored."""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn as nn

__all__ = ["preserved_state"]


class preserved_state:
    """Context manager: restore global RNG states, module modes and grad mode on exit.

    Saves torch's CPU generator, every initialised CUDA generator, numpy's and
    python's ``random`` state, ``torch.is_grad_enabled()`` and the ``training`` flag
    of each module of ``models``.
    """

    def __init__(self, *models: nn.Module):
        self.models = [m for m in models if m is not None]

    def __enter__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
            else None
        self.np = np.random.get_state()
        self.py = random.getstate()
        self.grad = torch.is_grad_enabled()
        self.modes = [(m, m.training) for model in self.models for m in model.modules()]
        return self

    def __exit__(self, *exc):
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        np.random.set_state(self.np)
        random.setstate(self.py)
        torch.set_grad_enabled(self.grad)
        for m, flag in self.modes:
            m.training = flag
        return False
