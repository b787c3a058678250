"""Settings validation, the config file and the profile commands around them."""

from __future__ import annotations

import json

import pytest

from crmsync.config import Paths, store_url
from crmsync.errors import ConfigError
from crmsync.policy import Policy

from test_cli import crmsync


@pytest.mark.parametrize(("values", "message"), [
    ({"conflict": "loudest"}, "conflict rule 'loudest' is not one of"),
    ({"delete_vs_update": "maybe"}, "delete-vs-update rule 'maybe'"),
    ({"prevent": ["crm:explode"]}, "unknown prevent switch(es) crm:explode"),
    ({"mass_delete_share": 0}, "mass_delete_share"),
    ({"past_days": 31}, "past_days must be a whole number from 0 to 30"),
    ({"future_days": -1}, "future_days must be a whole number from 0 to 365"),
    ({"colour": "blue"}, "unknown setting(s): colour"),
])
def test_bad_settings_are_refused_with_a_clear_message(values, message):
    with pytest.raises(ConfigError) as info:
        Policy.from_dict(values)
    assert message in str(info.value)


def test_policy_round_trips_and_contacts_default_to_no_crm_delete():
    assert Policy.default_for("contacts").prevents("crm", "delete")
    assert not Policy.default_for("calendar").prevent
    policy = Policy(conflict="ask", prevent=frozenset({"groupware:create"}))
    assert Policy.from_dict(policy.to_dict()) == policy


def test_home_holds_config_and_state(tmp_path, monkeypatch):
    monkeypatch.setenv("CRMSYNC_HOME", str(tmp_path / "h"))
    paths = Paths.resolve()
    assert paths.config_file == tmp_path / "h" / "config.toml"
    assert store_url(paths) == f"sqlite:///{tmp_path / 'h' / 'state.db'}"
    (tmp_path / "h" / "config.toml").write_text(
        f'[store]\nurl = "sqlite:///{tmp_path / "elsewhere.db"}"\n')
    assert store_url(paths).endswith("elsewhere.db")
    (tmp_path / "h" / "config.toml").write_text("[store\n")
    with pytest.raises(ConfigError, match="config.toml"):
        store_url(paths)


def test_without_home_the_platform_folders_are_used(monkeypatch):
    monkeypatch.delenv("CRMSYNC_HOME", raising=False)
    paths = Paths.resolve()
    assert paths.config_dir.name == "crmsync" and paths.data_dir.name == "crmsync"


def test_profile_show_and_remove(tmp_path):
    home = tmp_path / "home"
    crmsync(home, "profile", "add", "w", "--crm", "vdir:/a", "--groupware", "vdir:/b",
            "--objects", "calendar", "--prevent", "groupware:delete")
    shown = json.loads(crmsync(home, "profile", "show", "w", "--json").stdout)
    assert shown["settings"]["calendar"]["prevent"] == ["groupware:delete"]
    bad = crmsync(home, "profile", "add", "x", "--crm", "vdir:/a", "--groupware", "vdir:/b",
                  "--conflict", "loudest", check=2)
    assert "conflict rule 'loudest'" in bad.stderr
    crmsync(home, "profile", "remove", "w", "--yes")
    assert json.loads(crmsync(home, "profile", "list", "--json").stdout) == []
