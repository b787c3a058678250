"""The planner is pure: these tests build its three views by hand and read the plan."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from crmsync.connectors.vdir import VdirConnector
from crmsync.model import Attendee, Contact, Occurrence, Phone, Task
from crmsync.plan import Decisions, Ignore, Pair, View, decide, make_plan, pair_up
from crmsync.policy import Policy

from conftest import day, event, item

COMMON = VdirConnector(".", "crm").capabilities.fields["calendar"]


def paired(crm_now, gw_now, crm_base, gw_base=None):
    """A stored pair whose bases are ``crm_base``/``gw_base`` (the same by default)."""
    gw_base = gw_base or crm_base
    cb, gb = item(crm_base, "c1", "b1"), item(gw_base, "g1", "b1")
    pair = Pair(1, "calendar", "c1", "b1", "g1", "b1", crm_base=cb, gw_base=gb)
    cur = {}
    for side, now, base in (("crm", crm_now, cb), ("gw", gw_now, gb)):
        if now is None:
            cur[side] = None
        elif now == "same":
            cur[side] = base
        else:
            cur[side] = item(now, base.id, "v2", modified=now.__dict__.pop("_modified", None))
    return View(pair, cur["crm"], cur["gw"])


def plan_of(*views, policy: Policy | None = None, **kw):
    return make_plan("calendar", list(views), policy or Policy(), COMMON, **kw)


def ops(plan):
    return [(a.op, a.side) for _, a in plan.actions()]


BASE = event("u1", "Kickoff", location="Room 1")


def test_one_side_changed_updates_the_other_with_just_that_field():
    view = paired(event("u1", "Kickoff", location="Room 2"), "same", BASE)
    plan = plan_of(view)
    assert ops(plan) == [("update", "groupware")]
    assert plan.steps[0].actions[0].changes == {"location": "Room 2"}


def test_different_fields_changed_on_both_sides_merge_without_conflict():
    view = paired(event("u1", "Kickoff!", location="Room 1"),
                  event("u1", "Kickoff", location="Room 9"), BASE)
    plan = plan_of(view)
    assert sorted(ops(plan)) == [("update", "crm"), ("update", "groupware")]
    by_side = {a.side: a.changes for _, a in plan.actions()}
    assert by_side == {"crm": {"location": "Room 9"}, "groupware": {"summary": "Kickoff!"}}


def test_same_change_on_both_sides_writes_nothing():
    view = paired(event("u1", "Same"), event("u1", "Same"), BASE)
    assert ops(plan_of(view)) == []


@pytest.mark.parametrize(("rule", "crm_time", "gw_time", "winner"), [
    ("newest", "2026-11-20T10:00:00Z", "2026-11-21T10:00:00Z", "groupware"),
    ("newest", "2026-11-22T10:00:00Z", "2026-11-21T10:00:00Z", "crm"),
    ("newest", None, None, "crm"),
    ("crm", "2026-11-20T10:00:00Z", "2026-11-21T10:00:00Z", "crm"),
    ("groupware", "2026-11-22T10:00:00Z", "2026-11-21T10:00:00Z", "groupware"),
])
def test_conflict_rules(rule, crm_time, gw_time, winner):
    crm_now, gw_now = event("u1", "From CRM"), event("u1", "From calendar")
    crm_now._modified, gw_now._modified = crm_time, gw_time
    plan = plan_of(paired(crm_now, gw_now, BASE), policy=Policy(conflict=rule))
    loser = "crm" if winner == "groupware" else "groupware"
    assert ops(plan) == [("update", loser)]
    expected = "From CRM" if winner == "crm" else "From calendar"
    assert plan.steps[0].actions[0].changes == {"summary": expected}
    assert "conflict on summary" in plan.steps[0].actions[0].reason


def test_conflict_rule_ask_waits_for_a_decision_and_writes_nothing():
    view = paired(event("u1", "A", location="X"), event("u1", "B", location="Room 1"), BASE)
    plan = plan_of(view, policy=Policy(conflict="ask"))
    assert ops(plan) == [("conflict", None)]
    action = plan.steps[0].actions[0]
    assert action.conflicts == {"summary": ("A", "B")}
    assert plan.steps[0].state == "retry"
    assert plan.writes == 0


def test_recurrence_exceptions_merge_per_occurrence():
    rid_a, rid_b = "2026-12-08T09:00:00Z", "2026-12-15T09:00:00Z"
    base = event("u1", "Weekly", rrule="FREQ=WEEKLY;COUNT=5")
    crm_now = event("u1", "Weekly", rrule="FREQ=WEEKLY;COUNT=5",
                    overrides={rid_a: Occurrence(summary="moved A", start=rid_a)})
    gw_now = event("u1", "Weekly", rrule="FREQ=WEEKLY;COUNT=5",
                   overrides={rid_b: Occurrence(summary="moved B", start=rid_b)})
    plan = plan_of(paired(crm_now, gw_now, base))
    by_side = {a.side: a.changes for _, a in plan.actions()}
    assert set(by_side["crm"]) == {f"overrides/{rid_b}"}
    assert set(by_side["groupware"]) == {f"overrides/{rid_a}"}


@pytest.mark.parametrize(("rule", "gone", "expected"), [
    ("keep", "crm", ("create", "crm")),
    ("keep", "groupware", ("create", "groupware")),
    ("delete", "crm", ("delete", "groupware")),
    ("delete", "groupware", ("delete", "crm")),
    ("crm", "crm", ("delete", "groupware")),
    ("crm", "groupware", ("create", "groupware")),
    ("groupware", "crm", ("create", "crm")),
    ("groupware", "groupware", ("delete", "crm")),
])
def test_delete_versus_update_rules(rule, gone, expected):
    changed = event("u1", "Changed")
    view = paired(None if gone == "crm" else changed, None if gone == "groupware" else changed,
                  BASE)
    plan = plan_of(view, policy=Policy(delete_vs_update=rule))
    assert ops(plan) == [expected]


def test_delete_of_an_unchanged_item_is_mirrored():
    assert ops(plan_of(paired(None, "same", BASE))) == [("delete", "groupware")]
    assert ops(plan_of(paired("same", None, BASE))) == [("delete", "crm")]


def test_deleted_on_both_sides_forgets_the_pair():
    plan = plan_of(paired(None, None, BASE))
    assert ops(plan) == [] and plan.steps[0].state == "record"


@pytest.mark.parametrize("switch", ["crm:create", "crm:update", "crm:delete",
                                    "groupware:create", "groupware:update",
                                    "groupware:delete"])
def test_prevent_switches_override_everything(switch):
    side, op = switch.split(":")
    policy = Policy(prevent=frozenset({switch}), conflict="crm" if side == "crm" else
                    "groupware", delete_vs_update="delete")
    source = "groupware" if side == "crm" else "crm"
    if op == "create":
        new = item(event("new"), "new.ics")
        view = View(None, new if source == "crm" else None, new if source != "crm" else None)
    elif op == "update":
        changed = event("u1", "Changed")
        view = paired(changed if source == "crm" else "same",
                      changed if source != "crm" else "same", BASE)
    else:
        view = paired(None if source == "crm" else "same",
                      None if source != "crm" else "same", BASE)
    plan = plan_of(view, policy=policy)
    assert (op, side) not in ops(plan)
    assert ops(plan) == [("skip", side)]
    assert f"do not {op} in" in plan.steps[0].actions[0].reason


def test_new_items_are_created_on_the_other_side_and_repaired_by_uid_first():
    crm_items = [item(event("a", "A"), "a.ics"), item(event("b", "B"), "b.ics")]
    gw_items = [item(event("b", "B moved"), "x.ics"), item(event("c", "C"), "c.ics")]
    plan = plan_of(unpaired={"crm": crm_items, "groupware": gw_items})
    got = sorted((a.op, a.side, s.crm.id if s.crm else None, s.gw.id if s.gw else None)
                 for s, a in plan.actions())
    assert got == [
        ("create", "crm", None, "c.ics"),
        ("create", "groupware", "a.ics", None),
        # b was paired by UID although its summary differs; newest (tie: CRM) wins.
        ("update", "groupware", "b.ics", "x.ics"),
    ]


def test_repair_by_content_when_ids_are_lost():
    crm_items = [item(event("crm-1", "Demo", start="2026-12-02T09:00:00Z"), "c.ics")]
    gw_items = [item(event("other-uid", "demo ", start="2026-12-02T09:00:00Z"), "g.ics")]
    views = pair_up("calendar", crm_items, gw_items)
    assert [(v.crm.id, v.gw.id) for v in views] == [("c.ics", "g.ics")]


def test_identical_items_found_on_both_sides_are_linked_not_copied():
    plan = plan_of(unpaired={"crm": [item(event("a"), "a.ics")],
                             "groupware": [item(event("a"), "a2.ics")]})
    assert ops(plan) == [("link", None)]


def test_pairing_without_a_base_fills_empty_fields_instead_of_wiping_them():
    # The CRM knows the phone, the address book the company; newest wins only where both
    # hold a value. Neither side loses what only it knew.
    crm = Contact(uid="sam", full_name="Sam Initech", emails=["sam@initech.example"],
                  title="CTO", phones=[Phone("+1 555 0100", "work")])
    gw = Contact(uid="sam", full_name="Sam Initech", emails=["sam@initech.example"],
                 title="Chief Technology Officer", company="Initech")
    plan = make_plan("contacts", [], Policy(), frozenset(Contact().fields()), unpaired={
        "crm": [item(crm, "c.vcf", modified="2026-01-02T00:00:00Z")],
        "groupware": [item(gw, "g.vcf", modified="2026-01-01T00:00:00Z")]})
    writes = {a.side: a.changes for _, a in plan.actions()}
    assert writes["crm"] == {"company": "Initech"}
    assert set(writes["groupware"]) == {"title", "phones"}
    assert writes["groupware"]["title"] == "CTO"  # the newer side wins a real clash


def test_mass_delete_guard_trips_over_share_and_minimum():
    views = [paired(None, "same", event(f"u{i}")) for i in range(12)]
    for i, v in enumerate(views):
        v.pair.id = i
    plan = plan_of(*views, totals={"crm": 20, "groupware": 20})
    assert plan.guard == {"groupware": (12, 20)}
    small = plan_of(*views[:10], totals={"crm": 12, "groupware": 12})
    assert small.guard == {}  # not more than 10 items
    share = plan_of(*views, totals={"crm": 100, "groupware": 100})
    assert share.guard == {}  # 12% of the side


def test_plan_order_is_deterministic():
    items_ = [item(event(f"u{i}"), f"{i:03}.ics") for i in (5, 1, 3)]
    a = plan_of(unpaired={"crm": items_})
    b = plan_of(unpaired={"crm": list(reversed(items_))})
    assert [s.crm.id for s in a.steps] == [s.crm.id for s in b.steps] == \
        ["001.ics", "003.ics", "005.ics"]


def test_unreadable_item_is_a_failed_skip_not_a_crash():
    broken = item(event("a"), "a.ics")
    broken.raw = "BEGIN:VCALENDAR\r\nthis is not icalendar"
    plan = plan_of(unpaired={"crm": [broken]})
    (step,) = plan.steps
    assert step.state == "retry"
    assert step.actions[0].failed and "a.ics" in step.actions[0].reason


def test_ignored_items_are_skipped():
    plan = plan_of(unpaired={"crm": [item(event("a"), "a.ics")]},
                   ignored={("crm", "a.ics"): Ignore("forever")})
    assert ops(plan) == [("skip", "crm")]
    assert "ignored forever" in plan.steps[0].actions[0].reason
    assert plan.steps[0].state == "settle"


def test_ignore_until_change_holds_while_both_versions_are_the_same():
    view = paired(event("u1", "Kickoff", location="Room 2"), "same", BASE)  # crm at v2
    held = plan_of(view, ignored={("groupware", "g1"): Ignore("until-change", "v2", "b1")})
    assert ops(held) == [("skip", "groupware")] and held.lapsed == []
    assert "until one side changes" in held.steps[0].actions[0].reason


def test_ignore_until_change_lapses_when_either_side_changed_since():
    view = paired(event("u1", "Kickoff", location="Room 2"), "same", BASE)
    plan = plan_of(view, ignored={("crm", "c1"): Ignore("until-change", "b1", "b1")})
    assert ops(plan) == [("update", "groupware")]
    assert plan.lapsed == [("crm", "c1")]


def test_selection_matched_sends_only_events_with_a_known_person_to_the_crm():
    known = event("k", "Known", attendees=[Attendee("Ann@Client.example")])
    stranger = event("s", "Stranger", attendees=[Attendee("x@elsewhere.example")])
    from_crm = event("c", "From CRM", attendees=[Attendee("x@elsewhere.example")])
    unpaired = {"groupware": [item(known), item(stranger)], "crm": [item(from_crm)]}
    policy = Policy(selection="matched")
    plan = plan_of(unpaired=unpaired, policy=policy,
                   known_emails=frozenset({"ann@client.example"}))
    by_id = {(s.gw or s.crm).id: [(a.op, a.side) for a in s.actions] for s in plan.steps}
    assert by_id == {"k": [("create", "crm")], "s": [("skip", "crm")],
                     "c": [("create", "groupware")]}  # CRM items always go to groupware
    assert plan_of(unpaired=unpaired, policy=Policy()).writes == 3


def test_selection_designated_by_category_or_smart_address_and_marks_the_event():
    tagged = event("t", "Tagged", categories=["crm"])
    addressed = event("a", "Addressed", attendees=[Attendee("CRM@sync.example")],
                      categories=["Work"])
    plain = event("p", "Plain", attendees=[Attendee("crm.team@x.example")])
    policy = Policy(selection="designated")
    plan = plan_of(unpaired={"groupware": [item(tagged), item(addressed), item(plain)]},
                   policy=policy)
    by_id = {s.gw.id: s.actions for s in plan.steps}
    assert [(a.op, a.side) for a in by_id["t"]] == [("create", "crm")]
    assert [(a.op, a.side, a.changes) for a in by_id["a"]] == [
        ("create", "crm", {}), ("update", "groupware", {"categories": ["CRM", "Work"]})]
    assert [(a.op, a.side) for a in by_id["p"]] == [("skip", "crm")]
    assert "not designated" in by_id["p"][0].reason
    prevented = plan_of(unpaired={"groupware": [item(addressed)]}, policy=Policy(
        selection="designated", prevent=frozenset({"groupware:update"})))
    assert ops(prevented) == [("create", "crm"), ("skip", "groupware")]


def test_one_way_pair_sends_groupware_changes_and_keeps_crm_changes_in_the_crm():
    view = paired(event("u1", "Kickoff!", location="Room 1", description="CRM notes"),
                  event("u1", "Kickoff?", location="Room 9"), BASE)
    view.pair.one_way = True  # type: ignore[union-attr]
    plan = plan_of(view, policy=Policy(conflict="crm"))
    assert ops(plan) == [("update", "crm"), ("skip", "groupware")]
    assert plan.steps[0].actions[0].changes == {"summary": "Kickoff?", "location": "Room 9"}


def test_one_way_pair_deleted_on_either_side_deletes_nothing():
    for crm_now, gw_now in ((None, "same"), ("same", None)):
        view = paired(crm_now, gw_now, BASE)
        view.pair.one_way = True  # type: ignore[union-attr]
        plan = plan_of(view)
        assert [a.op for _, a in plan.actions()] == ["skip"]
        assert plan.steps[0].state == "record"  # the pair is unlinked, not kept pending


def test_contacts_and_tasks_repair_by_content():
    c1 = item(Contact(uid="1", full_name="Jo Acme", emails=["jo@acme.example"]), "1.vcf")
    c2 = item(Contact(uid="2", full_name="jo acme", emails=["JO@acme.example"]), "2.vcf")
    assert [(v.crm.id, v.gw.id) for v in pair_up("contacts", [c1], [c2])] == \
        [("1.vcf", "2.vcf")]
    t1 = item(Task(uid="1", summary="Call back", due="2026-12-01"), "1.ics")
    t2 = item(Task(uid="2", summary="Call back", due="2026-12-01"), "2.ics")
    assert len(pair_up("tasks", [t1], [t2])) == 1


def test_event_labels_show_local_time_in_the_events_zone():
    from crmsync.model import Event

    assert Event(summary="Call", start="2026-11-24T09:00:00Z", tz="Europe/Berlin").label() \
        == "2026-11-24 10:00 Call"
    assert Event(summary="Call", start="2026-11-24T09:00:00Z").label() == \
        "2026-11-24 09:00 UTC Call"
    assert Event(summary="Fair", start="2026-12-02").label() == "2026-12-02 Fair"


def test_uid_read_without_parsing_keeps_colons_and_skips_parameters():
    from crmsync.connectors.base import Item

    raw = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:urn:uuid:4fbe8971-0bc3\r\nFN:Jo\r\nEND:VCARD\r\n"
    assert Item("a.vcf", "v", raw, "text/vcard", "contacts").uid == "urn:uuid:4fbe8971-0bc3"
    raw = "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID;X-A=b:abc:def\r\nEND:VEVENT\r\nEND:VCALENDAR"
    assert Item("a.ics", "v", raw, "text/calendar", "calendar").uid == "abc:def"


# --- the review's decisions (crmsync.plan.decide) ------------------------------------------


def _mixed_plan():
    """A conflict (pair 1), a CRM-side update (pair 2) and a new groupware item."""
    conflict = paired(event("u1", "A"), event("u1", "B"), BASE)
    update = paired(event("u2", "Kickoff", location="Room 2"), "same", BASE)
    update.pair.id, update.pair.crm_id, update.pair.gw_id = 2, "c2", "g2"
    new = item(event("n1", "New"), "gn1")
    return plan_of(conflict, update, policy=Policy(conflict="ask"),
                   unpaired={"groupware": [new]})


def test_decide_without_choices_is_the_plan_as_made():
    plan = _mixed_plan()
    again = decide(plan, Decisions(), Policy(conflict="ask"), COMMON)
    assert ops(again) == ops(plan) and again.ignores == []


def test_decide_excludes_ignores_and_resolves_without_touching_the_plan():
    plan = _mixed_plan()
    keys = {s.actions[0].op: s.key for s in plan.steps}
    decisions = Decisions()
    decisions.set([keys["conflict"]], "groupware")
    decisions.set([keys["update"]], "exclude")
    decisions.set([keys["create"]], "ignore-until-change")
    out = decide(plan, decisions, Policy(conflict="ask"), COMMON)
    by_key = {s.key: s for s in out.steps}
    resolved = by_key[keys["conflict"]]
    assert [(a.op, a.side, a.changes) for a in resolved.actions] == [
        ("update", "crm", {"summary": "B"})]
    assert resolved.state == "record"
    excluded = by_key[keys["update"]]
    assert [a.op for a in excluded.actions] == ["skip"] and excluded.state == "retry"
    ignored = by_key[keys["create"]]
    assert [a.op for a in ignored.actions] == ["skip"] and ignored.state == "settle"
    [new] = out.ignores
    assert (new.side, new.item_id, new.ignore) == (
        "groupware", "gn1", Ignore("until-change", None, "v1"))
    assert out.writes == 1
    # The plan shown in the review is unchanged.
    assert sorted(op for op, _ in ops(plan)) == ["conflict", "create", "update"]


def test_decide_ignore_forever_of_a_pair_is_kept_on_the_crm_side():
    plan = _mixed_plan()
    key = next(s.key for s in plan.steps if s.actions[0].op == "conflict")
    decisions = Decisions({key: "ignore-forever"})
    [new] = decide(plan, decisions, Policy(conflict="ask"), COMMON).ignores
    assert (new.side, new.item_id, new.ignore.mode) == ("crm", "c1", "forever")
    # Choosing "include" again takes the choice back.
    decisions.set([key], "include")
    assert decide(plan, decisions, Policy(conflict="ask"), COMMON).ignores == []


def test_decide_winner_respects_the_prevent_switches():
    plan = _mixed_plan()
    key = next(s.key for s in plan.steps if s.actions[0].op == "conflict")
    policy = Policy(conflict="ask", prevent=frozenset({"crm:update"}))
    out = decide(plan, Decisions({key: "groupware"}), policy, COMMON)
    step = next(s for s in out.steps if s.key == key)
    assert [(a.op, a.side) for a in step.actions] == [("skip", "crm")]


def _long_subjects(kind, record):
    """A side that refuses subjects over 10 characters, as Salesforce's refuses does
    over its field length."""
    return "Subject too long" if len(getattr(record, "summary", "")) > 10 else None


def test_an_update_the_target_would_refuse_is_a_skip_and_leaves_the_pair_alone():
    view = paired("same", event("u1", "Kickoff for everyone", location="Room 1"), BASE)
    plan = plan_of(view, refuses={"crm": _long_subjects})
    [step] = plan.steps
    assert ops(plan) == [("skip", "crm")]
    assert step.actions[0].reason == "not synced to CRM: Subject too long"
    assert step.state == "settle"  # nothing stored: the change flows once it is fixed


def test_a_refused_update_beside_a_good_one_keeps_the_good_one():
    view = paired(event("u1", "Kickoff", location="Room 2"),
                  event("u1", "Kickoff for everyone", location="Room 1"), BASE)
    plan = plan_of(view, refuses={"crm": _long_subjects})
    assert sorted(ops(plan)) == [("skip", "crm"), ("update", "groupware")]
    assert plan.steps[0].state == "record"


def test_a_new_item_the_target_would_refuse_is_not_created():
    long = item(event("n1", "A very long subject indeed"), "g9")
    plan = make_plan("calendar", [], Policy(), COMMON, unpaired={"groupware": [long]},
                     refuses={"crm": _long_subjects})
    [step] = plan.steps
    assert ops(plan) == [("skip", "crm")] and step.state == "settle"
    # The groupware side takes anything: nothing refused the other way.
    back = make_plan("calendar", [], Policy(), COMMON, unpaired={"crm": [long]},
                     refuses={"crm": _long_subjects})
    assert ops(back) == [("create", "groupware")]


# --- issue 16: identity is never guessed; lossy copies never win --------------------------


def _twins():
    """Two look-alike CRM events (same start, end, subject; other bodies) and their two
    groupware copies, none with an id or UID in common."""
    crm = [item(event("", "Standup", description=f"CRM body {n}"), f"c{n}") for n in (1, 2)]
    gw = [item(event(f"g{n}", "Standup", description=f"GW body {n}"), f"g{n}.ics")
          for n in (1, 2)]
    return crm, gw


def test_look_alikes_are_neither_paired_nor_created_but_reported():
    crm, gw = _twins()
    plan = plan_of(unpaired={"crm": crm, "groupware": gw})
    assert sorted(ops(plan)) == [("skip", "crm")] * 2 + [("skip", "groupware")] * 2
    assert all(s.state == "retry" and s.pair is None for s in plan.steps)
    assert {len(s.ids()) for s in plan.steps} == {1}
    assert "4 look-alike items (2 in CRM, 2 in groupware" in plan.steps[0].actions[0].reason
    # Two on one side and one on the other: still no guess.
    plan = plan_of(unpaired={"crm": crm, "groupware": gw[:1]})
    assert [a.op for _, a in plan.actions()] == ["skip"] * 3


def test_look_alikes_a_stopped_run_sent_are_not_paired_by_guess_either():
    crm, gw = _twins()
    sent = {("groupware", "g1.ics"): gw[0], ("groupware", "g2.ics"): gw[1]}
    plan = plan_of(unpaired={"crm": crm, "groupware": gw}, sent=sent)
    assert [a.op for _, a in plan.actions()] == ["skip"] * 4
    # One with one: the create's sent content pairs them (identity evidence) and merges.
    plan = plan_of(unpaired={"crm": crm[:1], "groupware": gw[:1]},
                   sent={("groupware", "g1.ics"): gw[0]})
    assert ops(plan) == [("update", "groupware")]


def test_a_content_pairing_that_differs_is_a_decision_not_an_overwrite():
    crm, gw = _twins()
    plan = plan_of(unpaired={"crm": crm[:1], "groupware": gw[:1]},
                   policy=Policy(conflict="crm"))
    [(step, action)] = list(plan.actions())
    assert action.op == "conflict" and "paired by content only" in action.reason
    assert action.conflicts == {"description": ("CRM body 1", "GW body 1")}
    # The user's choice stands: the CRM's version, and the pair is made.
    chosen = decide(plan, Decisions({step.key: "groupware"}), Policy(), COMMON)
    assert ops(chosen) == [("update", "crm")]
    assert chosen.steps[0].actions[0].changes == {"description": "GW body 1"}


def _cut(record):
    """A CRM's image: the description cut to 20 characters, as a CRM with limits does."""
    return dataclasses.replace(record, description=record.description[:17] + "...")


