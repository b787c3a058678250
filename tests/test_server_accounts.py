"""The server's accounts, sessions, rate limits, vault and settings merge (no web)."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from crmsync.connectors.base import Credentials
from crmsync.errors import ConfigError
from crmsync.server import accounts, settings
from crmsync.server.accounts import RateLimited
from crmsync.server.settings import AdminSetting, LockedSetting
from crmsync.server.vault import KEYS_ENV, Vault, load_keys
from crmsync.store import Store
from crmsync.store.schema import user_secrets, users, web_sessions

PASSWORD = "correct horse battery"


def test_users_get_argon2_hashes_lower_cased_emails_and_a_profile(store: Store):
    user = accounts.create_user(store, "  Ana@Example.COM ", PASSWORD, is_admin=True)
    assert user.email == "ana@example.com" and user.is_admin
    with store.engine.connect() as conn:
        stored = conn.execute(select(users.c.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert user.profile_id is not None
    with pytest.raises(ConfigError, match="exists already"):
        accounts.create_user(store, "ANA@example.com", PASSWORD)
    with pytest.raises(ConfigError, match="at least"):
        accounts.create_user(store, "bo@example.com", "short")
    with pytest.raises(ConfigError, match="not an email"):
        accounts.create_user(store, "bo", PASSWORD)
    assert accounts.authenticate(store, "ANA@example.com", PASSWORD, "1.2.3.4") == user
    assert accounts.authenticate(store, "ana@example.com", "wrong!!!", "1.2.3.4") is None


def test_sessions_keep_only_the_token_hash_and_expire(store: Store):
    user = accounts.create_user(store, "ana@example.com", PASSWORD)
    token, session = accounts.start_session(store, user)
    with store.engine.connect() as conn:
        row = conn.execute(select(web_sessions)).one()
    assert row.token_hash != token and token not in str(tuple(row))
    found = accounts.session_of(store, token)
    assert found is not None and found.user.id == user.id
    assert accounts.csrf_ok(found, session.csrf_token)
    assert not accounts.csrf_ok(found, "x" + session.csrf_token)
    assert not accounts.csrf_ok(found, None)
    later = datetime.now(UTC) + timedelta(days=accounts.SESSION_DAYS + 1)
    assert accounts.session_of(store, token, at=later) is None
    assert accounts.session_of(store, "nonsense") is None
    accounts.end_session(store, found)
    assert accounts.session_of(store, token) is None


def test_sign_in_is_rate_limited_per_email_and_per_address(store: Store):
    accounts.create_user(store, "ana@example.com", PASSWORD)
    at = datetime.now(UTC)
    for _ in range(accounts.MAX_FAILURES_PER_EMAIL):
        assert accounts.authenticate(store, "ana@example.com", "bad-guess", "10.0.0.1",
                                     at=at) is None
    with pytest.raises(RateLimited) as limited:
        accounts.authenticate(store, "ana@example.com", PASSWORD, "10.0.0.2", at=at)
    assert 0 < limited.value.retry_after <= accounts.FAILURE_WINDOW.total_seconds() + 1
    # The window passes: the right password works again.
    later = at + accounts.FAILURE_WINDOW + timedelta(seconds=1)
    assert accounts.authenticate(store, "ana@example.com", PASSWORD, "10.0.0.2",
                                 at=later) is not None
    # Per address: many emails from one address.
    for n in range(accounts.MAX_FAILURES_PER_ADDRESS):
        accounts.authenticate(store, f"x{n}@example.com", "bad-guess", "10.9.9.9", at=at)
    with pytest.raises(RateLimited):
        accounts.authenticate(store, "ana@example.com", PASSWORD, "10.9.9.9", at=at)


def test_vault_encrypts_and_rotates(store: Store, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(KEYS_ENV, raising=False)
    user = accounts.create_user(store, "ana@example.com", PASSWORD)
    keys = load_keys(tmp_path / "data")
    key_file = tmp_path / "data" / "server.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    vault = Vault(store, keys)
    secret = "pa55-" + os.urandom(8).hex()
    vault.put(user.id, "groupware", Credentials(username="ana", password=secret))
    with store.engine.connect() as conn:
        cipher = conn.execute(select(user_secrets.c.ciphertext)).scalar_one()
    assert secret not in cipher and "ana" not in cipher
    assert vault.get(user.id, "groupware").password == secret
    assert secret not in repr(vault.get(user.id, "groupware"))
    # Rotation: a new key first, the old one after it; afterwards the new key alone opens.
    old = key_file.read_text().strip()
    new = Fernet.generate_key().decode()
    rotating = Vault(store, load_keys(None, {KEYS_ENV: f"{new},{old}"}))
    assert rotating.rotate() == 1
    only_new = Vault(store, load_keys(None, {KEYS_ENV: new}))
    assert only_new.get(user.id, "groupware").password == secret
    with pytest.raises(ConfigError, match="does not open"):
        Vault(store, load_keys(None, {KEYS_ENV: old})).get(user.id, "groupware")
    with pytest.raises(ConfigError, match="Fernet"):
        load_keys(None, {KEYS_ENV: "not-a-key"})
    assert only_new.delete(user.id, "groupware") and only_new.get(user.id, "groupware") is None


def test_settings_merge_defaults_admin_user_and_locks():
    assert settings.effective("calendar", {}, {}).mode == "off"
    admin = {"mode": AdminSetting("auto"), "past_days": AdminSetting(10, locked=True),
             "conflict": AdminSetting(None, locked=True)}
    own = {"mode": "manual", "past_days": 30, "conflict": "crm", "future_days": 20}
    policy = settings.effective("calendar", admin, own)
    assert (policy.mode, policy.past_days, policy.conflict, policy.future_days) == \
        ("manual", 10, "newest", 20)
    assert settings.locked(admin) == ["conflict", "past_days"]
    # The user changes what is free; a locked setting is refused unless unchanged.
    new = settings.change("calendar", admin, own, {"future_days": 100, "past_days": 10})
    assert new["future_days"] == 100 and new["past_days"] == 30
    with pytest.raises(LockedSetting) as refused:
        settings.change("calendar", admin, own, {"past_days": 5})
    assert refused.value.name == "past_days"
    with pytest.raises(ConfigError, match="future_days"):
        settings.change("calendar", admin, own, {"future_days": 999})
    with pytest.raises(ConfigError, match="not a valid value"):
        settings.change("calendar", admin, own, {"future_days": "9"})
    with pytest.raises(ConfigError, match="calendar only"):
        settings.change("tasks", {}, {}, {"mode": "record"})
    with pytest.raises(ConfigError, match="unknown setting"):
        settings.change("tasks", {}, {}, {"colour": "red"})
    assert settings.change("tasks", {}, {}, {"prevent": ["crm:delete", "crm:delete"]}) == \
        {"prevent": ["crm:delete"]}
    assert settings.parse_text("auto_days", "mon,tue") == ["mon", "tue"]
    form = {f["name"]: f for f in settings.describe("calendar")}
    assert set(form) == set(settings.NAMES) and next(iter(form)) == "mode"
    assert form["mode"]["choices"] == ["off", "manual", "auto", "record"]
    assert form["prevent"]["type"] == "choices" and form["include_private"]["type"] == "bool"
    assert all(f["help"] for f in form.values())
    tasks = {f["name"]: f for f in settings.describe("tasks")}
    assert "record" not in tasks["mode"]["choices"] and "selection" not in tasks
    assert settings.parse_text("include_private", "yes") is True


def test_service_on_both_stores(store: Store, monkeypatch: pytest.MonkeyPatch):
    """The service's own tables and queries work on SQLite and PostgreSQL alike (the
    scale mode runs the same service on PostgreSQL)."""
    from crmsync.server import service
    from crmsync.server.queue import EmbeddedQueue
    from crmsync.server.service import Server

    vault = Vault(store, load_keys(None, {KEYS_ENV: Fernet.generate_key().decode()}))
    srv = Server(store, vault, EmbeddedQueue(store.engine))
    admin = accounts.create_user(store, "root@example.com", PASSWORD, is_admin=True)
    user = accounts.create_user(store, "ana@example.com", PASSWORD)
    service.set_admin_setting(srv, admin, "calendar", "auto_every", 90, True)
    service.update_settings(srv, user, "calendar", {"mode": "auto"})
    assert srv.queue.state(user.id, "calendar") == "queued"
    [job] = [j for j in service.jobs_overview(srv, user) if j.kind == "calendar"]
    assert (job.enabled, job.frequency, job.connected, job.state) == (True, 90, False, "queued")
    assert service.scheduled(store) == []  # not connected
    assert service.run_job(store, user.id, "calendar", vault=vault) == "not connected"
    [run] = service.list_runs(srv, user)
    assert run["status"] == "failed" and "connect your groupware and CRM" in run["error"]
    [ana, _] = service.users_overview(srv, admin)
    assert ana.last_error == run["error"] and ana.last_run["status"] == "failed"
    assert service.list_plans(srv, user) == [] and service.list_ignores(srv, user) == []
    # An admin default that turns an object on queues its first run for every user.
    assert srv.queue.state(user.id, "tasks") is None
    service.set_admin_setting(srv, admin, "tasks", "mode", "manual", False)
    assert srv.queue.state(user.id, "tasks") == "queued"
    assert srv.queue.state(admin.id, "tasks") == "queued"
    service.update_settings(srv, user, "contacts", {"mode": "manual"})
    service.set_admin_setting(srv, admin, "contacts", "mode", "auto", False)
    assert srv.queue.state(admin.id, "contacts") == "queued"
    service.set_paused(srv, admin, True)
    assert service.paused(store) and service.run_job(store, user.id, "calendar",
                                                     vault=vault) == "paused"
