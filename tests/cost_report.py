"""Sum a BRIDGEC_TEST_COST file (tests/conftest.py) per test file, costliest first.

BRIDGEC_TEST_COST=/tmp/cost.jsonl .venv/bin/python -m pytest -q
.venv/bin/python tests/cost_report.py /tmp/cost.jsonl [--tests N]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cost", type=Path)
    parser.add_argument("--tests", type=int, default=25, help="also list the N costliest tests")
    args = parser.parse_args()
    records = [json.loads(line) for line in args.cost.read_text(encoding="utf-8").splitlines() if line.strip()]
    files: defaultdict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for record in records:
        total = files[record["test"].split("::")[0]]
        total[0] += record["cpu"]
        total[1] += record["wall"]
        total[2] += 1
    cpu = sum(r["cpu"] for r in records)
    print(f"{len(records)} tests: {cpu / 60:.1f} CPU minutes, {sum(r['wall'] for r in records) / 60:.1f} wall minutes")
    print(f"{'cpu s':>8} {'wall s':>8} {'tests':>5}  file")
    for name, (c, w, n) in sorted(files.items(), key=lambda kv: -kv[1][0]):
        print(f"{c:8.1f} {w:8.1f} {n:5d}  {name}")
    print(f"\n{'cpu s':>8} {'wall s':>8}  test")
    for record in sorted(records, key=lambda r: -r["cpu"])[: args.tests]:
        print(f"{record['cpu']:8.1f} {record['wall']:8.1f}  {record['test']}")


if __name__ == "__main__":
    main()
