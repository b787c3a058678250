"""Secrets at rest: encrypted, rotatable, overridable from the environment, never shown."""

from __future__ import annotations

import json

import pytest

from crmsync.config import Paths
from crmsync.connectors.base import Credentials
from crmsync.errors import ConfigError
from crmsync.secrets import SecretStore, credentials_for, save_credentials

from test_cli import crmsync


def test_secrets_are_encrypted_and_rotate(tmp_path, monkeypatch):
    monkeypatch.delenv("CRMSYNC_SECRET_KEY", raising=False)
    paths = Paths(tmp_path, tmp_path)
    store = SecretStore(paths)
    store.set("a", "hunter2")
    assert "hunter2" not in (tmp_path / "secrets.json").read_text()
    assert (tmp_path / "secret.key").stat().st_mode & 0o077 == 0
    assert store.get("a") == "hunter2"

    from cryptography.fernet import Fernet

    old, new = (tmp_path / "secret.key").read_text().strip(), Fernet.generate_key().decode()
    monkeypatch.setenv("CRMSYNC_SECRET_KEY", f"{new},{old}")
    assert store.rotate() == 1
    monkeypatch.setenv("CRMSYNC_SECRET_KEY", new)  # the old key is gone now
    assert store.get("a") == "hunter2"
    monkeypatch.setenv("CRMSYNC_SECRET_KEY", Fernet.generate_key().decode())
    with pytest.raises(ConfigError, match="does not open with the current key"):
        store.get("a")


def test_credentials_from_store_and_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("CRMSYNC_SECRET_KEY", raising=False)
    for var in ("USERNAME", "PASSWORD", "TOKEN", "CA_BUNDLE", "INSECURE"):
        monkeypatch.delenv(f"CRMSYNC_GROUPWARE_{var}", raising=False)
    paths = Paths(tmp_path, tmp_path)
    assert credentials_for(paths, "p", "groupware") is None
    save_credentials(SecretStore(paths), "p", "groupware", Credentials("ana", "s3cret"))
    creds = credentials_for(paths, "p", "groupware")
    assert (creds.username, creds.password, creds.verify) == ("ana", "s3cret", True)
    assert "s3cret" not in repr(creds)
    monkeypatch.setenv("CRMSYNC_GROUPWARE_PASSWORD", "from-env")
    monkeypatch.setenv("CRMSYNC_GROUPWARE_INSECURE", "1")
    creds = credentials_for(paths, "p", "groupware")
    assert (creds.password, creds.verify) == ("from-env", False)


def test_login_stores_the_password_without_printing_it(tmp_path):
    home = tmp_path / "home"
    crmsync(home, "profile", "add", "w", "--crm", "vdir:/a", "--groupware",
            "calendar=caldav:http://127.0.0.1:1/cal/", "--groupware",
            "contacts=carddav:http://127.0.0.1:1/book/", "--objects", "calendar,contacts")
    out = crmsync(home, "login", "w", "--username", "ana", "--password-stdin",
                  input="pa55word\n")
    assert "pa55word" not in out.stdout + out.stderr
    assert "pa55word" not in (home / "secrets.json").read_text()
    shown = crmsync(home, "profile", "show", "w", "--json").stdout
    assert "pa55word" not in shown
    groupware = json.loads(json.loads(shown)["groupware"])
    assert groupware == {"calendar": "caldav:http://127.0.0.1:1/cal/",
                         "contacts": "carddav:http://127.0.0.1:1/book/"}
    missing = crmsync(home, "profile", "add", "x", "--crm", "vdir:/a", "--groupware",
                      "calendar=vdir:/b", "--objects", "calendar,tasks", check=2)
    assert "no groupware endpoint for tasks" in missing.stderr
