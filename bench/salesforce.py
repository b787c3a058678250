"""Benchmark the Salesforce connector's API budget against the sandbox, through the CLI.

    python bench/salesforce.py [--events 10000] [--changed 100] [--workdir /dev/shm]
                               [--json bench/salesforce-results.json]

N realistic events (``bench/generate.py``: 10% recurring with overrides and an EXDATE)
sit in a vdir calendar; the CRM is the Salesforce sandbox (``crmsync.sandbox``, HTTPS on
loopback, its org in SQLite). Each scenario is one ``crmsync sync --yes --json`` process:

1. ``initial``  - every event created in the CRM,
2. ``echo``     - the run after: the CRM lists the records crmsync wrote as changed,
3. ``nochange`` - nothing changed anywhere,
4. ``gw-changed`` - ``--changed`` events edited in the calendar, updated in the CRM,
5. ``crm-changed`` - ``--changed`` events edited in the CRM (by a CRM user, one
   collection PATCH outside crmsync), written to the calendar.

Per scenario: wall time and peak RSS of the CLI process, the API calls the sandbox
counted (its own ledger, not crmsync's), the collection calls among them, and crmsync's
own count from the run report. Targets (issue 4): a sync with nothing changed costs at
most 2 API calls per object; writing N records costs ceil(N/200) collection calls, plus
the EventRelation batches for invitees, plus, per batch holding recurring series, one
PATCH and one DELETE collection for their moved and cancelled occurrences (Salesforce
creates a series whole; its exceptions are writes to the occurrences it made).

Exit status: 0 targets met; 1 a sync failed or a target was missed.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crmsync.config import Paths
from crmsync.connectors.base import Credentials
from crmsync.sandbox.server import Sandbox
from crmsync.secrets import SecretStore, save_credentials
from generate import generate
from run import base_env, machine_meta, run_measured, warn_if_busy, write_results

API = "/services/data/v62.0"
COLLECTION = 200


class Org:
    """The sandbox as a CRM user and its operator see it: records and the call ledger."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.http = sandbox.client(timeout=120)

    def calls(self) -> dict[str, int]:
        """The sandbox's ledger: every API call so far, by kind ("POST composite/sobjects")."""
        stats = self.http.get("/_sandbox/stats").json()
        return {"all": int(stats["api_calls"]), **stats["api_calls_by"]}

    @staticmethod
    def later() -> None:
        """Wait for the next whole minute, as scheduled runs lie minutes apart: Salesforce
        reports deletions by whole minutes (``latestDateCovered``), so a run started in
        the minute of the last one's writes would list them again."""
        time.sleep(61 - datetime.now(UTC).second)

    def events(self, limit: int) -> list[dict[str, Any]]:
        soql = ("SELECT Id, Subject FROM Event WHERE Recurrence2PatternText = null "
                f"AND IsRecurrence2 = false ORDER BY Id LIMIT {limit}")
        answer = self.http.get(f"{API}/query", params={"q": soql})
        answer.raise_for_status()
        return answer.json()["records"]

    def edit(self, records: list[dict[str, Any]]) -> None:
        for start in range(0, len(records), COLLECTION):
            part = [{"attributes": {"type": "Event"}, "Id": r["Id"],
                     "Subject": r["Subject"] + " (edited in the CRM)"}
                    for r in records[start:start + COLLECTION]]
            answer = self.http.patch(f"{API}/composite/sobjects",
                                     json={"allOrNone": True, "records": part})
            answer.raise_for_status()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10000)
    ap.add_argument("--changed", type=int, default=100)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per sync, seconds")
    ap.add_argument("--keep", action="store_true", help="keep the work folder and its logs")
    args = ap.parse_args(argv)

    started, load = datetime.now(UTC), warn_if_busy()
    work = Path(tempfile.mkdtemp(prefix="crmsync-sfbench-", dir=args.workdir))
    rows: list[dict[str, Any]] = []
    failed = False
    try:
        calendar = work / "calendar" / "calendar"
        calendar.mkdir(parents=True)
        generate(calendar, args.events)
        home = work / "home"
        # -v: each process's log (logs/<scenario>.err) lists every request it made.
        cli = [sys.executable, "-m", "crmsync", "--home", str(home), "-v"]
        with Sandbox(db_path=work / "org.db", daily_limit=10_000_000) as sandbox:
            org = Org(sandbox)
            setup = run_measured([*cli, "profile", "add", "bench", "--crm",
                                  f"salesforce:{sandbox.url}", "--groupware",
                                  f"vdir:{work / 'calendar'}", "--objects", "calendar"],
                                 log_dir=work / "logs", tag="setup", env=base_env())
            if setup.returncode != 0:
                print(setup.describe_failure(), file=sys.stderr)
                return 1
            save_credentials(SecretStore(Paths.resolve(home)), "bench", "crm", Credentials(
                client_id=sandbox.client_id, client_secret=sandbox.client_secret,
                refresh_token=sandbox.refresh_token, ca_bundle=str(sandbox.ca_path),
                login_url=sandbox.url))

            def sync(name: str, writes: int | None, target: str) -> None:
                nonlocal failed
                if name != "initial":
                    org.later()
                before = org.calls()
                result = run_measured([*cli, "sync", "bench", "--yes", "--json"],
                                      log_dir=work / "logs", tag=name, env=base_env(),
                                      timeout=args.timeout)
                after = org.calls()
                spent = {k: n - before.get(k, 0) for k, n in after.items()
                         if n != before.get(k, 0)}
                calls = spent.pop("all", 0)
                collection = sum(n for k, n in spent.items() if k.endswith("composite/sobjects"))
                try:
                    report = json.loads(result.stdout)
                except ValueError:
                    report = {}
                if result.returncode not in (0, 6) or not report:
                    print(result.describe_failure(), file=sys.stderr)
                    failed = True
                counts = report.get("objects", {}).get("calendar", {}).get("counts", {})
                row = {"scenario": name, "wall_s": round(result.wall_s, 2),
                       # crmsync's own CPU: the rest of the wall time is the sandbox's.
                       "cpu_s": round(result.user_s + result.sys_s, 2),
                       "rss_mb": round(result.max_rss_mb), "api_calls": calls,
                       "reported_calls": report.get("api", {}).get("crm", {}).get("api_calls"),
                       "collection_calls": collection, "calls_by": spent,
                       "counts": counts, "target": target}
                met = calls <= 2 if name == "nochange" else not (name == "echo" and counts)
                if writes is not None:
                    batches = row["collection_target"] = math.ceil(writes / COLLECTION)
                    # Events write their invitees in further batches of the same size, and
                    # a batch holding series writes their exceptions after them: one PATCH
                    # for the moved occurrences, one DELETE for the cancelled ones.
                    exceptions = spent.get("PATCH composite/sobjects", 0) + spent.get(
                        "DELETE composite/sobjects", 0) if name == "initial" else 0
                    row["exception_calls"] = exceptions
                    met = collection - exceptions <= 2 * batches and exceptions <= 2 * batches
                row["met"] = met
                failed = failed or not met
                rows.append(row)

            sync("initial", args.events, "ceil(N/200) collection calls + invitee batches "
                 "+ series exception batches")
            # The run after one that wrote lists the CRM's copies of what it wrote (their
            # SystemModstamps are newer than its cursor): listing pages, no writes.
            sync("echo", None, "listing only, nothing written")
            sync("nochange", None, "<= 2 API calls")
            from generate import modify_items

            modify_items(calendar, args.changed)
            sync("gw-changed", args.changed, "ceil(N/200) collection calls")
            org.edit(org.events(args.changed))
            sync("crm-changed", None, "listing calls only")
        _print(rows)
        if args.json:
            write_results(args.json, {"meta": machine_meta(started, load, work),
                                      "events": args.events, "rows": rows})
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def _print(rows: list[dict[str, Any]]) -> None:
    print(f"{'scenario':12} {'wall s':>7} {'CPU s':>6} {'RSS MB':>7} {'API calls':>9} "
          f"{'crmsync':>8} "
          f"{'collections':>11}  result")
    for r in rows:
        counts = ", ".join(f"{n} {c}" for c, n in sorted(r["counts"].items())) or "in step"
        print(f"{r['scenario']:12} {r['wall_s']:7.2f} {r['cpu_s']:6.2f} {r['rss_mb']:7d} "
              f"{r['api_calls']:9d} "
              f"{str(r['reported_calls']):>8} {r['collection_calls']:11d}  {counts}  "
              f"[target: {r['target']}; {'met' if r['met'] else 'MISSED'}]")
        print(f"{'':12} calls: {r['calls_by']}")


if __name__ == "__main__":
    sys.exit(main())
