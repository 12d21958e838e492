"""Benchmark workloads, baselines and ratios (``lcfast bench`` and ``benchmarks/``).

One workload = a model, ``N`` points, their frames (``P = 25`` per point, ``r =
0.005``) and a chunk size, defined once in ``lcfast/bench/workloads.toml`` (package
data: ``lcfast bench`` works from an installed wheel; ``benchmarks/`` reads the same
file).  Models and points come from :mod:`lcfast.zoo`, like ``lcfast measure``'s.  Every
method measures the same points with the same frames and the same chunks:

* ``bare-forward``: the model's forward of the ``N * 2P`` vertex batch, building the
  vertices included, no counting (the physical floor, docs/design.md#performance);
* ``reference``: ``lcfast.local_complexity(..., backend="reference")``;
* ``torch.compile``: what a user writes to speed the reference up: the vertex
  forward plus the reference's counting in forward pre-hooks of the activation
  modules, ``torch.compile``-d as one function (``local_complexity(torch.compile(
  model))`` measures the uncompiled ``_orig_mod``: call interception cannot see
  inside a compiled graph);
* ``paper``: the published method re-implemented (Humayun et al.'s
  ``local_complexity.py``): hooks keep each site's full pre-activation for the
  whole chunk, then per site ``sign`` of every vertex is compared with the first
  vertex's, reduced per point and gathered on the host;
* every lcfast backend :func:`lcfast.available_backends` lists for the device.

Before anything is timed, each method's counts are checked against the
reference: bit-identical where it sees the same pre-activations (the paper
method), else the float64 tolerance rule (:mod:`lcfast.testing`).  A method
that fails the check is never timed.

Modules, one job each: :mod:`~lcfast.bench.workloads` (the TOML file),
:mod:`~lcfast.bench.prepared` (a workload built on a device),
:mod:`~lcfast.bench.baselines`, :mod:`~lcfast.bench.checks` (counts against the
reference), :mod:`~lcfast.bench.methods` (set up + check a method),
:mod:`~lcfast.bench.report` (conditions, ratios, table), :mod:`~lcfast.bench.runner`
(run without pytest), :mod:`~lcfast.bench.cli` (``lcfast bench``).

Timed callables synchronise the device.  Ratios: ``speedup_vs_reference =
t_reference / t``, ``speedup_vs_compile = t_compile / t``, ``time_vs_bare_forward
= t / t_bare`` (all medians of the same run).
"""
from .baselines import BASELINES, HookCountingForward
from .checks import CheckFailed, check_counts
from .cli import add_parser, main
from .methods import Method, available_methods, excluded_backends, prepare_method
from .prepared import Prepared, prepare
from .report import compute_ratios, conditions, conditions_line, format_report, load_average
from .runner import base_extra_info, run_workloads
from .workloads import (COMPILE_OFF, CONFIG_ENV, DEFAULT_CONFIG, SIZE_ENV, SIZES, Workload, default_size,
                        find_config, load_workloads)

__all__ = [
    "BASELINES", "COMPILE_OFF", "CONFIG_ENV", "DEFAULT_CONFIG", "SIZES", "SIZE_ENV", "CheckFailed",
    "HookCountingForward", "Method", "Prepared", "Workload", "add_parser", "available_methods",
    "base_extra_info", "check_counts", "compute_ratios", "conditions", "conditions_line", "default_size",
    "excluded_backends", "find_config", "format_report", "load_average", "load_workloads", "main", "prepare",
    "prepare_method", "run_workloads",
]
