"""`make faults`: run every fault scenario at full scale, print a table of figures and the
guarantees each proved, and write them as JSON.

    python -m bench.faults [--only NAME ...] [--json PATH] [--workdir DIR]

Exit code 1 when a guarantee does not hold. Receiver logs stay in the work directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from pathlib import Path

from bench.faults.failover import FAILOVERS
from bench.faults.figures import Figures
from bench.faults.mns import MNS_SCENARIOS
from bench.faults.scenarios import SCENARIOS

ALL = {**SCENARIOS, **FAILOVERS, **MNS_SCENARIOS}

COLUMNS = [
    ("scenario", "scenario", 40),
    ("callbacks", "callbacks", 9),
    ("requests", "requests", 8),
    ("ok_200", "200", 6),
    ("unavailable_503", "503", 5),
    ("other_5xx", "5xx", 4),
    ("rejected_4xx", "4xx", 4),
    ("no_answer", "none", 5),
    ("acknowledged", "acked", 6),
    ("lost", "lost", 4),
    ("duplicates_in_stream", "dups", 4),
    ("gave_up", "gave up", 7),
    ("max_answer_s", "max s", 6),
    ("p99_answer_s", "p99 s", 6),
]


def table(results: list[Figures]) -> str:
    lines = [" ".join(f"{title:>{width}}" for _, title, width in COLUMNS)]
    for figures in results:
        row = figures.as_json()
        lines.append(" ".join(f"{row[key]!s:>{width}}" for key, _, width in COLUMNS))
    lines.append("")
    lines.append(
        "200/503/5xx/4xx/none: HTTP answers (none: refused, reset or timed out); acked: callbacks "
        "answered 200; lost: acked but not in the stream; dups: extra stream entries; gave up: "
        "callbacks VOD would drop after its 3 attempts (reconciliation recovers them). MNS "
        "ingest: callbacks are the events written into the queue, requests the messages (some "
        "events twice), acked the messages the queue accepted; lost: accepted, not in the stream."
    )
    for figures in results:
        lines.append("")
        lines.append(f"{figures.scenario}: {json.dumps(figures.extra)}")
        for check in figures.checks:
            lines.append(f"  [{'PASS' if check.ok else 'FAIL'}] {check.guarantee}: {check.detail}")
    return "\n".join(lines)


async def run(names: list[str], workdir: Path) -> list[Figures]:
    results = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results.append(await ALL[name](workdir))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(ALL), default=list(ALL))
    parser.add_argument("--json", type=Path, default=Path(".faults/report.json"))
    parser.add_argument("--workdir", type=Path, default=Path(".faults/run"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    results = asyncio.run(run(args.only, args.workdir))
    print(table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([r.as_json() for r in results], indent=2) + "\n")
    print(f"\nfigures written to {args.json}; receiver logs in {args.workdir}")
    sys.exit(0 if all(r.passed for r in results) else 1)


if __name__ == "__main__":
    main()
