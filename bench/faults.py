"""Many seeded fault-injection runs (tests/test_faults.py) with a JSON summary.

    PYTHONPATH=src:tests python bench/faults.py [--seeds 1-50] [--rate 0.2] [--json FILE]
        [--groupware radicale|graph]

Starts one embedded Radicale, one Salesforce sandbox and (``--groupware graph``) one Graph
sandbox, then for each seed makes a fresh world (calendar, address book or Outlook's
mailbox, empty CRM, profile) behind two chaos FaultProxy instances and runs it as the
test does. Prints runs, requests, faults injected by type, sync errors
(failed/partial runs, expected under faults) and violations (must be 0), with the seeds
that had any; replay one with ``CRMSYNC_FAULT_SEED=N pytest tests/test_faults.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from crmsync.connectors import dav
from crmsync.embedded import Radicale
from crmsync.graphsandbox.server import GraphSandbox
from crmsync.sandbox.server import Sandbox
from scenario import Servers
from test_faults import run_world


def _seeds(spec: str) -> list[int]:
    first, _, last = spec.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-30", help="a seed or a range, e.g. 1-50")
    parser.add_argument("--rate", type=float, default=0.2, help="fault rate per request")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--groupware", choices=("radicale", "graph"), default="radicale",
                        help="the groupware side: Radicale (CalDAV/CardDAV) or Graph")
    args = parser.parse_args()
    dav.FIRST_WAIT = 0.01  # retries' backoff, as in the test
    injected: Counter[str] = Counter()
    summary: dict[str, object] = {"groupware": args.groupware, "runs": 0, "requests": 0,
                                  "sync_errors": 0, "violations": 0, "failing_seeds": {}}
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, Radicale(Path(tmp) / "radicale") as radicale, \
            Sandbox() as sandbox, contextlib.ExitStack() as stack:
        servers = Servers(radicale, sandbox)
        graph = stack.enter_context(GraphSandbox()) if args.groupware == "graph" else None
        for seed in _seeds(args.seeds):
            outcome = run_world(servers, Path(tmp) / f"home-{seed}", seed, args.rate, graph)
            summary["runs"] += 1  # type: ignore[operator]
            summary["requests"] += outcome.requests  # type: ignore[operator]
            summary["sync_errors"] += len(outcome.errors)  # type: ignore[operator]
            summary["violations"] += len(outcome.violations)  # type: ignore[operator]
            injected.update(outcome.injected)
            if outcome.violations:
                summary["failing_seeds"][seed] = outcome.violations  # type: ignore[index]
            print(f"seed {seed}: {outcome.requests} requests, "
                  f"{sum(outcome.injected.values())} faults, {len(outcome.errors)} errors, "
                  f"{len(outcome.violations)} violations", file=sys.stderr)
    summary["faults_injected"] = sum(injected.values())
    summary["faults_by_type"] = dict(sorted(injected.items()))
    summary["seconds"] = round(time.monotonic() - began, 1)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
