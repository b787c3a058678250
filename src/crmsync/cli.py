"""The ``crmsync`` command line: a thin layer over crmsync.sync and crmsync.store.

Exit codes (stable; scripts rely on them):

  0  success (or nothing to do)
  1  unexpected error
  2  usage or configuration error
  3  conflicts are waiting for a decision (conflict rule "ask")
  4  the mass-delete guard stopped the run; nothing was written
  5  a side could not be reached or refused the credentials
  6  some items failed; the others were synced (see the report)
  7  cancelled at the confirmation prompt; nothing was written
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from crmsync.errors import ConfigError, CrmsyncError, ItemError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONFLICTS = 0, 1, 2, 3
EXIT_MASS_DELETE, EXIT_CONNECTION, EXIT_PARTIAL, EXIT_CANCELLED = 4, 5, 6, 7

EXIT_CODES_HELP = """
Exit codes: 0 ok; 1 unexpected error; 2 usage or configuration error; 3 conflicts wait
for a decision; 4 mass-delete guard stopped the run (nothing written); 5 a side could
not be reached; 6 some items failed (the rest synced), or verify found pairs that differ;
7 cancelled at the prompt.
"""

app = typer.Typer(
    help="Keep calendar events, contacts and tasks in step between groupware and a CRM."
    + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
profile_app = typer.Typer(help="Set up and inspect sync profiles.", no_args_is_help=True)
app.add_typer(profile_app, name="profile")

_state: dict[str, Any] = {"home": None}


@app.callback()
def _main(
    home: Annotated[Path | None, typer.Option(
        "--home", help="Folder for config and state (default: $CRMSYNC_HOME, else the "
        "platform's config and data folders).", show_default=False)] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Log each request to the CRM and groupware on stderr "
        "(never secrets).")] = False,
) -> None:
    _state["home"] = home
    if verbose:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
        for noisy in ("httpx", "httpcore", "hpack", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _paths():
    from crmsync.config import Paths

    return Paths.resolve(_state["home"])


def _store():
    from crmsync.config import store_url
    from crmsync.store import Store

    return Store.open(store_url(_paths()))


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)




# --- profiles ---------------------------------------------------------------------------


def _endpoints(values: list[str], kinds: list[str], side: str) -> str:
    """``ENDPOINT`` for every object, ``OBJ=ENDPOINT`` for one (repeatable)."""
    from crmsync.connectors import parse_endpoint
    from crmsync.store import join_endpoints

    default, per_kind = None, {}
    for value in values:
        kind, sep, endpoint = value.partition("=")
        if sep and kind in ("calendar", "contacts", "tasks"):
            per_kind[kind] = endpoint
        else:
            default = value
    for endpoint in [default, *per_kind.values()]:
        if endpoint is not None:
            parse_endpoint(endpoint)
    missing = [k for k in kinds if k not in per_kind and default is None]
    if missing:
        raise ConfigError(f"no {side} endpoint for {', '.join(missing)}")
    return join_endpoints({k: per_kind.get(k, default) for k in kinds})  # type: ignore[misc]


@profile_app.command("add")
def profile_add(
    name: Annotated[str, typer.Argument(help="A short name for the profile.")],
    crm: Annotated[list[str], typer.Option(
        help="CRM endpoint, e.g. vdir:PATH; OBJ=ENDPOINT for one object (repeatable).")],
    groupware: Annotated[list[str], typer.Option(
        help="Groupware endpoint: vdir:PATH, caldav:URL of a calendar, carddav:URL of an "
        "address book; OBJ=ENDPOINT for one object, e.g. contacts=carddav:URL "
        "(repeatable).")],
    objects: Annotated[str, typer.Option(
        help="Comma-separated objects to sync.")] = "calendar,contacts,tasks",
    conflict: Annotated[str, typer.Option(
        help="When both sides changed a field: newest, crm, groupware or ask.")] = "newest",
    delete_vs_update: Annotated[str, typer.Option(
        help="When one side deleted and the other changed an item: keep (recreate it), "
        "crm, groupware (that side is master) or delete.")] = "keep",
    prevent: Annotated[str, typer.Option(
        help="Comma-separated operations never to do, e.g. 'crm:delete,groupware:create'. "
        "Contacts always start with crm:delete.")] = "",
) -> None:
    """Add a profile joining one CRM to one groupware account."""
    from crmsync.model import OBJECT_KINDS
    from crmsync.policy import Policy

    kinds = [k.strip() for k in objects.split(",") if k.strip()]
    bad = [k for k in kinds if k not in OBJECT_KINDS]
    if bad or not kinds:
        raise ConfigError(f"unknown object(s) {', '.join(bad) or '(none)'}; "
                          f"choose from {', '.join(OBJECT_KINDS)}")
    crm_ep = _endpoints(crm, kinds, "CRM")
    groupware_ep = _endpoints(groupware, kinds, "groupware")
    switches = {p.strip() for p in prevent.split(",") if p.strip()}
    settings = {}
    for kind in kinds:
        base = Policy.default_for(kind)
        # The objects a profile is made with start in manual mode (the default is off).
        policy = Policy.from_dict(base.to_dict() | {
            "conflict": conflict, "delete_vs_update": delete_vs_update,
            "prevent": sorted(base.prevent | switches), "mode": "manual"})
        settings[kind] = policy.to_dict()
    store = _store()
    profile = store.add_profile(name, crm_ep, groupware_ep, kinds, settings)
    _console().print(f"Added profile [bold]{profile.name}[/]: {crm_ep} ⇄ {groupware_ep} "
                     f"({', '.join(kinds)})")


@profile_app.command("list")
def profile_list(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False):
    """List profiles."""
    profiles = _store().profiles()
    if json_out:
        _emit_json([_profile_dict(p) for p in profiles])
        return
    for p in profiles:
        _console().print(f"{p.name}: {p.crm} ⇄ {p.groupware} ({', '.join(p.objects)})")


@profile_app.command("show")
def profile_show(
    name: str,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one profile with its settings."""
    profile = _store().profile(name)
    data = _profile_dict(profile)
    if json_out:
        _emit_json(data)
    else:
        _console().print_json(data=data)


@profile_app.command("remove")
def profile_remove(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Remove a profile and its sync state (the items on both sides stay as they are)."""
    if not yes and not typer.confirm(f"Remove profile {name!r} and its sync history?"):
        raise typer.Exit(EXIT_CANCELLED)
    from crmsync.secrets import SecretStore, forget_credentials

    _store().remove_profile(name)
    forget_credentials(SecretStore(_paths()), name)


def _profile_dict(p) -> dict[str, Any]:
    return {"name": p.name, "crm": p.crm, "groupware": p.groupware, "objects": p.objects,
            "settings": p.settings}


# --- settings ---------------------------------------------------------------------------

SETTINGS_HELP = " ".join("""
Settings and their VALUEs: mode off|manual|auto|record (record: calendar only);
conflict newest|crm|groupware|ask; delete_vs_update keep|crm|groupware|delete;
prevent: comma-separated side:operation switches never done, e.g.
crm:delete,groupware:create (none clears; sides crm, groupware; operations create,
update, delete); they override every other rule. past_days 0-30; future_days 0-365;
auto_every: minutes, at least 30; auto_days e.g. mon,tue,wed,thu,fri; auto_window
HH:MM-HH:MM (may wrap past midnight; 00:00-24:00 is all day); timezone: an IANA name
such as Europe/Berlin; include_private, shared: true|false; exclude_category: a
category name; exclude_attendee: a smart address (a local part, or a whole address
with @); an empty exclusion is off. Calendar selection all|matched|designated (which new
calendar events go to the CRM: all, those with an organizer or attendee the CRM has as a
Contact or Lead, or those designated by crm_category or smart_address);
match_alternate_emails true|false; crm_category: a category name; smart_address: a local
part or a whole address; record true|false (crmsync record allowed). After a change to
what is considered, the next run lists every item again. Invalid values exit with code 2.
""".split())

# Settings that change which items a run considers: after a change the next run lists
# every item again, so that items now in range or no longer excluded are seen.
_RESCAN = frozenset({"mode", "past_days", "future_days", "timezone", "include_private",
                     "exclude_category", "exclude_attendee", "shared", "selection",
                     "match_alternate_emails", "crm_category", "smart_address"})


@app.command("settings", epilog=SETTINGS_HELP)
def settings_command(
    name: Annotated[str, typer.Argument(help="The profile.")],
    obj: Annotated[str, typer.Argument(help="The object: calendar, contacts or tasks.")],
    key: Annotated[str | None, typer.Argument(help="One setting to show or set.",
                                              show_default=False)] = None,
    value: Annotated[str | None, typer.Argument(help="The new value (see below).",
                                                show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show an object's settings, show one (KEY), or validate and set one (KEY VALUE)."""
    from dataclasses import fields

    from crmsync.policy import Policy

    store = _store()
    profile = store.profile(name)
    if obj not in profile.objects:
        raise ConfigError(f"profile {name!r} does not sync {obj!r}; its objects: "
                          f"{', '.join(profile.objects)}")
    policy = Policy.of_profile(obj, profile.settings.get(obj))  # type: ignore[arg-type]
    known = [f.name for f in fields(Policy)]
    if key is not None and key not in known:
        raise ConfigError(f"unknown setting {key!r}; settings: {', '.join(known)}")
    if key is not None and value is not None:
        new = policy.with_setting(key, value)
        new.validate_for(obj)  # type: ignore[arg-type]
        profile.settings[obj] = new.to_dict()
        store.save_settings(profile)
        if key in _RESCAN and getattr(new, key) != getattr(policy, key):
            store.reset_cursors(profile.id, obj)  # type: ignore[arg-type]
        policy = new
    values = policy.to_dict()
    shown = {key: values[key]} if key is not None else values
    if json_out:
        _emit_json(shown)
        return
    if key is not None and value is None:
        sys.stdout.write(_setting_text(values[key]) + "\n")
        return
    from rich.table import Table

    table = Table(title=f"{name} {obj}", title_justify="left")
    table.add_column("setting")
    table.add_column("value")
    for k, v in shown.items():
        table.add_row(k, _setting_text(v))
    _console().print(table)


def _setting_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)


