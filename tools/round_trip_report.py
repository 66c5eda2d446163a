"""The generative round trip against both writers: where is delta-rs's `write_deltalake` wrong, and
is lakesink ever worse? Draws the same cases as tests/scenarios/test_round_trip.py, writes each with
lakesink and with write_deltalake (append, schema merge), runs the same checks on both tables, and
prints a summary of the problems by kind (and one example of each).

    python tools/round_trip_report.py --examples 300 --seed 7
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deltalake import write_deltalake
from hypothesis import HealthCheck, given, seed, settings

from tests.scenarios.test_round_trip import check_everything, write_with_lakesink
from tests.support.round_trip import Case, cases


def write_with_delta_rs(uri: str, case: Case) -> list[int]:
    versions = []
    for batch in case.batches:
        write_deltalake(uri, batch, mode="append", partition_by=case.partition_by or None, schema_mode="merge")
        from deltalake import DeltaTable

        versions.append(DeltaTable(uri).version())
    return versions


def kind_of(problem: str) -> str:
    """A problem line without its values, to count alike ones together."""
    text = re.sub(r"version \d+", "version N", problem)
    text = re.sub(r"part-[^:]*\.parquet", "FILE", text)
    return re.sub(r"(\d+ rows, expected \d+|returned .*|e\.g\. .*|is .*, the file holds .*)", "...", text)[:160]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    found: dict[str, Counter[str]] = {"lakesink": Counter(), "delta-rs": Counter()}
    examples: dict[tuple[str, str], str] = {}
    refused: Counter[str] = Counter()
    ran = Counter[str]()

    @seed(args.seed)
    @settings(max_examples=args.examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=cases())
    def run(case: Case) -> None:
        ran["cases"] += 1
        for writer, write in (("lakesink", write_with_lakesink), ("delta-rs", write_with_delta_rs)):
            with tempfile.TemporaryDirectory() as tmp:
                uri = str(Path(tmp) / "t")
                try:
                    versions = write(uri, case)
                except Exception as exc:  # noqa: BLE001 - a refused write is counted, not raised
                    refused[f"{writer}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"] += 1
                    continue
                try:
                    problems = check_everything(uri, case, versions)
                except Exception as exc:  # noqa: BLE001 - a check that cannot even run is a problem too
                    problems = [f"checks failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"]
                for problem in problems:
                    kind = kind_of(problem)
                    found[writer][kind] += 1
                    examples.setdefault((writer, kind), f"{case.describe()[:300]}\n      {problem[:400]}")

    run()
    print(f"{ran['cases']} cases (seed {args.seed})")
    for writer, counts in found.items():
        print(f"\n{writer}: {sum(counts.values())} problems")
        for kind, count in counts.most_common():
            print(f"  {count:4d}  {kind}\n      e.g. {examples[(writer, kind)]}")
    print("\nrefused writes:")
    for text, count in refused.most_common():
        print(f"  {count:4d}  {text}")


if __name__ == "__main__":
    main()
