"""Benchmark crmsync against vdirsyncer 0.21 on a vdir -> vdir calendar sync.

    python bench/run.py [--events 10000] [--changed 100] [--repeat 3]
                        [--json bench/results.json] [--crmsync CMD]

N realistic events (10% recurring with overridden instances and an EXDATE, see
``bench/generate.py``) are generated once; every tool and repeat gets its own copy of
that folder. Per tool and repeat, on fresh folders and fresh state:

1. ``initial``  - sync into an empty destination folder,
2. ``nochange`` - sync again with nothing changed,
3. ``changed``  - sync after ``--changed`` items got a new SUMMARY/LOCATION on the source.

Measured per sync: wall time of the whole CLI process and its peak memory (max RSS, from
``wait4``). Setup (copying, ``vdirsyncer discover``, ``crmsync profile add``) is not
timed. The table shows medians over ``--repeat`` runs, the crmsync/vdirsyncer ratio and
the targets. After every sync the destination is checked (same number of ``.ics`` files
as the source, same UIDs, recurrence overrides kept, changed SUMMARY/LOCATION arrived).

vdirsyncer is installed on first use into ``bench/.venv-vdirsyncer`` (needs pip access).

Timing noise: on ext4 mounted with ``discard`` (as on the dev VM), creating files right
after many files were deleted anywhere on that filesystem can cost 3-10x more kernel time
for a while, which hits the ``initial`` scenario of both tools. Run folders are only
deleted at the very end for this reason; for stable numbers use ``--workdir /dev/shm``
(tmpfs) and a quiet machine (a warning is printed when the load is high).

Exit status: 0 all good; 1 a correctness check failed; 3 a tool could not run or a sync
failed (no correctness failure); 4 targets missed (only with --strict).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from generate import Change, ItemInfo, generate, modify_items, read_item

BENCH_DIR = Path(__file__).resolve().parent
VDIRSYNCER_VENV = BENCH_DIR / ".venv-vdirsyncer"
VDIRSYNCER_SPEC = "vdirsyncer==0.21.*"
OBJECT = "calendar"  # subfolder per object kind, as crmsync's vdir: connector expects

SCENARIOS = ("initial", "nochange", "changed")
TARGETS = {"initial": 0.5, "nochange": 0.25, "changed": 0.25}  # crmsync/vdirsyncer
RSS_TARGET_MB = 300.0

EXIT_CHECK_FAILED = 1
EXIT_TOOL_FAILED = 3
EXIT_TARGET_MISSED = 4



def base_env() -> dict[str, str]:
    """The children's environment: as a user's, with compiled bytecode cached.

    PYTHONDONTWRITEBYTECODE (set on some dev machines) would make every run recompile an
    editable install's sources, a cost no installed tool pays.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env

class ToolError(Exception):
    """A tool could not be set up or a run of it failed; the tool is skipped from then on."""


# --- measuring a child process ---------------------------------------------------------


@dataclass
class ProcResult:
    argv: list[str]
    returncode: int
    wall_s: float
    max_rss_mb: float
    user_s: float
    sys_s: float
    timed_out: bool
    stdout: str
    stderr: str

    def describe_failure(self) -> str:
        how = "timed out" if self.timed_out else f"exit status {self.returncode}"
        tail = _tail(self.stderr) or _tail(self.stdout) or "    (no output)"
        return f"`{shlex.join(self.argv)}` {how}:\n{tail}"


def _tail(text: str, lines: int = 15) -> str:
    rows = [r for r in text.strip().splitlines() if r.strip()]
    return "\n".join("    " + r for r in rows[-lines:])