# --- sync -------------------------------------------------------------------------------


@app.command(epilog=EXIT_CODES_HELP)
def sync(
    name: Annotated[str, typer.Argument(help="The profile to sync.")],
    objects: Annotated[list[str] | None, typer.Option(
        "--object", "-o", help="Only this object (repeatable): calendar, contacts, tasks.",
        show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show the plan; write nothing.")] = False,
    yes: Annotated[bool, typer.Option(
        "--yes", "-y", help="Apply without asking.")] = False,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the plan (with --dry-run) or the run report as JSON.")] = False,
    allow_mass_delete: Annotated[bool, typer.Option(
        "--allow-mass-delete", help="Apply even when the mass-delete guard trips.")] = False,
    plan_out: Annotated[Path | None, typer.Option(
        "--plan-out", help="Save the plan to this file and write nothing; edit it if you "
        "like (remove steps or actions, choose conflict winners), then 'crmsync apply NAME "
        "FILE'.", show_default=False)] = None,
) -> None:
    """Sync a profile: plan, review, confirm, apply.

    The plan lists every create, update and delete, CRM items on the left, groupware
    items on the right. Nothing is written before you confirm (or pass --yes).
    """
    raise typer.Exit(_run_sync(name, objects, dry_run=dry_run, yes=yes, json_out=json_out,
                               allow_mass_delete=allow_mass_delete, plan_out=plan_out))


def _run_sync(name: str, objects: list[str] | None, plan_out: Path | None = None,
              **options: bool) -> int:
    syncer = _syncer(name)
    bar = _progress_bar(options["json_out"])
    try:
        off = syncer.switched_off(objects or None)  # type: ignore[arg-type]
        if off and not options["json_out"]:
            _console().print(f"Not synced (mode off): {', '.join(off)}. Turn one on with "
                             f"'crmsync settings {name} OBJECT mode manual'.", highlight=False)
        prepared = syncer.prepare(objects or None, bar)  # type: ignore[arg-type]
        if plan_out is not None:
            return _save_plan(syncer, prepared, plan_out, options["json_out"])
        return _sync_apply(syncer, prepared, [p.plan for p in prepared], off=off,
                           progress=bar, **options)
    finally:
        if bar is not None:
            bar.close()
        syncer.close()


def _save_plan(syncer, prepared, path: Path, json_out: bool) -> int:
    from crmsync import planfile, show
    from crmsync.store import now

    plans = [p.plan for p in prepared]
    data = planfile.dump(syncer.profile.name, syncer.profile.id, plans, now())
    try:
        path.write_text(planfile.dumps(data), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the plan to {path}: {exc.strerror}") from None
    report = syncer.record_dry_run(prepared)
    if json_out:
        _emit_json({"profile": syncer.profile.name, "plan_file": str(path),
                    "run": report.run_id, "counts": {p.kind: p.counts() for p in plans}})
    else:
        _console().print(f"Saved the plan ({show.summary(plans)}) to {path}; nothing was "
                         f"written. Apply it with 'crmsync apply {syncer.profile.name} "
                         f"{path}'.", highlight=False)
    return EXIT_OK


def _sync_apply(syncer, prepared, plans, *, dry_run: bool, yes: bool, json_out: bool,
                allow_mass_delete: bool, off: list[str] | tuple[str, ...] = (),
                progress=None) -> int:
    from crmsync import show

    interactive = sys.stdin.isatty() and not json_out
    reviewed = False
    if interactive and sys.stdout.isatty() and not (dry_run or yes) and any(
            p.writes or p.conflicts for p in plans):
        # The review screen: the user decides row by row, then confirms (or cancels).
        from crmsync.review import review

        decisions = review(plans, lambda d: [p.plan for p in syncer.decide(prepared, d)],
                           title=f"crmsync sync {syncer.profile.name}")
        if decisions is None:
            _console().print("Cancelled; nothing was written.")
            return EXIT_CANCELLED
        prepared = syncer.decide(prepared, decisions)
        plans = [p.plan for p in prepared]
        reviewed = True
    writes = sum(p.writes for p in plans)
    guard = {p.kind: p.guard for p in plans if p.guard}
    if reviewed:
        _console().print(f"Applying: {show.summary(plans)}")
    elif dry_run or not json_out:
        notes = {p.kind: [{"side": side, "reason": note} for side, note in p.notes]
                 for p in prepared if p.notes}
        if json_out:
            _emit_json({"profile": syncer.profile.name, "dry_run": True,
                        "objects": {p.kind: show.plan_dict(p) for p in plans},
                        "off": list(off), **({"warnings": notes} if notes else {})})
        else:
            console = _console()
            for plan in plans:
                if plan.steps:
                    console.print(show.plan_table(plan))
            console.print(f"Plan: {show.summary(plans)}")
            _print_warnings([(kind, n["side"], n["reason"]) for kind, ns in notes.items()
                             for n in ns])
    if dry_run:
        syncer.record_dry_run(prepared)
        return EXIT_OK
    if guard and not allow_mass_delete:
        msg = "; ".join(f"{kind}: {n} of {total} items in {side}"
                        for kind, g in guard.items() for side, (n, total) in g.items())
        if not (interactive and typer.confirm(
                f"The mass-delete guard tripped ({msg}). Delete them anyway?", default=False)):
            _console(stderr=True).print(
                f"[red]stopped:[/] this run would delete {msg}. Nothing was written. "
                "Check the other side, or pass --allow-mass-delete.")
            return EXIT_MASS_DELETE
    elif writes and not yes and not reviewed:
        if not interactive:
            raise ConfigError("refusing to write without confirmation: pass --yes, "
                              "or --dry-run to only look")
        if not typer.confirm(f"Apply {show.summary(plans)}?", default=False):
            _console().print("Cancelled; nothing was written.")
            return EXIT_CANCELLED
    report = syncer.run(prepared, progress=progress)
    return _report_out(report, json_out, {"off": list(off)} if off else {})


def _print_warnings(warnings: list[tuple[str, str | None, str]]) -> None:
    """What a listing noted (a fallback, items it cannot see): warnings, not failures."""
    from rich.markup import escape

    from crmsync.plan import SIDE_NAME

    for kind, side, reason in warnings:
        where = f"{kind}, {SIDE_NAME.get(side or '', side)}"
        _console(stderr=True).print(f"[yellow]warning[/] ({where}): {escape(reason)}",
                                    highlight=False)


def _report_out(report, json_out: bool, extra: dict[str, Any]) -> int:
    """Print a run's report; its exit code."""
    from crmsync import show

    if json_out:
        _emit_json(report.to_dict() | extra)
    else:
        _console().print(show.report_table(report))
        for obj in report.objects.values():
            for item in obj.items:
                if item.outcome in ("failed", "conflict"):
                    _console().print(f"  [red]{item.outcome}[/] {item.label}: {item.reason}")
                elif item.outcome == "skipped" and item.reason.startswith("not synced to "):
                    # Refused in advance by the side (a subject too long): not a failure,
                    # but the user has something to fix.
                    _console().print(f"  [yellow]skipped[/] {item.label}: {item.reason}")
        _print_warnings([(kind, i.side, i.reason) for kind, obj in report.objects.items()
                         for i in obj.items if i.outcome == "warning"])
    if report.failed:
        return EXIT_PARTIAL
    if report.conflicts:
        return EXIT_CONFLICTS
    return EXIT_OK


@app.command("apply", epilog=EXIT_CODES_HELP)
def apply_command(
    name: Annotated[str, typer.Argument(help="The profile the plan was made for.")],
    plan_file: Annotated[Path, typer.Argument(
        help="A plan saved by 'crmsync sync NAME --plan-out FILE', possibly edited.")],
    yes: Annotated[bool, typer.Option(
        "--yes", "-y", help="Also apply steps re-planned because their items changed "
        "since the plan was made (otherwise asked on a terminal, else left for the next "
        "run).")] = False,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the run report as JSON.")] = False,
    allow_mass_delete: Annotated[bool, typer.Option(
        "--allow-mass-delete", help="Apply even when the mass-delete guard trips.")] = False,
) -> None:
    """Apply a saved plan, after checking that nothing changed since it was made.

    Both sides are read again. Steps whose items are as they were are applied as the
    file says: steps or actions removed from it are not applied, and a conflict is
    resolved by its "choose" ("crm", "groupware" or "skip"). A step whose items changed
    meanwhile is planned again, never forced, and listed as re-planned; changes the file
    does not have are left for the next run. A plan for another profile is refused.
    """
    from crmsync import planfile

    try:
        text = plan_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise planfile.PlanFileError(f"cannot read the plan file {plan_file}: "
                                     f"{getattr(exc, 'strerror', None) or exc}") from None
    saved = planfile.load(text, str(plan_file))
    syncer = _syncer(name)
    bar = _progress_bar(json_out)
    try:
        checked = syncer.prepare_file(saved, bar)
        outcomes = [o for _, o in checked]
        replanned = {key: why for o in outcomes for key, why in o.replanned.items()}
        unseen = [s for o in outcomes for s in o.replanned_writes()]
        if not json_out:
            _show_replanned(outcomes, replanned)
        if unseen and not yes and not (
                sys.stdin.isatty() and not json_out
                and typer.confirm(f"Apply the {len(unseen)} re-planned step(s) too?",
                                  default=False)):
            for o in outcomes:
                o.hold_replanned()
            if not json_out:
                _console().print(f"Not applied: {len(unseen)} re-planned step(s) (pass "
                                 "--yes to apply them); they are left for the next run.",
                                 highlight=False)
        held = sum(len(o.held) for o in outcomes)
        if held and not json_out:
            _console().print(f"{held} change(s) not in the plan file are left for the next "
                             "run.", highlight=False)
        guard = {o.plan.kind: o.plan.guard for o in outcomes if o.plan.guard}
        if guard and not allow_mass_delete:
            msg = "; ".join(f"{kind}: {n} of {total} items in {side}"
                            for kind, g in guard.items() for side, (n, total) in g.items())
            _console(stderr=True).print(
                f"[red]stopped:[/] this plan would delete {msg}. Nothing was written. "
                "Pass --allow-mass-delete to apply it.")
            return_code = EXIT_MASS_DELETE
        else:
            report = syncer.run([p for p, _ in checked], progress=bar)
            return_code = _report_out(report, json_out, {
                "plan_file": str(plan_file), "replanned": replanned,
                "held": sorted(k for o in outcomes for k in o.held),
                "kept": sorted(k for o in outcomes for k in o.kept)})
    finally:
        if bar is not None:
            bar.close()
        syncer.close()
    raise typer.Exit(return_code)


def _show_replanned(outcomes, replanned: dict[str, str]) -> None:
    from crmsync import show

    console = _console()
    for key, why in replanned.items():
        console.print(f"re-planned {key}: {why}", highlight=False)
    for o in outcomes:
        steps = [s for s in o.plan.steps if s.key in replanned and s.actions]
        if steps:
            console.print(show.plan_table(type(o.plan)(o.plan.kind, steps)))


class _ProgressBar:
    """A Rich progress bar (counts and rate) for the core's progress reports, shown only
    once the work has taken more than a moment, and cleared when it is done."""

    # Seconds before a bar appears: short runs print nothing. $CRMSYNC_PROGRESS_DELAY
    # changes it (0: a bar at once).
    DELAY = 0.5

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
            console=_console(stderr=True), transient=True)
        self._tasks: dict[tuple[str, str], Any] = {}
        self._began = time.monotonic()
        self._shown = False
        self._delay = float(os.environ.get("CRMSYNC_PROGRESS_DELAY", self.DELAY))

    def __call__(self, phase: str, kind: str, done: int, total: int) -> None:
        key = (phase, kind)
        if key not in self._tasks:
            self._tasks[key] = self._progress.add_task(f"{phase} {kind}", total=total,
                                                       rate="")
        task = self._tasks[key]
        self._progress.update(task, completed=done, total=total)
        speed = self._progress.tasks[task].speed
        self._progress.update(task, rate=f"{speed:,.0f}/s" if speed else "")
        if not self._shown and time.monotonic() - self._began >= self._delay:
            self._shown = True
            self._progress.start()

    def close(self) -> None:
        if self._shown:
            self._progress.stop()


def _progress_bar(quiet: bool) -> _ProgressBar | None:
    """A progress bar on a terminal; None (no reports shown) when quiet or not a terminal."""
    if quiet or not sys.stderr.isatty():
        return None
    return _ProgressBar()


# --- ignore and record ---------------------------------------------------------------------


def _syncer(name: str):
    from crmsync.config import keep_days
    from crmsync.secrets import credentials_for
    from crmsync.sync import Syncer

    store = _store()
    profile = store.profile(name)
    paths = _paths()
    return Syncer(store, profile,
                  credentials=lambda side: credentials_for(paths, profile.name, side),
                  keep_days=keep_days(paths))


def _kind(obj: str):
    from crmsync.model import OBJECT_KINDS

    if obj not in OBJECT_KINDS:
        raise ConfigError(f"unknown object {obj!r}; choose from {', '.join(OBJECT_KINDS)}")
    return obj


def _side(side: str | None):
    if side not in (None, "crm", "groupware"):
        raise ConfigError("--side must be crm or groupware")
    return side


@app.command(epilog=EXIT_CODES_HELP)
def ignore(
    name: Annotated[str, typer.Argument(help="The profile.")],
    obj: Annotated[str | None, typer.Argument(
        help="The object: calendar, contacts or tasks.", show_default=False)] = None,
    item_id: Annotated[str | None, typer.Argument(
        help="The item's id on its side (as 'sync --dry-run --json' shows it).",
        show_default=False)] = None,
    forever: Annotated[bool, typer.Option(
        "--forever/--until-change", help="Ignore the item forever, or (default) its "
        "differences until either side changes it again.")] = False,
    side: Annotated[str | None, typer.Option(
        help="crm or groupware: where ITEM-ID lives (needed for an item not yet paired).",
        show_default=False)] = None,
    list_all: Annotated[bool, typer.Option("--list", help="List the profile's ignores.")
                        ] = False,
    lift: Annotated[bool, typer.Option("--lift", help="Lift the item's ignore (as "
                                       "'crmsync unignore').")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Ignore an item in the sync: its differences until one side changes, or forever.

    The run then skips it with the reason. 'crmsync ignore NAME --list' lists the ignores,
    'crmsync unignore NAME OBJ ITEM-ID' lifts one.
    """
    if list_all:
        store = _store()
        rows = store.ignores(store.profile(name).id)
        if json_out:
            _emit_json(rows)
        elif not rows:
            _console().print("No ignores.")
        for row in [] if json_out else rows:
            _console().print(f"{row['kind']:9} {row['side']:9} {row['mode']:12} "
                             f"{row['item_id']}  (since {row['created_at']})", highlight=False)
        return
    if obj is None or item_id is None:
        raise ConfigError("give OBJ and ITEM-ID (or --list)")
    if lift:
        unignore(name, obj, item_id, side, json_out)
        return
    syncer = _syncer(name)
    try:
        mode = "forever" if forever else "until-change"
        where = syncer.ignore(_kind(obj), item_id, _side(side), mode)  # type: ignore[arg-type]
    finally:
        syncer.close()
    if json_out:
        _emit_json({"kind": obj, "side": where, "item_id": item_id, "mode": mode})
    else:
        _console().print(f"Ignoring {obj} item {item_id} ({where}) "
                         f"{'forever' if forever else 'until one side changes'}.",
                         highlight=False)


@app.command(epilog=EXIT_CODES_HELP)
def unignore(
    name: Annotated[str, typer.Argument(help="The profile.")],
    obj: Annotated[str, typer.Argument(help="The object: calendar, contacts or tasks.")],
    item_id: Annotated[str, typer.Argument(help="The ignored item's id.")],
    side: Annotated[str | None, typer.Option(
        help="crm or groupware (default: either).", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Lift an item's ignore: the next run syncs it again."""
    store = _store()
    sides = [_side(side)] if side else ["crm", "groupware"]
    profile = store.profile(name)
    n = store.unignore(profile.id, _kind(obj), [(s, item_id) for s in sides])
    if not n:
        raise ConfigError(f"no ignore of {obj} item {item_id!r}; see "
                          f"'crmsync ignore {name} --list'")
    # The item may have been passed over unchanged since: the next run looks at all.
    store.reset_cursors(profile.id, obj)  # type: ignore[arg-type]
    if json_out:
        _emit_json({"kind": obj, "item_id": item_id, "lifted": n})
    else:
        _console().print(f"Lifted the ignore of {obj} item {item_id}.", highlight=False)


@app.command(epilog=EXIT_CODES_HELP)
def record(
    name: Annotated[str, typer.Argument(help="The profile.")],
    event: Annotated[str, typer.Argument(
        help="The groupware event: its UID, file name or href.")],
    relate: Annotated[list[str] | None, typer.Option(
        "--relate", help="Relate it to a CRM record: a Contact's or Lead's email, or a "
        "record Id (Contact/Lead: who; Account, Opportunity, ...: what). Repeatable.",
        show_default=False)] = None,
    field_values: Annotated[list[str] | None, typer.Option(
        "--field", help="Set a CRM Event field, KEY=VALUE (e.g. Type=Meeting). "
        "Repeatable.", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Record one groupware event in the CRM (SnapRecord), one way.

    Later changes to the event in the groupware follow to the CRM on the next sync (or
    when it is recorded again); changes made in the CRM never come back. Recording it
    again never duplicates it.
    Refused while calendar auto sync is on.
    """
    from crmsync.record import parse_fields, record_event

    fields = parse_fields(field_values or [])
    syncer = _syncer(name)
    try:
        done = record_event(syncer, event, relate or [], fields)
    except ItemError as exc:
        _console(stderr=True).print(f"[red]failed:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_PARTIAL) from None
    finally:
        syncer.close()
    if json_out:
        _emit_json(done.to_dict())
        return
    console = _console()
    if done.status == "recorded":
        console.print(f"Recorded {done.label} in the CRM as {done.crm_id}"
                      + (f", related to {', '.join(done.related)}" if done.related else "")
                      + ".", highlight=False)
    elif done.status == "updated":
        console.print(f"{done.label} was recorded as {done.crm_id}; sent its changes since.",
                      highlight=False)
    elif done.status == "already-recorded":
        console.print(f"{done.label} is already recorded as {done.crm_id}; its changes "
                      "follow on the next sync.", highlight=False)
    else:
        console.print(f"{done.label} already syncs with the CRM (two-way) as {done.crm_id}; "
                      "nothing to record.", highlight=False)
    if done.warning:
        _console(stderr=True).print(f"[yellow]warning:[/] {done.warning}", highlight=False)


@app.command(epilog=EXIT_CODES_HELP)
def repair(
    name: Annotated[str, typer.Argument(help="The profile.")],
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Report what is wrong; change nothing.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")
                        ] = False,
) -> None:
    """Find and fix duplicate UIDs, orphan pairs and missing kept CRM Ids.

    Lists both sides in full. Items sharing a UID on one side get a new UID (all but the
    paired one; on a CalDAV/CardDAV server, which cannot change a UID, the item is
    written anew under it before the old one is deleted). A pair whose items are gone on
    both sides is forgotten; one gone on one side is left to the next sync. Paired
    groupware items get the CRM Id they keep (X-CRMSYNC-CRM-ID). Exits 6 when something
    could not be fixed.
    """
    from crmsync.repair import find, fix

    syncer = _syncer(name)
    try:
        found = find(syncer)
        done = found if dry_run else fix(syncer, found)
    finally:
        syncer.close()
    if json_out:
        _emit_json(done.to_dict() | {"dry_run": dry_run})
    else:
        console = _console()
        if not done.findings:
            console.print("Nothing to repair.")
        for f in done.findings:
            where = f"{f.side} {f.item_id}" if f.item_id else ""
            console.print(f"{f.status:8} {f.kind:9} {f.problem:15} {where}  {f.detail}",
                          highlight=False)
        if done.findings:
            console.print(", ".join(f"{n} {code}" for code, n in done.counts().items()),
                          highlight=False)
    raise typer.Exit(EXIT_PARTIAL if done.unfixed else EXIT_OK)


@app.command(epilog=EXIT_CODES_HELP)
def verify(
    name: Annotated[str, typer.Argument(help="The profile.")],
    objects: Annotated[list[str] | None, typer.Option(
        "--object", help="Only this object (calendar, contacts, tasks); repeatable.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")
                        ] = False,
) -> None:
    """Check that both sides of every pair agree; change nothing.

    Lists both sides in full and compares each stored pair field by field through the
    mapping (a CRM copy cut to the CRM's limits agrees with its full original). Lists the
    pairs that differ, with the fields and both values, and the pairs that could not be
    compared (an item gone, ignored, recorded one-way). Exits 0 when every pair agrees,
    6 when some differ: the next sync carries a difference over once a side changes;
    until then, edit the item that is wrong.
    """
    from crmsync.verify import verify as check

    syncer = _syncer(name)
    try:
        for kind in objects or ():
            if kind not in syncer.profile.objects:
                raise ConfigError(f"profile {name!r} does not sync {kind}")
        report = check(syncer, objects or None)  # type: ignore[arg-type]
    finally:
        syncer.close()
    if json_out:
        _emit_json(report.to_dict())
    else:
        console = _console()
        for kind, obj in report.objects.items():
            parts = [f"{obj.pairs} pairs", f"{obj.agree} agree", f"{len(obj.divergent)} differ"]
            parts += [f"{n} unpaired in {SIDE_NAMES[side]}" for side, n in obj.unpaired.items()
                      if n]
            console.print(f"{kind}: {', '.join(parts)}", highlight=False)
            for d in obj.divergent:
                console.print(f"  differ  {d.label} (CRM {d.crm_id}, groupware {d.gw_id})",
                              highlight=False)
                for key, (crm, gw) in d.fields.items():
                    console.print(f"          {key}: CRM {_brief(crm)} | groupware "
                                  f"{_brief(gw)}", highlight=False)
            for o in obj.other:
                console.print(f"  --      {o.label or o.crm_id or o.gw_id}: {o.problem}",
                              highlight=False)
    raise typer.Exit(EXIT_PARTIAL if report.divergent else EXIT_OK)


SIDE_NAMES = {"crm": "CRM", "groupware": "groupware"}


def _brief(value: object) -> str:
    """A field value for one line: short ones as they are, long text by its length."""
    text = repr(value)
    if isinstance(value, str) and len(value) > 60:
        return f"{value[:40]!r}... ({len(value):,} characters)"
    return text if len(text) <= 80 else text[:77] + "..."


# --- status and history -------------------------------------------------------------------


@app.command()
def status(
    name: str,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a profile's objects, their last run and how many items are paired."""
    store = _store()
    profile = store.profile(name)
    last = store.last_runs(profile.id)
    counts = store.pair_counts(profile.id)
    data = {
        "profile": profile.name, "crm": profile.crm, "groupware": profile.groupware,
        "objects": {
            kind: {
                "paired": counts.get(kind, 0),
                "last_run": last[kind]["finished_at"] if kind in last else None,
                "last_status": last[kind]["status"] if kind in last else None,
            } for kind in profile.objects
        },
    }
    if json_out:
        _emit_json(data)
        return
    console = _console()
    console.print(f"[bold]{profile.name}[/]: {profile.crm} ⇄ {profile.groupware}")
    for kind, info in data["objects"].items():
        console.print(f"  {kind:9} {info['paired']:6} paired   last run: "
                      f"{info['last_run'] or 'never'} {info['last_status'] or ''}")


@app.command()
def history(
    name: Annotated[str, typer.Argument(help="The profile.")],
    run: Annotated[int | None, typer.Argument(help="Show this run in full.",
                                              show_default=False)] = None,
    limit: Annotated[int, typer.Option(help="How many runs to list.")] = 20,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List a profile's runs, or show one run with every item's outcome.

    Each run keeps its report: who started it, when, the mode (manual, auto, record,
    dry-run), counts per action and side, each skipped or failed item with its reason,
    the requests and API calls used and how long it took. Reports are kept 90 days
    (config.toml: [history] keep_days).
    """
    store = _store()
    profile = store.profile(name)
    data: Any = store.run(profile.id, run) if run is not None else store.runs(profile.id,
                                                                             limit)
    if json_out:
        _emit_json(data)
        return
    console = _console()
    if run is None:
        if not data:
            console.print("No runs yet.")
        for r in data:
            console.print(f"#{r['id']:<5} {r['started_at']}  {r['mode']:8} "
                          f"{r['status']:8} {_duration(r['duration_ms']):>7}  "
                          f"{r['started_by'] or '?':10} {_counts_text(r['counts'])}",
                          highlight=False, markup=False)
        return
    console.print(f"run #{data['id']} ({data['mode']}) by {data['started_by'] or '?'}: "
                  f"{data['started_at']} → {data['finished_at'] or '…'} "
                  f"({_duration(data['duration_ms'])}), {data['status']}",
                  highlight=False, markup=False)
    if data["error"]:
        console.print(f"  error: {data['error']}", highlight=False, markup=False)
    console.print(f"  {_counts_text(data['counts']) or 'nothing to do'}", highlight=False,
                  markup=False)
    usage = data["usage"]
    for side, n in usage.get("requests", {}).items():
        extra = usage.get("api", {}).get(side, {})
        more = ", ".join(f"{k} {v}" for k, v in extra.items())
        console.print(f"  {side}: {n} requests" + (f" ({more})" if more else ""),
                      highlight=False, markup=False)
    for item in data["items"]:
        console.print(f"  {item['outcome']:8} {item['kind']:9} {item['action']:18} "
                      f"{item['label'] or ''}" + (f": {item['reason']}" if item['reason']
                                                  else ""), highlight=False, markup=False)


@app.command(epilog=EXIT_CODES_HELP)
def undo(
    name: Annotated[str, typer.Argument(help="The profile.")],
    run: Annotated[int, typer.Argument(help="The run to undo (see 'crmsync history').")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be "
                                          "reverted.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Undo a run: revert its writes on both sides where the items were not changed since.

    Items changed since the run are reported and left alone (exit code 6). The undo is a
    run of its own (mode "undo") in the history, and can be undone in turn.
    """
    from crmsync.undo import undo as undo_run

    syncer = _syncer(name)
    try:
        if dry_run or not yes:  # what to show, or to ask about
            report = undo_run(syncer, run, dry_run=True)
            n = sum(c for o in report.objects.values() for k, c in o.counts.items()
                    if ":" in k)
            if not dry_run and not typer.confirm(f"Revert {n} writes of run {run}?"):
                raise typer.Exit(EXIT_CANCELLED)
        if not dry_run:
            report = undo_run(syncer, run)
    finally:
        syncer.close()
    items = [i for o in report.objects.values() for i in o.items]
    if json_out:
        _emit_json(report.to_dict())
    else:
        console = _console()
        for i in items:
            verb = {"applied": "would revert" if dry_run else "reverted"}.get(i.outcome,
                                                                              i.outcome)
            console.print(f"{verb:12} {i.kind} {i.action:17} {i.label}"
                          + (f"  ({i.reason})" if i.reason else ""),
                          highlight=False, markup=False)
    if any(i.outcome != "applied" for i in items):
        raise typer.Exit(EXIT_PARTIAL)


def _duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    return f"{ms / 1000:.1f}s" if ms < 60_000 else f"{ms // 60_000}m{ms % 60_000 // 1000:02}s"


def _counts_text(counts: dict[str, dict[str, int]]) -> str:
    return "; ".join(f"{kind}: " + ", ".join(f"{n} {code}" for code, n in c.items())
                     for kind, c in counts.items() if c)


@app.command()
def login(
    name: Annotated[str, typer.Argument(help="The profile.")],
    side: Annotated[str, typer.Option(help="crm or groupware.")] = "groupware",
    username: Annotated[str | None, typer.Option(
        help="User name (basic auth; the Salesforce user with --jwt-key).")] = None,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from standard input.")] = False,
    token_stdin: Annotated[bool, typer.Option(
        "--token-stdin", help="Read a bearer token from standard input.")] = False,
    ca_bundle: Annotated[Path | None, typer.Option(
        help="A PEM file of CA certificates to trust.")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Do not verify TLS certificates (not recommended).")] = False,
    client_id: Annotated[str | None, typer.Option(
        help="Salesforce: the connected app's consumer key (OAuth 2.0); Microsoft Graph: the app "
        "registration's application id.")] = None,
    client_secret_stdin: Annotated[bool, typer.Option(
        "--client-secret-stdin", help="Salesforce: read the consumer secret from standard "
        "input (first line), else $CRMSYNC_CRM_CLIENT_SECRET, else it is asked for.")] = False,
    login_url: Annotated[str | None, typer.Option(
        help="Salesforce: where to log in (default https://login.salesforce.com), e.g. "
        "https://test.salesforce.com, or the crmsync sandbox's own URL.",
        show_default=False)] = None,
    jwt_key: Annotated[Path | None, typer.Option(
        help="Salesforce JWT bearer flow (server edition): the private key (PEM) of the "
        "connected app's certificate; with --client-id and --username.")] = None,
    redirect_port: Annotated[int, typer.Option(
        help="Salesforce web server flow: port of the redirect listener on 127.0.0.1 "
        "(0: any free one).")] = 0,
    redirect_uri: Annotated[str | None, typer.Option(
        help="Salesforce web server flow: the callback URL registered for the app "
        "(http://localhost:PORT/PATH is listened on; required with --code-stdin).")] = None,
    code_stdin: Annotated[bool, typer.Option(
        "--code-stdin", help="Salesforce web server flow: read the authorization code (or "
        "the address redirected to) from standard input instead of listening.")] = False,
    no_browser: Annotated[bool, typer.Option(
        "--no-browser", help="Only print the authorize address; do not open a browser.")
    ] = False,
    timeout: Annotated[float, typer.Option(
        help="Salesforce web server flow: seconds to wait for the authorization.")] = 300,
) -> None:
    """Store a side's credentials, encrypted. Secrets are asked for, never arguments.

    For a salesforce: endpoint, authorize crmsync with OAuth 2.0: --client-id for the
    web server flow (a browser approves; a refresh token is saved), or --jwt-key,
    --client-id and --username for the JWT bearer flow. For an msgraph: endpoint, sign in
    to Microsoft with MSAL: --client-id and --login-url (the tenant's authority) for the
    device-code flow, plus --client-secret-stdin for the server edition's client
    credentials.
    """
    from crmsync.connectors.base import Credentials
    from crmsync.secrets import SecretStore, save_credentials

    if side not in ("crm", "groupware"):
        raise ConfigError("--side must be crm or groupware")
    profile = _store().profile(name)
    oauth = {"--client-id": client_id, "--client-secret-stdin": client_secret_stdin,
             "--login-url": login_url, "--jwt-key": jwt_key, "--code-stdin": code_stdin,
             "--redirect-uri": redirect_uri, "--redirect-port": redirect_port}
    tls = Credentials(verify=not insecure,
                      ca_bundle=str(ca_bundle.expanduser().resolve()) if ca_bundle else None)
    if _is_msgraph(profile, side) and not token_stdin:
        saved, what = _msgraph_login(name, side, tls, client_id=client_id,
                                     client_secret_stdin=client_secret_stdin,
                                     login_url=login_url)
        save_credentials(SecretStore(_paths()), name, side, saved)  # type: ignore[arg-type]
        _console().print(f"Saved the {side} credentials of {name} (encrypted): {what}.",
                         highlight=False)
        return
    if _is_salesforce(profile, side) and not token_stdin:
        saved, what = _salesforce_login(
            name, side, tls, username=username, client_id=client_id,
            client_secret_stdin=client_secret_stdin, login_url=login_url, jwt_key=jwt_key,
            redirect_port=redirect_port, redirect_uri=redirect_uri, code_stdin=code_stdin,
            browser=not no_browser, timeout=timeout)
        save_credentials(SecretStore(_paths()), name, side, saved)  # type: ignore[arg-type]
        _console().print(f"Saved the {side} credentials of {name} (encrypted): {what}.",
                         highlight=False)
        return
    if any(oauth.values()):
        raise ConfigError(f"{', '.join(k for k, v in oauth.items() if v)}: OAuth options are "
                          f"for a salesforce: endpoint, and the {side} side of {name} is not "
                          "one" + ("" if side == "crm" else " (pass --side crm)"))
    password = token = None
    if token_stdin:
        token = sys.stdin.readline().strip()
    elif password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif username:
        password = typer.prompt(f"Password for {username}", hide_input=True)
    save_credentials(SecretStore(_paths()), name, side,  # type: ignore[arg-type]
                     Credentials(username, password, token, tls.verify, tls.ca_bundle))
    _console().print(f"Saved the {side} credentials of {name} (encrypted).")


def _is_msgraph(profile, side: str) -> bool:
    return any(profile.endpoint(side, kind).startswith("msgraph:") for kind in profile.objects)


def _msgraph_login(name: str, side: str, tls, *, client_id: str | None,
                   client_secret_stdin: bool, login_url: str | None):
    """Microsoft identity platform through MSAL (see crmsync.connectors.graphapi): the
    device-code flow for a user, or with --client-secret-stdin the client credentials of
    the server edition. The credentials and a note of what they hold (never values)."""
    from crmsync.connectors.base import Credentials
    from crmsync.connectors.graphapi import AUTHORITY, acquire_token, device_login

    if not client_id:
        raise ConfigError(f"the {side} side of {name} is Microsoft Graph: give --client-id "
                          "(the app registration's application id) and --login-url "
                          "(https://login.microsoftonline.com/TENANT)")
    authority = (login_url or AUTHORITY).rstrip("/")
    if client_secret_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
        if not secret:
            raise ConfigError("the client secret is empty")
        creds = Credentials(client_id=client_id, client_secret=secret, login_url=authority,
                            verify=tls.verify, ca_bundle=tls.ca_bundle)
        acquire_token(creds)  # refused now rather than at the first sync
        return creds, ("client id, client secret, authority"
                       + (", CA bundle" if tls.ca_bundle else "") + " (client credentials)")

    def show(message: str) -> None:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()

    creds = device_login(client_id, login_url=authority, tls=tls, show=show)
    return creds, ("client id, refresh token, authority"
                   + (", CA bundle" if tls.ca_bundle else "") + " (device code)")


def _is_salesforce(profile, side: str) -> bool:
    return any(profile.endpoint(side, kind).startswith("salesforce:")
               for kind in profile.objects)


def _salesforce_login(name: str, side: str, tls, *, username: str | None,
                      client_id: str | None, client_secret_stdin: bool,
                      login_url: str | None, jwt_key: Path | None, redirect_port: int,
                      redirect_uri: str | None, code_stdin: bool, browser: bool,
                      timeout: float):
    """OAuth 2.0 at Salesforce (see crmsync.oauth_login): the credentials and a note of
    what they hold (names, never values)."""
    import os

    from crmsync import oauth_login
    from crmsync.connectors.sfapi import LOGIN_URL

    login_url = (login_url or LOGIN_URL).rstrip("/")
    if not client_id:
        raise ConfigError(f"the {side} side of {name} is Salesforce: give --client-id (the "
                          "connected app's consumer key) for the web server flow, or "
                          "--jwt-key, --client-id and --username for the JWT bearer flow")
    if jwt_key is not None:
        if not username:
            raise ConfigError("the JWT bearer flow needs --username (the Salesforce user)")
        pem = oauth_login.read_private_key(str(jwt_key))
        creds, _token = oauth_login.jwt_login(client_id=client_id, username=username,
                                              private_key=pem, login_url=login_url, tls=tls)
        return creds, ("client id, user name, private key, login URL"
                       + (", CA bundle" if tls.ca_bundle else "") + " (JWT bearer flow)")
    if code_stdin and not redirect_uri:
        raise ConfigError("--code-stdin needs --redirect-uri: the callback URL the code "
                          "was issued for")
    if client_secret_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
    else:
        secret = os.environ.get(f"CRMSYNC_{side.upper()}_CLIENT_SECRET") or typer.prompt(
            "Consumer secret of the connected app", hide_input=True, err=True)
    if not secret:
        raise ConfigError("the consumer secret is empty")

    def show(url: str) -> None:
        sys.stdout.write(("Open this address, approve, then paste the code (or the address "
                          "you were sent to):" if code_stdin else
                          f"Open this address to let crmsync in (waiting up to {timeout:g} "
                          "s):") + f"\n{url}\n")
        sys.stdout.flush()

    if code_stdin:
        assert redirect_uri is not None
        uri = redirect_uri
        code = oauth_login.pasted_login(client_id=client_id, redirect_uri=uri,
                                        login_url=login_url, show=show,
                                        read=sys.stdin.readline)
    else:
        with oauth_login.Listener(redirect_port, redirect_uri) as listener:
            uri = listener.redirect_uri
            code = oauth_login.browser_login(listener, client_id=client_id,
                                             login_url=login_url, timeout=timeout,
                                             show=show, browser=browser)
    creds, _token = oauth_login.finish_web_login(
        code, client_id=client_id, client_secret=secret, redirect_uri=uri,
        login_url=login_url, tls=tls)
    return creds, ("client id, client secret, refresh token, login URL"
                   + (", CA bundle" if tls.ca_bundle else "") + " (web server flow)")


@app.command()
def collections(
    endpoint: Annotated[str, typer.Argument(
        help="caldav:URL or carddav:URL of a server, principal or home.")],
    username: Annotated[str | None, typer.Option(help="User name (basic auth).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the calendars or address books at a CalDAV/CardDAV server, to pick one.

    The password comes from $CRMSYNC_GROUPWARE_PASSWORD, else it is asked for.
    """
    import os

    from crmsync.connectors import parse_endpoint
    from crmsync.connectors.base import Credentials

    scheme, url = parse_endpoint(endpoint)
    if scheme not in ("caldav", "carddav"):
        raise ConfigError("collections are listed for caldav: and carddav: endpoints")
    password = os.environ.get("CRMSYNC_GROUPWARE_PASSWORD")
    if username and password is None:
        password = typer.prompt(f"Password for {username}", hide_input=True)
    from crmsync.connectors.dav import discover

    found = discover(url, scheme, Credentials(username, password))  # type: ignore[arg-type]
    if not found:
        noun = "calendar" if scheme == "caldav" else "address book"
        raise ConfigError(f"no {noun} was found at {url}: it answers as a DAV server, but "
                          f"names no {noun} (nor a principal or home that holds one); give "
                          "the URL of your principal or home, or check the user name")
    rows = [{"endpoint": f"{scheme}:{c.url}", "name": c.name, "kind": c.kind,
             "components": sorted(c.components)} for c in found]
    if json_out:
        _emit_json(rows)
        return
    for row in rows:
        extra = f" ({', '.join(row['components'])})" if row["components"] else ""
        _console().print(f"{row['endpoint']}  {row['name']}{extra}")


secrets_app = typer.Typer(help="Manage the key that encrypts stored secrets.",
                          no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")


@secrets_app.command("new-key")
def secrets_new_key() -> None:
    """Print a new key for CRMSYNC_SECRET_KEY (put it first, the old one after a comma)."""
    from cryptography.fernet import Fernet

    sys.stdout.write(Fernet.generate_key().decode() + "\n")


@secrets_app.command("rotate")
def secrets_rotate() -> None:
    """Re-encrypt every stored secret with the first key in CRMSYNC_SECRET_KEY."""
    from crmsync.secrets import SecretStore

    n = SecretStore(_paths()).rotate()
    _console().print(f"Re-encrypted {n} secret(s).")


@app.command()
def demo(
    folder: Annotated[Path, typer.Option(
        "--dir", help="The demo's folder (cleared and made anew on every run).")
    ] = Path("crmsync-demo"),
    yes: Annotated[bool, typer.Option(
        "--yes", "-y", help="Apply the sync without asking.")] = False,
    keep_running: Annotated[bool, typer.Option(
        "--keep-running", help="Keep both servers up after the sync, until Ctrl-C, to "
        "edit items and sync again from another terminal.")] = False,
) -> None:
    """Try crmsync: a calendar server and a Salesforce sandbox with sample data.

    Starts an embedded Radicale (calendar, address book) and the Salesforce sandbox on
    loopback, fills both with a few weeks of sample meetings, contacts and tasks, creates
    the profile "demo" and runs a manual sync: the review first, nothing written before
    you confirm.
    """
    from crmsync.demo import running_demo

    console = _console()
    console.print("Starting the calendar server and the Salesforce sandbox ...")
    with running_demo(folder) as env:
        _state["home"] = env.home
        console.print(f"Groupware: Radicale at {env.radicale_url}\n"
                      f"CRM:       Salesforce sandbox at {env.sandbox_url}\n")
        review_only = not yes and not sys.stdin.isatty()
        code = _run_sync(env.profile, None, dry_run=review_only, yes=yes, json_out=False,
                         allow_mass_delete=False)
        again = f"crmsync --home {env.home} sync {env.profile}"
        if review_only:
            console.print("That was the review; nothing was written. Run "
                          "[bold]crmsync demo --yes[/] to apply it.")
        if keep_running:
            console.print(f"The servers keep running. Sync again from another terminal:\n"
                          f"  {again}\nPress Ctrl-C to stop them.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                console.print("Stopping the servers.")
    raise typer.Exit(code)


@app.command("sandbox")
def sandbox_command(
    port: Annotated[int, typer.Option(
        help="Port on 127.0.0.1 (0: any free port).")] = 8443,
    data: Annotated[Path | None, typer.Option(
        "--data", help="SQLite file that keeps the sandbox's records, tokens and keys "
        "between runs (default: in memory, gone at exit).", show_default=False)] = None,
    daily_limit: Annotated[int, typer.Option(
        help="API calls allowed per 24 hours (then REQUEST_LIMIT_EXCEEDED).")] = 15000,
) -> None:
    """Run a local Salesforce sandbox ("test mode") over HTTPS until Ctrl-C.

    It answers the part of Salesforce's REST API that crmsync uses, with OAuth, limits
    and Salesforce's errors. The connection details, secrets included, are written to a
    file readable only by you; they are never printed.
    """
    import os

    from crmsync.sandbox.server import Sandbox

    if data is not None:
        data.parent.mkdir(parents=True, exist_ok=True)
    try:
        sandbox = Sandbox(db_path=data, daily_limit=daily_limit, port=port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); "
                          "choose another --port, or 0 for any free one") from None
    console = _console()
    sandbox.start()
    # From here Ctrl-C stops the sandbox cleanly, even while the details are being
    # written or printed.
    try:
        details = Path(sandbox.files.ca_cert).with_name("connection.json")
        details.write_text(json.dumps({
            "instance_url": sandbox.url, "login_url": sandbox.login_url,
            "ca_path": sandbox.ca_path, "client_id": sandbox.client_id,
            "client_secret": sandbox.client_secret, "username": sandbox.username,
            "refresh_token": sandbox.refresh_token,
            "jwt_private_key_path": sandbox.jwt_private_key_path}, indent=2) + "\n")
        os.chmod(details, 0o600)
        console.print(f"Salesforce sandbox running at [bold]{sandbox.url}[/]", highlight=False)
        console.print(f"  trust this CA:   {sandbox.ca_path}\n"
                      f"  client id:       {sandbox.client_id}\n"
                      f"  username:        {sandbox.username}\n"
                      f"  JWT signing key: {sandbox.jwt_private_key_path}\n"
                      f"  secrets (client secret, refresh token): {details}\n"
                      f"  daily API limit: {daily_limit}", highlight=False, markup=False)
        console.print("Connect a client with OAuth (refresh token, authorization code or JWT "
                      f"bearer) at {sandbox.login_url}/services/oauth2/token, then call "
                      f"{sandbox.url}/services/data/v62.0/. Press Ctrl-C to stop.",
                      highlight=False, markup=False)
        sandbox.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    console.print("Sandbox stopped.")



# --- the server edition ------------------------------------------------------------------

user_app = typer.Typer(help="Manage the accounts of the crmsync server (crmsync serve).",
                       no_args_is_help=True)
app.add_typer(user_app, name="user")


def _server_store(database: str | None):
    from crmsync.config import store_url
    from crmsync.store import Store

    return Store.open(database or store_url(_paths()))


_DATABASE_HELP = ("The server's store (SQLAlchemy URL, e.g. postgresql+psycopg://...); "
                  "default: config.toml's \\[store] url, else SQLite in the data folder.")
# The --database option of the server's commands.
_ServerDatabase = Annotated[str | None, typer.Option(help=_DATABASE_HELP, show_default=False)]


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    database: _ServerDatabase = None,
    workers: Annotated[int, typer.Option(
        help="Sync jobs run at once, in this process (0: queue only, run none).")] = 2,
    public_url: Annotated[str | None, typer.Option(
        help="The server's address as browsers reach it (behind a proxy), e.g. "
        "https://crmsync.example.com; used for the Salesforce OAuth callback.",
        show_default=False)] = None,
    salesforce_client_id: Annotated[str | None, typer.Option(
        help="Consumer key of the server's Salesforce connected app (its secret comes "
        "from $CRMSYNC_SALESFORCE_CLIENT_SECRET). Its callback URL is PUBLIC_URL"
        "/api/connections/crm/callback.", show_default=False)] = None,
    salesforce_login_url: Annotated[str | None, typer.Option(
        help="Where users log in to Salesforce (default https://login.salesforce.com).",
        show_default=False)] = None,
    salesforce_ca_bundle: Annotated[Path | None, typer.Option(
        help="A CA bundle to trust for Salesforce (the crmsync sandbox's own CA).",
        show_default=False)] = None,
    insecure_cookies: Annotated[bool, typer.Option(
        "--insecure-cookies", help="Send the session cookie over plain http too (only "
        "for development on a machine of your own; browsers allow Secure cookies on "
        "http://localhost anyway).")] = False,
) -> None:
    """Run the crmsync server: web app, job workers and scheduler in one process.

    Embedded mode: the store is SQLite in the data folder unless --database says
    otherwise; jobs wait in the store's jobs table, so queued and interrupted runs
    survive a restart. With a PostgreSQL --database, jobs go through Procrastinate, and
    `crmsync worker` processes on other machines take them too. Secrets are encrypted
    with $CRMSYNC_SERVER_KEYS (comma-separated Fernet keys, newest first) or server.key
    in the data folder, made on first start.
    """
    import logging
    import os

    import uvicorn

    from crmsync.config import keep_days
    from crmsync.server import service
    from crmsync.server.queue import EmbeddedQueue, JobQueue, Workers
    from crmsync.server.scheduler import Scheduler
    from crmsync.server.vault import Vault, load_keys
    from crmsync.server.web import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    paths = _paths()
    store = _server_store(database)
    vault = Vault(store, load_keys(paths.data_dir))
    salesforce = None
    if salesforce_client_id:
        secret = os.environ.get("CRMSYNC_SALESFORCE_CLIENT_SECRET", "")
        if not secret:
            raise ConfigError("--salesforce-client-id needs the connected app's secret in "
                              "$CRMSYNC_SALESFORCE_CLIENT_SECRET")
        from crmsync.connectors.sfapi import LOGIN_URL

        salesforce = service.SalesforceApp(
            salesforce_client_id, secret, (salesforce_login_url or LOGIN_URL).rstrip("/"),
            str(salesforce_ca_bundle.resolve()) if salesforce_ca_bundle else None)
    service.use_vault(store, vault)
    days = keep_days(paths)

    def job(user_id: int, kind: str) -> None:
        service.run_job(store, user_id, kind, vault=vault, keep_days=days)

    # Embedded: the store's jobs table and worker threads. PostgreSQL: Procrastinate, and
    # any number of `crmsync worker` processes may help this one.
    queue: JobQueue
    if store.engine.dialect.name == "postgresql":
        from crmsync.server import pgqueue

        queue = pgqueue.ProcrastinateQueue(store.engine, job)
        runner: Any = pgqueue.Workers(queue, workers) if workers else None
    else:
        queue = EmbeddedQueue(store.engine)
        runner = Workers(queue, job, count=workers) if workers else None
    scheduler = Scheduler(store.engine, queue, lambda: service.scheduled(store), every=30.0)
    app_ = create_app(store, queue, vault=vault, salesforce=salesforce,
                      secure_cookies=not insecure_cookies, public_url=public_url)
    if runner is not None:
        runner.start()  # puts the jobs a stop or crash interrupted back on the queue
    scheduler.start()
    _quiet_access_log()
    _console(stderr=True).print(f"crmsync server on http://{host}:{port} "
                                f"({workers} worker(s))", highlight=False)
    try:
        uvicorn.run(app_, host=host, port=port, log_config=None)
    finally:
        scheduler.stop(timeout=30)
        if runner is not None:
            runner.stop(timeout=30)
        queue.close()
        store.close()


def _quiet_access_log() -> None:
    """Access log lines without query strings: an OAuth callback's carries a code."""
    import logging

    class _NoQuery(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            args = record.args
            if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
                record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
            return True

    logging.getLogger("uvicorn.access").addFilter(_NoQuery())


@user_app.command("add")
def user_add(
    email: Annotated[str, typer.Argument(help="The user's email: their sign-in name.")],
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an admin.")] = False,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from standard input (first line) "
        "instead of asking.")] = False,
    database: _ServerDatabase = None,
) -> None:
    """Add a user of the server (with their own, empty profile)."""
    from crmsync.server import accounts

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    user = accounts.create_user(_server_store(database), email, password, is_admin=admin)
    _console().print(f"Added {'admin' if user.is_admin else 'user'} {user.email}.",
                     highlight=False)


@user_app.command("list")
def user_list(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    database: _ServerDatabase = None,
) -> None:
    """List the server's users."""
    from crmsync.server import accounts

    rows = [{"id": u.id, "email": u.email, "admin": u.is_admin, "disabled": u.disabled}
            for u in accounts.list_users(_server_store(database))]
    if json_out:
        _emit_json(rows)
        return
    for row in rows:
        _console().print(f"{row['email']}{' (admin)' if row['admin'] else ''}",
                         highlight=False)


@user_app.command("rotate-keys")
def user_rotate_keys(
    database: _ServerDatabase = None,
) -> None:
    """Re-encrypt every user's secrets with the first key in $CRMSYNC_SERVER_KEYS."""
    from crmsync.server.vault import Vault, load_keys

    store = _server_store(database)
    n = Vault(store, load_keys(_paths().data_dir)).rotate()
    _console().print(f"Re-encrypted {n} secret(s).")
# --- the server at scale: workers and schedulers on the PostgreSQL job queue --------------

_SCALE_DATABASE_HELP = ("The server's PostgreSQL store, postgresql://user@host/db (the job "
                        "queue lives there too). Prefer $CRMSYNC_DATABASE: a password in "
                        "it stays out of the process list.")
_ScaleDatabase = Annotated[str, typer.Option("--database", envvar="CRMSYNC_DATABASE",
                                             help=_SCALE_DATABASE_HELP, show_default=False)]


def _scale_store(database: str):
    from crmsync.server.pgqueue import sqlalchemy_url
    from crmsync.store import Store

    return Store.open(sqlalchemy_url(database).render_as_string(hide_password=False))


@app.command("worker")
def worker_command(
    database: _ScaleDatabase,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", min=1, help="Jobs this worker runs at the same time.")] = 2,
    stalled_after: Annotated[float, typer.Option(
        "--stalled-after", min=1.0, help="Seconds without a heartbeat after which a "
        "worker counts as dead and its jobs run again elsewhere.")] = 30.0,
    job: Annotated[str, typer.Option(
        "--job", hidden=True, help="The job, module:function(store, user_id, kind).")
    ] = "crmsync.server.service:run_job",
) -> None:
    """Run users' sync jobs from the job queue until stopped (SIGTERM or Ctrl-C).

    Start as many workers as you like, on any machine that reaches the database. A
    stopping worker finishes its running jobs; one that dies has them run again.
    """
    from crmsync.server.pgqueue import ProcrastinateQueue, Workers
    from crmsync.server.queue import bind_job

    store = _scale_store(database)
    queue = ProcrastinateQueue(store.engine, bind_job(store, job), stalled_after=stalled_after)
    _console(stderr=True).print(f"Worker running {concurrency} job(s) at a time. "
                                "Stop with Ctrl-C.", highlight=False)
    try:
        Workers(queue, concurrency).run()
    finally:
        queue.close()
        store.close()


@app.command("scheduler")
def scheduler_command(
    database: _ScaleDatabase,
    every: Annotated[float, typer.Option(
        "--every", min=1.0, help="Seconds between looks for due runs.")] = 60.0,
    once: Annotated[bool, typer.Option(
        "--once", help="Look once, queue what is due, print what it cost and exit.")
    ] = False,
    candidates: Annotated[str, typer.Option(
        "--candidates", hidden=True, help="The scheduled objects, module:function(store).")
    ] = "crmsync.server.service:scheduled",
) -> None:
    """Queue every user's due auto-sync runs, every --every seconds, until stopped.

    Any number may run (``crmsync serve`` runs one too): each due run is queued once.
    """
    import signal

    from crmsync.server.pgqueue import ProcrastinateQueue
    from crmsync.server.scheduler import Scheduler, service_candidates

    store = _scale_store(database)
    queue = ProcrastinateQueue(store.engine)
    scheduler = Scheduler(store.engine, queue, service_candidates(store, candidates), every)
    try:
        if once:
            r = scheduler.run_once()
            _console().print(f"{r.candidates} scheduled, {r.queued} queued; asking "
                             f"{r.candidates_seconds:.3f}s, tick {r.tick_seconds:.3f}s",
                             highlight=False)
            return
        signal.signal(signal.SIGTERM, lambda *_: scheduler.stop())
        _console(stderr=True).print(f"Scheduler looking every {every:g}s. Stop with Ctrl-C.",
                                    highlight=False)
        scheduler.run()
    finally:
        queue.close()
        store.close()


@app.command("graph-sandbox")
def graph_sandbox_command(
    port: Annotated[int, typer.Option(
        help="Port on 127.0.0.1 (0: any free port).")] = 8444,
    data: Annotated[Path | None, typer.Option(
        "--data", help="SQLite file that keeps the mailboxes between runs (default: in "
        "memory, gone at exit).", show_default=False)] = None,
) -> None:
    """Run a local Microsoft Graph sandbox (Outlook calendar, contacts, To Do) over HTTPS.

    It answers the part of Graph v1.0 crmsync uses and the identity platform's token and
    device-code endpoints (MSAL works against it). Use it as the groupware of a profile,
    e.g. msgraph:me?graph_url=URL, and log in with --login-url AUTHORITY. Secrets go to
    a file readable only by you; they are never printed.
    """
    import os

    from crmsync.graphsandbox.server import GraphSandbox

    if data is not None:
        data.parent.mkdir(parents=True, exist_ok=True)
    try:
        sandbox = GraphSandbox(db_path=data, port=port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); "
                          "choose another --port, or 0 for any free one") from None
    sandbox.start()
    details = Path(sandbox.files.ca_cert).with_name("graph-connection.json")
    details.write_text(json.dumps({
        "graph_url": sandbox.url, "authority": sandbox.authority, "ca_path": sandbox.ca_path,
        "client_id": sandbox.client_id, "client_secret": sandbox.client_secret,
        "user": sandbox.user, "refresh_token": sandbox.refresh_token}, indent=2) + "\n")
    os.chmod(details, 0o600)
    console = _console()
    console.print(f"Graph sandbox running at [bold]{sandbox.url}/v1.0[/]", highlight=False)
    console.print(f"  authority (--login-url): {sandbox.authority}\n"
                  f"  trust this CA:           {sandbox.ca_path}\n"
                  f"  client id:               {sandbox.client_id}\n"
                  f"  mailbox:                 {sandbox.user}\n"
                  f"  secrets (client secret, refresh token): {details}\n"
                  f"  sent mail log:           {sandbox.url}/_sandbox/mail",
                  highlight=False, markup=False)
    console.print("Approve device-code logins with POST /_sandbox/device/approve "
                  '{"user_code": ...}. Press Ctrl-C to stop.', highlight=False, markup=False)
    try:
        sandbox.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    console.print("Graph sandbox stopped.")


def main() -> None:
    # Every command lets its typed errors through to here: one place says what went wrong
    # and exits with the error's code (see the exit codes above).
    try:
        app()
    except CrmsyncError as exc:
        _console(stderr=True).print(f"[red]error:[/] {exc}", markup=True, highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
