#!/usr/bin/env python
"""Turn a benchmark run's JSON into the README's markdown table.

    python benchmarks/report.py RUN.json [MORE.json ...] [--out TABLE.md] [--json-out MERGED.json]

RUN.json is what ``pytest benchmarks/ --benchmark-only --benchmark-json=RUN.json``
or ``lcfast bench --json RUN.json`` wrote.  The table has one row per workload x
method (median time, points/s, speedups against the reference and torch.compile,
time over the bare forward of the same vertex batch, the correctness check that
preceded timing), then the conditions line (device, versions, date, load average)
and notes (torch.compile variant, methods that failed their check or could not run).
Several JSON files (e.g. one pytest call per workload, as benchmarks/gpu_check.sh
does) are merged into one table; --json-out writes the merged JSON.
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


def merge(runs: list[dict]) -> dict:
    """One run from several: benchmarks, failures and skips concatenated; the conditions
    of the first run, with the load average at the end of the last."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    out["benchmarks"] = [b for r in runs for b in r.get("benchmarks", [])]
    out["lcfast_failures"] = [f for r in runs for f in r.get("lcfast_failures") or []]
    seen, skipped = set(), []
    for r in runs:
        for s in r.get("lcfast_skipped") or []:
            key = (s.get("workload"), s.get("method"))
            if key not in seen:
                seen.add(key)
                skipped.append(s)
    out["lcfast_skipped"] = skipped
    conds = [r.get("machine_info", {}).get("lcfast") for r in runs if r.get("machine_info", {}).get("lcfast")]
    if conds:
        c = dict(conds[0])
        c["load_end"] = conds[-1].get("load_end")
        out["machine_info"] = {**runs[0].get("machine_info", {}), "lcfast": c}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("json", nargs="+", help="benchmark JSON (pytest --benchmark-json or lcfast bench --json)")
    ap.add_argument("--out", default=None, help="also write the markdown here")
    ap.add_argument("--json-out", default=None, help="write the merged JSON here")
    ap.add_argument("--note", action="append", default=[], help="a line to append (e.g. the suite's wall time)")
    args = ap.parse_args(argv)
    runs = []
    for path in args.json:
        try:
            with open(path) as f:
                runs.append(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            # a workload killed at its time limit leaves an empty file (seen on the H200,
            # vit-b16-224): report the others and say which was left out
            print(f"report.py: {path} left out ({type(e).__name__}: {e})", file=sys.stderr)
            args.note.append(f"- {Path(path).name}: left out, unreadable ({type(e).__name__}; killed mid-run?)")
    if not runs:
        print("report.py: no readable benchmark JSON", file=sys.stderr)
        return 1
    data = merge(runs)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(data, f, indent=1)
    text = format_report(data)
    if args.note:
        text += "\n" + "\n".join(args.note) + "\n"
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