def run_measured(
    argv: list[str],
    *,
    log_dir: Path,
    tag: str,
    env: dict[str, str] | None = None,
    stdin_path: Path | None = None,
    timeout: float = 600.0,
) -> ProcResult:
    """Run ``argv`` to completion; return its wall time and rusage (max RSS) via wait4.

    Output goes to files (no pipe that could block the child); the child gets its own
    session so that a timeout kills it with all its descendants.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{tag}.out", log_dir / f"{tag}.err"
    with (
        open(out_path, "wb") as out,
        open(err_path, "wb") as err,
        open(stdin_path or os.devnull, "rb") as stdin,
    ):
        timed_out = False
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(
                argv, stdin=stdin, stdout=out, stderr=err, env=env, start_new_session=True
            )
        except OSError as exc:
            raise ToolError(f"cannot start `{shlex.join(argv)}`: {exc}") from exc

        def kill(*_: object) -> None:
            nonlocal timed_out
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        # The timeout is a SIGALRM in this (only) thread, not a timer thread: a thread
        # could catch Ctrl-C's SIGINT and leave the main thread blocked in waitid.
        previous = signal.signal(signal.SIGALRM, kill)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        reaped = False
        try:
            if hasattr(os, "waitid"):
                # Wait for the exit without reaping (the pid stays ours for kill()), stop
                # the clock, then reap with wait4 to get the child's resource usage.
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
                wall = time.perf_counter() - t0
                signal.setitimer(signal.ITIMER_REAL, 0)
                _, status, usage = os.wait4(proc.pid, 0)
            else:  # macOS has no waitid
                _, status, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - t0
            reaped = True
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if not reaped:  # interrupted (Ctrl-C): don't leave the child behind
                kill()
                os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    rss_kb = usage.ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return ProcResult(
        argv=argv,
        returncode=proc.returncode,
        wall_s=wall,
        max_rss_mb=rss_kb / 1024,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        timed_out=timed_out,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )


# --- per-run folders --------------------------------------------------------------------


@dataclass
class RunDirs:
    root: Path

    @property
    def src(self) -> Path:  # crmsync: --crm vdir:SRC
        return self.root / "src"

    @property
    def dst(self) -> Path:  # crmsync: --groupware vdir:DST
        return self.root / "dst"

    @property
    def src_items(self) -> Path:
        return self.src / OBJECT

    @property
    def dst_items(self) -> Path:
        return self.dst / OBJECT

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def create(self, data: Path) -> None:
        """Fresh copy of the generated items as source, an empty destination folder."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.src.mkdir(parents=True)
        shutil.copytree(data, self.src_items)
        self.dst_items.mkdir(parents=True)
        self.state.mkdir()
        self.logs.mkdir()


# --- tools ------------------------------------------------------------------------------


class Tool:
    name = "tool"
    version = ""

    def setup(self, log_dir: Path, timeout: float) -> None:
        """Once, before any run: install/check the tool; raise ToolError if unusable."""

    def prepare(self, run: RunDirs, timeout: float) -> None:
        """Per fresh run folder, untimed (configuration, discovery)."""

    def sync_argv(self, run: RunDirs) -> list[str]:
        raise NotImplementedError

    def env(self, run: RunDirs) -> dict[str, str]:
        return base_env()

    def parse_report(self, result: ProcResult) -> tuple[Any, str | None]:
        """(report, warning) from a sync's stdout."""
        return None, None


def require_ok(result: ProcResult, what: str) -> None:
    if result.returncode != 0 or result.timed_out:
        raise ToolError(f"{what} failed: {result.describe_failure()}")


def configure_vdirsyncer(exe: Path, state: Path, logs: Path, env: dict[str, str],
                         timeout: float, storages: dict[str, dict[str, str]]) -> None:
    """Write the config of pair ``bench`` (first storage a, second b; "a wins") to
    ``state/vdirsyncer.conf`` and run ``vdirsyncer discover``, untimed."""
    status = state / "status"
    status.mkdir(parents=True, exist_ok=True)
    q = json.dumps
    (a, _), (b, _) = storages.items()
    text = (f"[general]\nstatus_path = {q(str(status))}\n\n[pair bench]\n"
            f"a = {q(a)}\nb = {q(b)}\ncollections = null\n"
            'conflict_resolution = "a wins"\n')
    for name, options in storages.items():
        text += f"\n[storage {name}]\n" + "".join(f"{k} = {q(v)}\n" for k, v in options.items())
    (state / "vdirsyncer.conf").write_text(text)
    answers = state / "yes.txt"  # `yes |`: answer any prompt of discover
    answers.write_text("y\n" * 100)
    result = run_measured([str(exe), "-v", "ERROR", "discover"], log_dir=logs,
                          tag="discover", env=env, stdin_path=answers, timeout=timeout)
    require_ok(result, "vdirsyncer discover")


