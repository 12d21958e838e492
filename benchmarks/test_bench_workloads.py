"""The workload suite: every method on every workload of lcfast/bench/workloads.toml.

One pytest-benchmark group per workload; in each, the baselines (bare forward of the
vertex batch, reference, torch.compile, the paper's method) and every lcfast backend
available on the device, all on the same points, frames and chunks.  Each method's
counts are checked against the reference before it is timed (lcfast.bench.check_counts);
a method that fails is reported and never timed.  Ratios and conditions are in each
benchmark's extra_info; ``python benchmarks/report.py RUN.json`` prints the table.

    pytest benchmarks/ --benchmark-only --benchmark-json=benchmarks/results/cpu.json
"""


def test_workload(benchmark, lc_case, lc_run):
    lc_run(benchmark, lc_case)
