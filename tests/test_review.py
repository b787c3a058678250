"""The review screen driven headless (Textual's ``run_test`` and pilot) on real sides:
an embedded Radicale and the Salesforce sandbox (tests/scenario.py).

The app only collects decisions; what was written is read back from both servers and the
state store after the core applied them (``Syncer.decide`` and ``Syncer.run``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from crmsync.model import Event, Occurrence, moment
from crmsync.plan import Action, Decisions, Step
from crmsync.review import ReviewApp, detail_text, summary
from crmsync.sync import Prepared, Syncer
from scenario import Scenario, sf_time

from conftest import item

START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=3)


def ev(uid: str, summary: str, hours: int = 0, **fields) -> Event:
    start = START + timedelta(hours=hours)
    return Event(uid=uid, summary=summary, start=moment(start),
                 end=moment(start + timedelta(minutes=30)), **fields)


def title(step: Step) -> str:
    """The step's event summary (labels also carry the time)."""
    item = step.crm or step.gw
    assert item is not None
    return item.record().summary


def subjects(scn: Scenario) -> set[str]:
    return {r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event")}


@pytest.fixture
def world(scn: Scenario) -> Iterator[tuple[Scenario, Syncer, list[Prepared]]]:
    """A conflict ("Renewal", rule ask), three new calendar events and one new CRM event,
    prepared but not applied."""
    scn.put(ev("renewal@t", "Renewal"))
    scn.sync()
    [crm_id] = [r["Id"] for r in scn.crm_query("SELECT Id FROM Event")]
    scn.cli("settings", "p", "calendar", "conflict", "ask", check=0)
    scn.crm_update("Event", crm_id, Subject="Renewal (CRM)")
    scn.edit("renewal@t", summary="Renewal (calendar)")
    for n, name in enumerate(("Alpha", "Bravo", "Charlie"), start=1):
        scn.put(ev(f"{name.lower()}@t", name, hours=n))
    scn.crm_insert("Event", Subject="Delta", StartDateTime=sf_time(START + timedelta(hours=5)),
                   EndDateTime=sf_time(START + timedelta(hours=6)))
    syncer = scn.syncer()
    try:
        yield scn, syncer, syncer.prepare(["calendar"])
    finally:
        syncer.close()
        syncer.store.close()


def drive(syncer: Syncer, prepared: list[Prepared],
          script: Callable[[ReviewApp, object], object]) -> Decisions | None:
    """Run the review headless with ``script(app, pilot)``; what it returned."""
    app = ReviewApp([p.plan for p in prepared],
                    lambda d: [p.plan for p in syncer.decide(prepared, d)])

    async def main() -> None:
        async with app.run_test(size=(160, 50)) as pilot:
            await script(app, pilot)  # type: ignore[misc]

    asyncio.run(main())
    return app.return_value


async def go_to(app: ReviewApp, pilot, label: str) -> None:
    """Move the cursor with the arrow keys to the row whose item is ``label``."""
    def row() -> int:
        return next(i for i, k in enumerate(app.shown)
                    if label in (app.steps[k][1].label() or ""))

    while app.current_key() != app.shown[row()]:
        await pilot.press("down" if app.query_one("DataTable").cursor_row < row() else "up")


def key_of(prepared: list[Prepared], label: str) -> str:
    return next(s.key for p in prepared for s in p.plan.steps if label in s.label())


def test_review_decides_row_by_row_and_the_core_writes_just_that(world):
    scn, syncer, prepared = world
    shown: list[str] = []

    async def script(app: ReviewApp, pilot) -> None:
        # Alpha and Bravo, selected together (space, shift+down), are excluded at once.
        await go_to(app, pilot, "Alpha")
        await pilot.press("space", "shift+down")
        assert {title(app.steps[k][1]) for k in app.selected} == {"Alpha", "Bravo"}
        await pilot.press("x")
        # Bravo is then ignored forever, Delta (from the CRM) until it changes.
        await go_to(app, pilot, "Bravo")
        await pilot.press("f")
        await go_to(app, pilot, "Delta")
        await pilot.press("u")
        # The conflict: the groupware wins. Its detail shows both values.
        await go_to(app, pilot, "Renewal")
        detail = str(app.query_one("#detail").render())
        assert "Renewal (CRM)" in detail and "Renewal (calendar)" in detail
        await pilot.press("g")
        await pilot.press("y")
        shown.append(str(app.screen.query_one("#summary").render()))
        await pilot.click("#apply")

    decisions = drive(syncer, prepared, script)
    assert decisions is not None
    assert shown == ["1 create in CRM, 1 update in CRM; 1 excluded, 1 ignored until a change, "
                     "1 ignored forever ... apply?"]
    report = syncer.run(syncer.decide(prepared, decisions))
    assert report.status == "ok"
    # CRM: Charlie created, the conflict resolved for the calendar; Alpha and Bravo not.
    assert subjects(scn) == {"Renewal (calendar)", "Charlie", "Delta"}
    # Groupware: Delta (ignored) not created; the calendar's own items untouched.
    assert {e.summary for e in scn.records().values()} == {
        "Renewal (calendar)", "Alpha", "Bravo", "Charlie"}
    ignores = {(i["side"], i["mode"]) for i in syncer.store.ignores(syncer.profile.id)}
    assert ignores == {("groupware", "forever"), ("crm", "until-change")}
    # Next run: the excluded Alpha comes back; Bravo and Delta stay ignored.
    plans, _ = scn.sync()
    # (The CRM's listing shows Delta again, and the planner skips it as ignored.)
    again = {title(s): [(a.code, a.reason) for a in s.actions] for s in plans[0].steps}
    assert again == {"Alpha": [("create:crm", "")], "Delta": [
        ("skip", "differences ignored until one side changes")]}
    assert "Alpha" in subjects(scn)


def test_cancel_writes_nothing(world):
    scn, syncer, prepared = world
    before_crm, before_gw = subjects(scn), scn.records()

    async def script(app: ReviewApp, pilot) -> None:
        await pilot.press("x", "f", "y")  # choices, and the summary shown ...
        await pilot.press("n")            # ... then back, and cancel
        await pilot.press("q")

    assert drive(syncer, prepared, script) is None
    assert subjects(scn) == before_crm and scn.records() == before_gw
    assert syncer.store.ignores(syncer.profile.id) == []


def test_filters_and_the_mouse(world):
    _, syncer, prepared = world
    rows: dict[str, int] = {}

    async def script(app: ReviewApp, pilot) -> None:
        rows["all"] = len(app.shown)
        await pilot.press("a", "a")  # action: create, then update
        rows["update"] = len(app.shown)
        await pilot.press("a")  # delete
        rows["delete"] = len(app.shown)
        await pilot.press("a")  # conflict
        rows["conflict"] = len(app.shown)
        await pilot.press("a", "a", "o", "o")  # action back to all; object: calendar
        rows["calendar"] = len(app.shown)
        # A click on the second row moves the cursor there.
        await pilot.click("#rows", offset=(5, 2))
        rows["cursor"] = app.query_one("DataTable").cursor_row
        await pilot.press("q")

    decisions = drive(syncer, prepared, script)
    assert decisions is None
    assert rows == {"all": 5, "update": 0, "delete": 0, "conflict": 1, "calendar": 5,
                    "cursor": 1}


def test_a_side_wins_only_a_conflict(world):
    _, syncer, prepared = world
    renewal = key_of(prepared, "Renewal")

    async def script(app: ReviewApp, pilot) -> None:
        await go_to(app, pilot, "Charlie")
        await pilot.press("c")  # not a conflict: nothing chosen
        await go_to(app, pilot, "Renewal")
        await pilot.press("c", "y", "y")

    decisions = drive(syncer, prepared, script)
    assert decisions is not None and decisions.choices == {renewal: "crm"}
    decided = syncer.decide(prepared, decisions)[0].plan
    step = next(s for s in decided.steps if s.key == renewal)
    assert [(a.code, a.changes) for a in step.actions] == [
        ("update:groupware", {"summary": "Renewal (CRM)"})]


def test_detail_shows_old_and_new_per_field_and_occurrences(world):
    _, syncer, prepared = world
    plan = prepared[0].plan
    conflict = next(s for s in plan.steps if "Renewal" in s.label())
    text = str(detail_text("calendar", conflict))
    assert "summary: CRM Renewal (CRM)  |  groupware Renewal (calendar)" in text
    rid = moment(START + timedelta(days=7))
    base = ev("s@t", "Weekly", rrule="FREQ=WEEKLY;COUNT=4")
    moved = ev("s@t", "Weekly", rrule="FREQ=WEEKLY;COUNT=4",
               overrides={rid: Occurrence(summary="Weekly (moved)", start=rid)})
    step = Step("calendar", None, item(base, "c1"), item(moved, "g1"), [Action(
        "update", "crm", changes={f"overrides/{rid}": moved.overrides[rid].fields()})])
    lines = str(detail_text("calendar", step))
    assert (f"occurrence {rid}: start — -> {rid}; status — -> confirmed; "
            "summary — -> Weekly (moved)") in lines
    assert summary([plan], Decisions()) == (
        "1 conflict left for later, 3 creates in CRM, 1 create in groupware")


def renewals(scn: Scenario) -> tuple[list[str], list[str]]:
    """The Renewal events' summaries on each side (CRM, groupware), sorted."""
    crm = sorted(s for s in (r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event"))
                 if s.startswith("Renewal"))
    gw = sorted(e.summary for e in scn.records().values() if e.summary.startswith("Renewal"))
    return crm, gw


BOTH = ["Renewal (CRM)", "Renewal (calendar)"]


def keep_both(syncer: Syncer, prepared: list[Prepared]) -> list[Prepared]:
    """The review: the conflict kept both ways (b), every other row excluded (x)."""
    async def script(app: ReviewApp, pilot) -> None:
        for key in app.shown:
            if "Renewal" not in app.steps[key][1].label():
                app.selected.add(key)
        await pilot.press("x")
        await go_to(app, pilot, "Renewal")
        await pilot.press("b")
        assert "(both kept)" in str(app._cells(app.current_key(), "calendar",
                                              app.steps[app.current_key()][1])[3])
        await pilot.press("y")
        assert str(app.screen.query_one("#summary").render()).startswith(
            "1 create in CRM, 1 create in groupware; 4 excluded")
        await pilot.click("#apply")

    decisions = drive(syncer, prepared, script)
    assert decisions is not None
    return syncer.decide(prepared, decisions)


def test_keep_both_leaves_each_version_on_both_sides_and_nothing_more(world):
    scn, syncer, prepared = world
    report = syncer.run(keep_both(syncer, prepared))
    assert report.status == "ok", report.to_dict()
    assert renewals(scn) == (BOTH, BOTH)
    # Each item is paired with its copy: the next runs find nothing to do for them.
    for _ in range(2):
        plans, _ = scn.sync()
        assert [s.actions for s in plans[0].steps if "Renewal" in s.label()] == []
    assert renewals(scn) == (BOTH, BOTH)
    # The two Renewal pairs, and the four rows excluded in the review, synced since.
    assert len(syncer.store.pairs(syncer.profile.id, "calendar")) == 2 + 4


def test_keep_both_stopped_after_its_copies_were_made_pairs_them_on_the_next_run(world):
    from crmsync.errors import ConnectionFailed

    from sfsandbox import control

    scn, syncer, prepared = world
    decided = keep_both(syncer, prepared)
    # The CRM makes the copy, but its answer is lost: the run stops there.
    control(scn.sandbox, "faults", path_regex="/composite/sobjects$", method="POST",
            status=503, times=1, after=True)
    with pytest.raises(ConnectionFailed):
        syncer.run(decided)
    # The CRM (written first) has its copy; the groupware's copy was never made.
    assert renewals(scn) == (BOTH, ["Renewal (calendar)"])
    # The next run pairs the CRM's copy with the calendar's item by content and makes
    # the missing copy; the one after has nothing left to do. No duplicates.
    plans, report = scn.sync()
    assert report.status == "ok", report.to_dict()
    assert sorted(a.code for s in plans[0].steps if "Renewal" in s.label()
                  for a in s.actions) == ["create:groupware", "link"]
    assert renewals(scn) == (BOTH, BOTH)
    plans, _ = scn.sync()
    assert [s for s in plans[0].steps if "Renewal" in s.label()] == []