class Vdirsyncer(Tool):
    name = "vdirsyncer"

    def __init__(self, venv: Path) -> None:
        self.venv = venv
        self.exe = venv / "bin" / "vdirsyncer"

    def _installed_version(self) -> str | None:
        if not self.exe.exists():
            return None
        try:
            out = subprocess.run(
                [str(self.exe), "--version"], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        words = out.stdout.split()
        return words[-1] if out.returncode == 0 and words else None

    def setup(self, log_dir: Path, timeout: float) -> None:
        version = self._installed_version()
        if not (version and version.startswith("0.21.")):
            print(f"installing {VDIRSYNCER_SPEC} into {self.venv} ...", file=sys.stderr)
            python = self.venv / "bin" / "python"
            steps = [
                [sys.executable, "-m", "venv", "--clear", str(self.venv)],
                [str(python), "-m", "pip", "install", "--quiet", VDIRSYNCER_SPEC],
            ]
            for n, argv in enumerate(steps):
                require_ok(
                    run_measured(argv, log_dir=log_dir, tag=f"install-{n}", timeout=timeout),
                    "installing vdirsyncer",
                )
            version = self._installed_version()
            if not (version and version.startswith("0.21.")):
                raise ToolError(f"{self.exe} --version gives {version!r} after install")
        self.version = version

    def config_path(self, run: RunDirs) -> Path:
        return run.state / "vdirsyncer.conf"

    def env(self, run: RunDirs) -> dict[str, str]:
        return {**base_env(), "VDIRSYNCER_CONFIG": str(self.config_path(run))}

    def prepare(self, run: RunDirs, timeout: float) -> None:
        fs = {"type": "filesystem", "fileext": ".ics"}
        configure_vdirsyncer(
            self.exe, run.state, run.logs, self.env(run), timeout,
            {"bench_src": {**fs, "path": str(run.src_items)},
             "bench_dst": {**fs, "path": str(run.dst_items)}},
        )  # fmt: skip

    def sync_argv(self, run: RunDirs) -> list[str]:
        return [str(self.exe), "-v", "ERROR", "sync"]


class Crmsync(Tool):
    name = "crmsync"

    def __init__(self, command: list[str]) -> None:
        self.command = command

    def setup(self, log_dir: Path, timeout: float) -> None:
        timeout = min(timeout, 120.0)
        result = run_measured(
            [*self.command, "--help"], log_dir=log_dir, tag="crmsync-help", timeout=timeout
        )
        require_ok(result, "crmsync --help")
        result = run_measured(
            [*self.command, "--version"], log_dir=log_dir, tag="crmsync-version", timeout=timeout
        )
        self.version = result.stdout.strip()[:200] if result.returncode == 0 else ""

    def _base(self, run: RunDirs) -> list[str]:
        return [*self.command, "--home", str(run.state / "home")]

    def prepare(self, run: RunDirs, timeout: float) -> None:
        argv = [
            *self._base(run),
            "profile", "add", "bench",
            "--crm", f"vdir:{run.src}",
            "--groupware", f"vdir:{run.dst}",
            "--objects", OBJECT,
        ]  # fmt: skip
        result = run_measured(argv, log_dir=run.logs, tag="profile-add", timeout=timeout)
        require_ok(result, "crmsync profile add")

    def sync_argv(self, run: RunDirs) -> list[str]:
        return [*self._base(run), "sync", "bench", "--yes", "--json"]

    def parse_report(self, result: ProcResult) -> tuple[Any, str | None]:
        text = result.stdout.strip()
        try:
            report = json.loads(text)
        except ValueError:
            return None, f"stdout is not a JSON report: {text[:200]!r}"
        if len(text) > 20_000 and isinstance(report, dict):
            report = {"_truncated": True, "keys": sorted(report)}
        return report, None


def filesystem_of(path: Path) -> str | None:
    """'fstype (mount point, options)' of the mount holding ``path`` (Linux), else None."""
    best: tuple[int, str] | None = None
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        mnt = parts[1].replace("\\040", " ")
        inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
        if inside and (best is None or len(mnt) > best[0]):
            best = (len(mnt), f"{parts[2]} ({mnt}, {parts[3]})")
    return best[1] if best else None


def default_crmsync_command() -> list[str]:
    exe = Path(sys.executable).parent / "crmsync"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "crmsync"]


