"""Print µs per decision and decisions/s from a pytest-benchmark JSON file.

Usage: ``python bench/report.py bench.json``. Uses the median time per call
and the ``queries`` each call handled (``extra_info``).
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> int:
    with open(path) as handle:
        results = json.load(handle)["benchmarks"]
    print("| group | benchmark | queries/call | median µs/query | queries/s |")
    print("|---|---|---:|---:|---:|")
    for result in sorted(results, key=lambda r: (r["group"] or "", r["name"])):
        queries = result["extra_info"].get("queries", 1)
        per_query = result["stats"]["median"] / queries
        print(f"| {result['group']} | {result['name']} | {queries:,} | "
              f"{per_query * 1e6:,.3f} | {1 / per_query:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
