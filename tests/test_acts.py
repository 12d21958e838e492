"""The activation catalogue (lcfast.acts) against the kernels' own code tables."""
import pathlib
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lcfast import acts
from lcfast.sites import parse_activation

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cpp_codes() -> dict[str, int]:
    """act string -> enum value, parsed from csrc/crossing_act.h (enum Act + parse_act)."""
    src = (ROOT / "csrc" / "crossing_act.h").read_text()
    enum = re.search(r"enum\s+Act\s*:\s*int\s*\{([^}]*)\}", src)
    assert enum, "enum Act not found in csrc/crossing_act.h"
    values = {name: int(v) for name, v in re.findall(r"(k\w+)\s*=\s*(\d+)", enum.group(1))}
    strings = dict(re.findall(r'if\s*\(act\s*==\s*"(\w+)"\)\s*return\s+(k\w+);', src))
    assert strings and set(strings.values()) == set(values), (strings, values)
    return {s: values[k] for s, k in strings.items()}


def _triton_codes() -> set[int]:
    """ACT codes with a branch in kernels/triton_act.py's apply_act (the else branch is identity, 0)."""
    src = (ROOT / "lcfast" / "kernels" / "triton_act.py").read_text()
    body = src[src.index("def apply_act"):src.index("def crossed_mask")]
    return {int(c) for c in re.findall(r"ACT\s*==\s*(\d+)", body)} | {0}


def test_cpp_enum_matches_catalogue():
    assert _cpp_codes() == acts.kernel_codes("native")


def test_triton_codes_match_catalogue():
    codes = acts.kernel_codes("triton")
    assert set(codes.values()) == _triton_codes()
    assert codes["identity"] == 0
    from lcfast.ops.triton_util import ACT_CODES  # needs triton
    assert ACT_CODES == codes


def test_rows_are_consistent():
    kinds = [a.kind for a in acts.CATALOGUE]
    assert len(set(kinds)) == len(kinds) == len(acts.KINDS)
    codes = [a.code for a in acts.CATALOGUE if a.code is not None]
    assert len(set(codes)) == len(codes)
    for a in acts.CATALOGUE:
        assert a.fused_by <= a.kernels <= {"native", "triton"}, a.kind
        assert (a.code is None) == (not a.kernels), a.kind
        assert bool(a.dtypes) == bool(a.kernels) and set(a.dtypes) <= set(acts.KERNEL_DTYPES), a.kind
        assert a.offsets_rule is None or callable(a.offsets_rule)
        z = torch.linspace(-3, 3, 13)
        assert a.fn(z).shape == z.shape, a.kind
        for m in a.modules:
            assert issubclass(m, nn.Module)


@pytest.mark.parametrize("act", [a for a in acts.CATALOGUE if a.modules], ids=lambda a: a.kind)
def test_module_and_function_forms_agree(act):
    """Each row's module, built with defaults, is found as that row (GELU by its
    ``approximate``), and computes the row's function."""
    kw = {"approximate": "tanh"} if act.kind == "gelu_tanh" else {}
    m = act.modules[0](**kw).eval()
    found = acts.module_act(m)
    assert found is not None and found[0] is act
    z = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(m(z), act.fn(z))


def test_piecewise_linear_column():
    z = torch.linspace(-4, 4, 8001, dtype=torch.float64)
    for a in acts.CATALOGUE:
        second = a.fn(z).diff(n=2).abs()
        # a piecewise-linear function has a zero second difference except at its few kinks
        assert ((second > 1e-9).sum() <= 8) == a.piecewise_linear, a.kind


def test_parse_activation_reads_arguments():
    x = torch.zeros(2)
    assert parse_activation(F.leaky_relu, (x, 0.2, True), {}) == ("leaky_relu", 0.2, True)
    assert parse_activation(F.leaky_relu, (x,), {"negative_slope": 0.3}) == ("leaky_relu", 0.3, False)
    assert parse_activation(F.gelu, (x,), {"approximate": "tanh"}) == ("gelu_tanh", 0.0, False)
    assert parse_activation(F.gelu, (x,), {}) == ("gelu", 0.0, False)
    assert parse_activation(torch.Tensor.relu_, (x,), {}) == ("relu", 0.0, True)
    assert parse_activation(F.relu, (x, True), {}) == ("relu", 0.0, True)
    assert parse_activation(F.elu, (x,), {"inplace": True}) == ("elu", 0.0, True)
    assert parse_activation(torch.add, (x, x), {}) is None
    assert parse_activation(F.relu, (), {}) is None  # no tensor argument


def test_activation_modules_cover_every_row():
    for a in acts.CATALOGUE:
        assert set(a.modules) <= set(acts.ACTIVATION_MODULES)
    assert nn.ReLU6 in acts.ACTIVATION_MODULES and nn.GELU in acts.ACTIVATION_MODULES