# --- correctness checks -----------------------------------------------------------------


@dataclass
class Check:
    tool: str
    repeat: int
    scenario: str
    name: str
    ok: bool
    detail: str = ""


def scan(folder: Path) -> dict[str, ItemInfo]:
    """UID -> item summary of every .ics file in a folder."""
    items: dict[str, ItemInfo] = {}
    for path in folder.glob("*.ics"):
        info = read_item(path.read_bytes())
        items[info.uid or f"<no UID: {path.name}>"] = info
    return items


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """File name -> (mtime_ns, size): to count the files a run wrote."""
    out: dict[str, tuple[int, int]] = {}
    if folder.is_dir():
        with os.scandir(folder) as it:
            for entry in it:
                if entry.is_file():
                    st = entry.stat()
                    out[entry.name] = (st.st_mtime_ns, st.st_size)
    return out


def _sample(values: list[str], n: int = 3) -> str:
    shown = ", ".join(sorted(values)[:n])
    return f"{shown}, ... ({len(values)} in all)" if len(values) > n else shown


def verify(run: RunDirs, changes: list[Change], deep: bool) -> list[tuple[str, bool, str]]:
    """Checks of the destination after a sync: (name, ok, detail)."""
    results: list[tuple[str, bool, str]] = []
    n_src = sum(1 for _ in run.src_items.glob("*.ics"))
    n_dst = sum(1 for _ in run.dst_items.glob("*.ics")) if run.dst_items.is_dir() else 0
    results.append(("count", n_src == n_dst, f"source {n_src} .ics files, destination {n_dst}"))
    if not deep and not changes:
        return results

    src, dst = scan(run.src_items), scan(run.dst_items)
    missing = [u for u in src if u not in dst]
    extra = [u for u in dst if u not in src]
    ok = not missing and not extra
    detail = "" if ok else f"missing {_sample(missing)}; extra {_sample(extra)}"
    results.append(("uids", ok, detail))
    if deep:
        bad_summary = [u for u, s in src.items() if u in dst and dst[u].summary != s.summary]
        results.append(("summaries", not bad_summary, _sample(bad_summary)))
        bad_rec = [
            u
            for u, s in src.items()
            if u in dst and (dst[u].overrides, dst[u].exdates > 0) != (s.overrides, s.exdates > 0)
        ]
        n_rec = sum(1 for s in src.values() if s.overrides)
        results.append(
            ("recurrences", not bad_rec,
             f"{n_rec} recurring items; overrides/EXDATE differ: {_sample(bad_rec)}"
             if bad_rec else f"{n_rec} recurring items with overrides and EXDATE kept")
        )  # fmt: skip
    if changes:
        not_arrived = [
            c.uid
            for c in changes
            if c.uid not in dst
            or dst[c.uid].summary != c.summary
            or dst[c.uid].location != c.location
        ]
        detail = (
            f"{len(changes) - len(not_arrived)}/{len(changes)} changed SUMMARY+LOCATION "
            f"arrived" + (f"; not: {_sample(not_arrived)}" if not_arrived else "")
        )
        results.append(("changes-arrived", not not_arrived, detail))
    return results


# --- the benchmark ---------------------------------------------------------------------


@dataclass
class Sample:
    tool: str
    repeat: int
    scenario: str
    wall_s: float
    max_rss_mb: float
    user_s: float
    sys_s: float
    dst_files_written: int
    report: Any = None


