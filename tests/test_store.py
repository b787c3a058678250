"""The state store on SQLite and PostgreSQL: migrations, pairs, cursors, runs."""

from __future__ import annotations

import pytest

from crmsync.errors import ConfigError
from crmsync.plan import Ignore, Pair
from crmsync.store import MIGRATIONS, SCHEMA_HEAD, RunItem, Store

from conftest import event, item


def test_schema_head_matches_the_newest_migration():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_HEAD


def test_migrated_schema_matches_the_tables_the_code_uses(store: Store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from crmsync.store.schema import metadata

    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diffs == []
    assert store.schema_version() == SCHEMA_HEAD


def test_profiles(store: Store):
    p = store.add_profile("work", "vdir:/a", "vdir:/b", ["calendar"],
                          {"calendar": {"conflict": "ask"}})
    assert store.profile("work") == p
    assert p.settings == {"calendar": {"conflict": "ask"}}
    with pytest.raises(ConfigError, match="already exists"):
        store.add_profile("work", "vdir:/a", "vdir:/b", ["calendar"], {})
    with pytest.raises(ConfigError, match="no profile named"):
        store.profile("nope")
    p.settings["calendar"]["conflict"] = "crm"
    store.save_settings(p)
    assert store.profile("work").settings["calendar"]["conflict"] == "crm"
    store.remove_profile("work")
    assert store.profiles() == []


def test_pairs_keep_each_sides_base(store: Store):
    p = store.add_profile("w", "vdir:/a", "vdir:/b", ["calendar"], {})
    crm, gw = item(event("u1", "CRM side"), "c1", "cv1"), item(event("u1", "GW side"), "g1",
                                                               "gv1")
    store.save_pairs(p.id, "calendar", [Pair(None, "calendar", "c1", None, "g1", None,
                                             crm_base=crm, gw_base=gw)], [])
    (pair,) = store.pairs(p.id, "calendar")
    assert (pair.crm_id, pair.crm_version, pair.gw_id, pair.gw_version) == \
        ("c1", "cv1", "g1", "gv1")
    assert pair.crm_base is None
    store.load_bases("calendar", [pair])
    assert pair.crm_base.raw == crm.raw and pair.gw_base.raw == gw.raw
    assert pair.gw_base.record().summary == "GW side"
    # Unlinked: the CRM side is gone.
    store.save_pairs(p.id, "calendar", [Pair(pair.id, "calendar", None, None, "g1", None,
                                             gw_base=gw)], [])
    (pair,) = store.pairs(p.id, "calendar")
    assert pair.crm_id is None and pair.gw_id == "g1"
    store.save_pairs(p.id, "calendar", [], [pair.id])
    assert store.pairs(p.id, "calendar") == []


def test_cursor_and_pending_move_together(store: Store):
    p = store.add_profile("w", "vdir:/a", "vdir:/b", ["calendar"], {})
    assert store.cursor(p.id, "calendar", "crm") is None
    store.save_progress(p.id, "calendar", {"crm": "c1", "groupware": "g1"},
                        {"crm": {"x.ics"}, "groupware": set()})
    assert store.cursor(p.id, "calendar", "crm") == "c1"
    assert store.pending(p.id, "calendar") == {"crm": {"x.ics"}, "groupware": set()}
    store.save_progress(p.id, "calendar", {"crm": "c2"}, {"crm": set(), "groupware": set()})
    assert store.cursor(p.id, "calendar", "crm") == "c2"
    assert store.cursor(p.id, "calendar", "groupware") == "g1"
    assert store.pending(p.id, "calendar") == {"crm": set(), "groupware": set()}
    store.reset_cursors(p.id)
    assert store.cursor(p.id, "calendar", "crm") is None


def test_run_history(store: Store):
    p = store.add_profile("w", "vdir:/a", "vdir:/b", ["calendar"], {})
    run_id = store.start_run(p.id, ["calendar"], "manual", "ana")
    store.save_pairs(p.id, "calendar", [], [], run_id, [
        RunItem("calendar", "create:crm", "applied", crm_id="c1"),
        RunItem("calendar", "skip", "failed", "Broken", "not valid UTF-8", crm_id="c2"),
    ])
    store.finish_run(run_id, "partial", {"calendar": {"create:crm": 1, "failed": 1}})
    (run,) = store.runs(p.id)
    assert run["status"] == "partial" and run["started_by"] == "ana"
    assert run["counts"] == {"calendar": {"create:crm": 1, "failed": 1}}
    full = store.run(p.id, run_id)
    assert [i["outcome"] for i in full["items"]] == ["applied", "failed"]
    assert full["items"][1]["reason"] == "not valid UTF-8"
    assert store.last_runs(p.id)["calendar"]["id"] == run_id


def test_a_base_copied_verbatim_is_stored_once(store: Store):
    from sqlalchemy import select

    from crmsync.store.schema import pairs

    p = store.add_profile("w", "vdir:/a", "vdir:/b", ["calendar"], {})
    same = item(event("u1", "Copied"), "c1", "v1")
    other_side = item(event("u1", "Copied"), "g1", "v1")
    store.save_pairs(p.id, "calendar", [Pair(None, "calendar", "c1", None, "g1", None,
                                             crm_base=same, gw_base=other_side)], [])
    with store.engine.connect() as conn:
        assert conn.execute(select(pairs.c.gw_raw)).scalar() is None
    (pair,) = store.pairs(p.id, "calendar")
    store.load_bases("calendar", [pair])
    assert pair.gw_base.raw == same.raw and pair.gw_base.id == "g1"


def test_ignores_keep_their_mode_and_versions_and_lift(store: Store):
    p = store.add_profile("ig", "vdir:/a", "vdir:/b", ["calendar"], {})
    store.ignore(p.id, "calendar", "crm", "c1", "until-change",
                 {"crm": "v1", "groupware": "g7"})
    store.ignore(p.id, "calendar", "groupware", "g2", "forever", {})
    store.ignore(p.id, "calendar", "crm", "c1", "forever", {"crm": "v2"})  # replaces
    assert store.ignored(p.id, "calendar") == {
        ("crm", "c1"): Ignore("forever", "v2", None),
        ("groupware", "g2"): Ignore("forever", None, None)}
    assert [(r["side"], r["item_id"]) for r in store.ignores(p.id)] == [
        ("crm", "c1"), ("groupware", "g2")]
    assert store.unignore(p.id, "calendar", [("crm", "c1"), ("crm", "nope")]) == 1
    assert list(store.ignored(p.id, "calendar")) == [("groupware", "g2")]


def test_a_one_way_pair_stays_one_way_through_updates(store: Store):
    p = store.add_profile("ow", "vdir:/a", "vdir:/b", ["calendar"], {})
    e = event("u1")
    store.save_pairs(p.id, "calendar", [Pair(None, "calendar", "c1", None, "g1", None,
                                             crm_base=item(e, "c1"), gw_base=item(e, "g1"),
                                             one_way=True)], [])
    (pair,) = store.pairs(p.id, "calendar")
    assert pair.one_way
    store.save_pairs(p.id, "calendar", [Pair(pair.id, "calendar", "c1", None, "g1", None,
                                             crm_base=item(e, "c1", "v2"),
                                             gw_base=item(e, "g1"))], [])
    (again,) = store.pairs(p.id, "calendar")
    assert again.one_way and again.crm_version == "v2"