def test_a_cut_copy_equals_its_original_without_a_base():
    full = "A long body that the CRM cannot hold in full."
    crm = item(event("u", "Kickoff", description=full[:17] + "..."), "c1")
    gw = item(event("u", "Kickoff", description=full), "g1.ics")
    assert ops(plan_of(unpaired={"crm": [crm], "groupware": [gw]}, policy=Policy(
        conflict="crm"))) == [("update", "groupware")]  # without the image: cut by rule
    plan = plan_of(unpaired={"crm": [crm], "groupware": [gw]}, policy=Policy(conflict="crm"),
                   images={"crm": _cut})
    assert ops(plan) == [("link", None)]
    # A real difference is still one.
    other = item(event("u", "Kickoff", description="Another text entirely, also long."), "c1")
    plan = plan_of(unpaired={"crm": [other], "groupware": [gw]}, images={"crm": _cut})
    assert ops(plan) != [("link", None)]


def test_a_cut_copy_never_replaces_its_original_by_rule():
    full = "A long body that the CRM cannot hold in full."
    base = event("u1", "Kickoff", description="Short")
    view = paired(event("u1", "Kickoff", description="Edited in the CRM, cut..."),
                  event("u1", "Kickoff", description=full), base)
    plan = plan_of(view, policy=Policy(conflict="crm"), images={"crm": _cut})
    [action] = [a for _, a in plan.actions()]
    assert action.op == "conflict" and "cannot hold" in action.reason
    # The groupware may win: its full text goes to the CRM (cut there, as always).
    plan = plan_of(view, policy=Policy(conflict="groupware"), images={"crm": _cut})
    assert ops(plan) == [("update", "crm")]