@dataclass
class ToolState:
    tool: Tool
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, tools: list[Tool]) -> None:
        self.args = args
        self.work = work
        self.states = {t.name: ToolState(t) for t in tools}
        self.checks: list[Check] = []
        self.data = work / "data" / OBJECT
        self.data_stats: dict[str, Any] = {}

    def states_samples(self) -> list[Sample]:
        return [s for st in self.states.values() for s in st.samples]

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def generate_data(self) -> None:
        t0 = time.perf_counter()
        generate(self.data, self.args.events, seed=self.args.seed)
        files = list(self.data.glob("*.ics"))
        size = sum(p.stat().st_size for p in files)
        recurring = sum(1 for p in files if read_item(p.read_bytes()).overrides)
        self.data_stats = {"files": len(files), "bytes": size, "recurring": recurring}
        self.log(
            f"generated {len(files)} events ({recurring} recurring, {size / 1e6:.1f} MB) "
            f"in {time.perf_counter() - t0:.1f} s"
        )

    def setup_tools(self) -> None:
        for st in self.states.values():
            try:
                st.tool.setup(self.work / "setup-logs", self.args.timeout)
                self.log(f"{st.tool.name}: ready {st.tool.version}".rstrip())
            except ToolError as exc:
                self.fail(st, str(exc))

    def fail(self, st: ToolState, message: str) -> None:
        st.error = message
        self.log(f"ERROR {st.tool.name}: {message}\n  ({st.tool.name} is skipped from now on)")

    def run(self) -> None:
        names = list(self.states)
        for rep in range(1, self.args.repeat + 1):
            order = names if rep % 2 else names[::-1]  # alternate to spread any drift
            for name in order:
                st = self.states[name]
                if st.error is None:
                    try:
                        self.run_one(st, rep)
                    except ToolError as exc:
                        self.fail(st, str(exc))

    def run_one(self, st: ToolState, rep: int) -> None:
        tool = st.tool
        run = RunDirs(self.work / f"{tool.name}-r{rep}")
        run.create(self.data)
        tool.prepare(run, self.args.timeout)
        for scenario in SCENARIOS:
            changes: list[Change] = []
            if scenario == "changed":
                changes = modify_items(
                    run.src_items, self.args.changed, seed=self.args.seed, round_no=rep
                )
            before = snapshot(run.dst_items)
            os.sync()  # flush earlier writes now, not while the next run is timed
            result = run_measured(
                tool.sync_argv(run),
                log_dir=run.logs,
                tag=f"sync-{scenario}",
                env=tool.env(run),
                timeout=self.args.timeout,
            )
            require_ok(result, f"{tool.name} sync ({scenario}, repeat {rep})")
            after = snapshot(run.dst_items)
            written = sum(1 for k, v in after.items() if before.get(k) != v) + sum(
                1 for k in before if k not in after
            )
            report, warning = tool.parse_report(result)
            if warning and warning not in st.warnings:
                st.warnings.append(warning)
                self.log(f"WARNING {tool.name}: {warning}")
            st.samples.append(
                Sample(tool.name, rep, scenario, result.wall_s, result.max_rss_mb,
                       result.user_s, result.sys_s, written, report)
            )  # fmt: skip
            checks = verify(run, changes, deep=scenario != "nochange")
            failed = [c for c in checks if not c[1]]
            for name, ok, detail in checks:
                self.checks.append(Check(tool.name, rep, scenario, name, ok, detail))
            status = (
                "ok"
                if not failed
                else "CHECK FAILED: " + "; ".join(f"{n}: {d}" for n, _, d in failed)
            )
            self.log(
                f"[{tool.name} r{rep}] {scenario:<8} {result.wall_s:7.2f} s "
                f"{result.max_rss_mb:6.0f} MB  {written:>6} files written  {status}"
            )
        # Run folders are deleted only at the very end: on ext4 mounted with `discard`,
        # deleting 10k files slows down file creation for seconds afterwards, which would
        # make the next initial sync slower by up to 3x.

    # --- results ---

    def summary(self) -> dict[str, Any]:
        tools: dict[str, Any] = {}
        for name, st in self.states.items():
            scen: dict[str, Any] = {}
            for scenario in SCENARIOS:
                samples = [s for s in st.samples if s.scenario == scenario]
                if samples:
                    scen[scenario] = {
                        "median_s": statistics.median(s.wall_s for s in samples),
                        "wall_s": [s.wall_s for s in samples],
                        "peak_rss_mb": max(s.max_rss_mb for s in samples),
                        "max_rss_mb": [s.max_rss_mb for s in samples],
                        "user_s": [s.user_s for s in samples],
                        "sys_s": [s.sys_s for s in samples],
                        "dst_files_written": [s.dst_files_written for s in samples],
                        "last_report": samples[-1].report,
                    }
            complete = st.error is None and len(scen) == len(SCENARIOS)
            tools[name] = {
                "version": st.tool.version,
                "ok": complete,
                "error": st.error,
                "warnings": st.warnings,
                "scenarios": scen,
                "peak_rss_mb": max((s.max_rss_mb for s in st.samples), default=None),
            }
        comparison: dict[str, Any] = {}
        for scenario in SCENARIOS:
            c = tools.get("crmsync", {}).get("scenarios", {}).get(scenario)
            v = tools.get("vdirsyncer", {}).get("scenarios", {}).get(scenario)
            ratio = c["median_s"] / v["median_s"] if c and v else None
            comparison[scenario] = {
                "ratio": ratio,
                "target": TARGETS[scenario],
                "met": None if ratio is None else ratio <= TARGETS[scenario],
            }
        crm_rss = tools.get("crmsync", {}).get("peak_rss_mb")
        comparison["crmsync_peak_rss"] = {
            "mb": crm_rss,
            "target_mb": RSS_TARGET_MB,
            "met": None if crm_rss is None else crm_rss < RSS_TARGET_MB,
        }
        return {"tools": tools, "comparison": comparison}

    def print_table(self, summary: dict[str, Any]) -> None:
        a = self.args
        stats = self.data_stats
        print()
        print(
            f"vdir -> vdir sync of {stats.get('files')} events ({stats.get('recurring')} "
            f"recurring), {a.changed} changed; wall time median of {a.repeat} run(s), "
            f"peak RSS max"
        )
        names = [n for n in ("vdirsyncer", "crmsync") if n in summary["tools"]]
        verdict = {True: "ok", False: "MISSED", None: "n/a"}
        labels = {"initial": "initial", "nochange": "no change", "changed": f"{a.changed} changed"}
        rows: list[list[str]] = [["scenario", *names, "crm/vdir", "target", "result"]]
        for scenario in SCENARIOS:
            cells = [labels[scenario]]
            for n in names:
                s = summary["tools"][n]["scenarios"].get(scenario)
                cells.append(f"{s['median_s']:.2f} s  {s['peak_rss_mb']:.0f} MB" if s else "-")
            cmp_ = summary["comparison"][scenario]
            ratio = cmp_["ratio"]
            cells += [
                f"{ratio:.2f}x" if ratio is not None else "-",
                f"<= {cmp_['target']:.2f}x",
                verdict[cmp_["met"]],
            ]
            rows.append(cells)
        rss = summary["comparison"]["crmsync_peak_rss"]
        cells = ["peak RSS"]
        for n in names:
            peak = summary["tools"][n]["peak_rss_mb"]
            cells.append(f"{peak:.0f} MB" if peak is not None else "-")
        rows.append([*cells, "", f"< {RSS_TARGET_MB:.0f} MB", verdict[rss["met"]]])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for i, r in enumerate(rows):
            line = f"{r[0]:<{widths[0]}}" + "".join(
                f"  {c:>{w}}" for c, w in zip(r[1:-1], widths[1:-1], strict=True)
            )
            print(f"{line}  {r[-1]}")
            if i == 0:
                print("-" * (len(line) + 8))
        print()
        for name, t in summary["tools"].items():
            if t["error"]:
                print(f"{name} FAILED: {t['error']}")
            for w in t["warnings"]:
                print(f"{name} warning: {w}")
        failed = [c for c in self.checks if not c.ok]
        n_checks = len(self.checks)
        if failed:
            print(f"correctness: {len(failed)} of {n_checks} checks FAILED")
            for c in failed:
                print(f"  {c.tool} r{c.repeat} {c.scenario} {c.name}: {c.detail}")
        else:
            print(f"correctness: all {n_checks} checks passed")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog="Exit status: 0 ok; 1 correctness check failed; 3 a tool failed; "
        "4 targets missed (with --strict).",
    )
    ap.add_argument("--events", type=int, default=10000, help="number of events (10000)")
    ap.add_argument("--changed", type=int, default=100, help="items changed in scenario 3")
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool and scenario (3)")
    ap.add_argument(
        "--json",
        type=Path,
        default=BENCH_DIR / "results.json",
        help="where to write the results (bench/results.json; '-' for none)",
    )
    ap.add_argument(
        "--crmsync",
        type=shlex.split,
        default=None,
        metavar="CMD",
        help="command that runs crmsync (default: crmsync next to this python, "
        "else `python -m crmsync`)",
    )
    ap.add_argument(
        "--tools",
        default="vdirsyncer,crmsync",
        help="comma-separated tools to run (vdirsyncer,crmsync)",
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where temporary folders go (default: system temp dir)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    ap.add_argument("--seed", type=int, default=42, help="data generator seed (42)")
    ap.add_argument("--timeout", type=float, default=600.0, help="per process, seconds")
    ap.add_argument("--strict", action="store_true", help="exit 4 if a target is missed")
    args = ap.parse_args(argv)  # fmt: skip
    if args.events < 1 or args.repeat < 1 or not 0 <= args.changed <= args.events:
        ap.error("need --events >= 1, --repeat >= 1 and 0 <= --changed <= --events")
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(args.tools) - {"vdirsyncer", "crmsync"}
    if unknown or not args.tools:
        ap.error(f"unknown tools: {sorted(unknown)}")
    return args


def warn_if_busy() -> tuple[float, float, float]:
    """The load average now; a warning on stderr when other work will skew the timings."""
    load = os.getloadavg()
    if load[0] > 0.5 * (os.cpu_count() or 1):
        print(
            f"WARNING: system load is {load[0]:.2f} on {os.cpu_count()} CPUs; "
            "other processes will make the timings noisy",
            file=sys.stderr,
        )
    return load


def exit_status(*, check_failed: bool, tool_failed: bool, missed: list[str],
                strict: bool) -> int:
    """The documented exit status: correctness first, then tools, then targets."""
    if check_failed:
        return EXIT_CHECK_FAILED
    if tool_failed:
        return EXIT_TOOL_FAILED
    if strict and missed:
        return EXIT_TARGET_MISSED
    return 0


def machine_meta(started: datetime, load_before: tuple[float, ...], work: Path) -> dict[str, Any]:
    """Where and when a benchmark ran, for its JSON results."""
    return {
        "started": started.isoformat(timespec="seconds"),
        "duration_s": (datetime.now(UTC) - started).total_seconds(),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "workdir_filesystem": filesystem_of(work),
        "python": sys.version.split()[0],
    }


def write_results(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(f"results written to {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    crmsync_cmd = args.crmsync or default_crmsync_command()
    factories: dict[str, Callable[[], Tool]] = {
        "vdirsyncer": lambda: Vdirsyncer(VDIRSYNCER_VENV),
        "crmsync": lambda: Crmsync(crmsync_cmd),
    }
    tools = [factories[name]() for name in args.tools]
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="crmsync-bench-", dir=args.workdir))
    started = datetime.now(UTC)
    load_before = warn_if_busy()
    bench = Bench(args, work, tools)
    try:
        bench.generate_data()
        bench.setup_tools()
        bench.run()
    finally:
        if args.keep:
            print(f"kept temporary folders in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    summary = bench.summary()
    bench.print_table(summary)

    missed = [k for k, v in summary["comparison"].items() if v["met"] is not True]
    code = exit_status(check_failed=any(not c.ok for c in bench.checks),
                       tool_failed=any(t["error"] for t in summary["tools"].values()),
                       missed=missed, strict=args.strict)

    if str(args.json) != "-":
        doc = {
            "meta": {
                **machine_meta(started, load_before, work),
                "args": {
                    "events": args.events,
                    "changed": args.changed,
                    "repeat": args.repeat,
                    "seed": args.seed,
                    "tools": args.tools,
                },
                "crmsync_command": crmsync_cmd,
                "data": bench.data_stats,
            },
            **summary,
            "targets": {**{f"{k}_ratio": v for k, v in TARGETS.items()},
                        "crmsync_peak_rss_mb": RSS_TARGET_MB},
            "checks": [asdict(c) for c in bench.checks],
            "samples": [
                {k: v for k, v in asdict(s).items() if k != "report"}
                for s in bench.states_samples()
            ],
            "exit_status": code,
        }  # fmt: skip
        write_results(args.json, doc)
    return code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
