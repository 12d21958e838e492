#!/usr/bin/env python
"""Turn a benchmark run's JSON into the README's markdown table.

    python benchmarks/report.py RUN.json [--out TABLE.md]

RUN.json is what ``pytest benchmarks/ --benchmark-only --benchmark-json=RUN.json``
or ``lcfast bench --json RUN.json`` wrote.  The table has one row per workload x
method (median time, points/s, speedups against the reference and torch.compile,
time over the bare forward of the same vertex batch, the correctness check that
preceded timing), then the conditions line (device, versions, date, load average)
and notes (torch.compile variant, methods that failed their check or could not run).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    from lcfast.bench import format_report
except ImportError:  # run from a source tree without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lcfast.bench import format_report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("json", help="benchmark JSON (pytest --benchmark-json or lcfast bench --json)")
    ap.add_argument("--out", default=None, help="also write the markdown here")
    args = ap.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    text = format_report(data)
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