def test_after_a_lost_store_a_renamed_item_is_a_decision_not_two_creates():
    crm = [item(event("", "Kickoff"), "c1"),
           item(event("", "Pricing (moved)", start=day(2), end=day(2, "10:00")), "c2")]
    gw = [item(event("a", "Kickoff"), "a.ics"),
          item(event("b", "Pricing", start=day(2), end=day(2, "10:00")), "b.ics")]
    plan = plan_of(unpaired={"crm": crm, "groupware": gw}, fresh=True)
    assert sorted(ops(plan), key=str) == [("conflict", None), ("link", None)]
    conflict = next(s for s in plan.steps if s.actions[0].op == "conflict")
    assert conflict.actions[0].choices == ("crm", "groupware", "both", "skip")
    # Kept as two items: each is copied to the other side, nothing existing changes.
    both = decide(plan, Decisions({conflict.key: "both"}), Policy(), COMMON)
    copied = [a for s in both.steps for a in s.actions if a.copy]
    assert sorted(a.side for a in copied) == ["crm", "groupware"]
    # Not after a lost store (pairs are stored): two new items, created.
    assert sorted(ops(plan_of(unpaired={"crm": crm[1:], "groupware": gw[1:]})),
                  key=str) == [("create", "crm"), ("create", "groupware")]


def test_look_alikes_that_are_the_same_in_every_field_pair_in_order():
    # Two copies of one event on each side: which pairs with which changes nothing.
    crm = [item(event("", "Standup"), f"c{n}") for n in (1, 2)]
    gw = [item(event(f"g{n}", "Standup"), f"g{n}.ics") for n in (1, 2)]
    plan = plan_of(unpaired={"crm": crm, "groupware": gw})
    assert ops(plan) == [("link", None)] * 2
    assert sorted((s.crm.id, s.gw.id) for s in plan.steps) == [("c1", "g1.ics"),
                                                              ("c2", "g2.ics")]


def test_a_change_on_one_side_is_carried_over_whatever_the_other_sides_image():
    # The CRM keeps only attendees it knows; one added in the groupware since the last
    # sync still goes to the CRM (which relates it if it can), never dropped as "equal".
    def known_only(record):
        return dataclasses.replace(record, attendees=[])

    view = paired("same", event("u1", "Kickoff", location="Room 1",
                                attendees=[Attendee("ann@client.example")]), BASE)
    plan = plan_of(view, images={"crm": known_only})
    assert ops(plan) == [("update", "crm")]


def test_an_item_outside_the_range_is_never_written_because_of_a_pairing():
    """A server event far outside the range had the UID of a new CRM event: paired by UID,
    it was overwritten with the CRM's version. Neither is written now, and the plan says
    why; a pair made earlier is still synced as ever."""
    far = day(2000)
    new = item(event("same@x", "New in the CRM"), "c1")
    old = item(event("same@x", "Years ahead", start=far, end=far[:11] + "10:00:00Z"),
               "old.ics")
    now = datetime.now(UTC)  # the range: 30 days back, a year ahead
    plan = plan_of(unpaired={"crm": [new], "groupware": [old]}, now=now)
    assert ops(plan) == [("skip", "groupware")]
    [step] = plan.steps
    assert "outside the sync range: neither is written" in step.actions[0].reason
    assert "Years ahead" in step.actions[0].reason and step.state == "settle"
    # Both inside: paired by UID and merged as before.
    near = item(event("same@x", "Near"), "old.ics")
    assert ops(plan_of(unpaired={"crm": [new], "groupware": [near]}, now=now)) != \
        [("skip", "groupware")]
