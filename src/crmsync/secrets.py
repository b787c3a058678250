"""Secrets at rest (passwords, tokens), encrypted with Fernet, and credentials per side.

The key comes from ``CRMSYNC_SECRET_KEY`` or, failing that, from ``secret.key`` in the
config folder (created on first use, readable by its owner only). Key rotation:
set ``CRMSYNC_SECRET_KEY="NEW,OLD"`` (keys separated by commas, newest first) and run
``crmsync secrets rotate``; every secret is then re-encrypted with NEW and OLD can go.

Environment variables override the store for scripts and CI, per side (CRM or GROUPWARE):
``CRMSYNC_GROUPWARE_USERNAME``, ``..._PASSWORD``, ``..._TOKEN``, ``..._CA_BUNDLE`` and
``..._INSECURE=1`` (no TLS verification). Secrets are never printed or logged.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from crmsync.config import Paths
from crmsync.connectors.base import Credentials, Side
from crmsync.errors import ConfigError

KEY_ENV = "CRMSYNC_SECRET_KEY"


class SecretStore:
    def __init__(self, paths: Paths) -> None:
        self.file = paths.data_dir / "secrets.json"
        self.key_file = paths.config_dir / "secret.key"

    def _fernet(self, create: bool):
        from cryptography.fernet import Fernet, MultiFernet

        keys = os.environ.get(KEY_ENV, "")
        if keys.strip():
            try:
                return MultiFernet([Fernet(k.strip().encode()) for k in keys.split(",")
                                    if k.strip()])
            except ValueError:
                raise ConfigError(f"{KEY_ENV} is not a valid Fernet key (or list of keys); "
                                  "make one with 'crmsync secrets new-key'") from None
        if not self.key_file.exists():
            if not create:
                return None
            self.key_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
        return MultiFernet([Fernet(self.key_file.read_bytes().strip())])

    def _load(self) -> dict[str, str]:
        try:
            return json.loads(self.file.read_text())
        except FileNotFoundError:
            return {}

    def _save(self, data: dict[str, str]) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.file)

    def get(self, name: str) -> str | None:
        token = self._load().get(name)
        if token is None:
            return None
        fernet = self._fernet(create=False)
        if fernet is None:
            raise ConfigError(f"the secret key is missing ({self.key_file} or {KEY_ENV}); "
                              f"secrets in {self.file} cannot be read")
        from cryptography.fernet import InvalidToken

        try:
            return fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ConfigError(f"secret {name!r} does not open with the current key; "
                              f"was {KEY_ENV} changed without keeping the old key?") from None

    def set(self, name: str, value: str) -> None:
        data = self._load()
        data[name] = self._fernet(create=True).encrypt(value.encode()).decode()
        self._save(data)

    def delete(self, name: str) -> None:
        data = self._load()
        if data.pop(name, None) is not None:
            self._save(data)

    def rotate(self) -> int:
        """Re-encrypt every secret with the newest key; returns how many."""
        data = self._load()
        fernet = self._fernet(create=False)
        if fernet is None or not data:
            return 0
        self._save({name: fernet.rotate(token.encode()).decode()
                    for name, token in data.items()})
        return len(data)


def _name(profile: str, side: Side) -> str:
    return f"profile/{profile}/{side}"


def save_credentials(store: SecretStore, profile: str, side: Side, creds: Credentials) -> None:
    values = {k: v for k, v in asdict(creds).items() if k != "renewed"}
    store.set(_name(profile, side), json.dumps(values))


def forget_credentials(store: SecretStore, profile: str) -> None:
    for side in ("crm", "groupware"):
        store.delete(_name(profile, side))  # type: ignore[arg-type]


def credentials_for(paths: Paths, profile: str, side: Side) -> Credentials | None:
    """A side's credentials: the environment first, then the encrypted store."""
    stored = SecretStore(paths).get(_name(profile, side)) if _has_store(paths) else None
    values = json.loads(stored) if stored else {}
    prefix = f"CRMSYNC_{side.upper()}_"
    for field in ("username", "password", "token", "ca_bundle", "client_id", "client_secret",
                  "refresh_token", "private_key", "login_url"):
        env = os.environ.get(prefix + field.upper())
        if env:
            values[field] = env
    if os.environ.get(prefix + "INSECURE") == "1":
        values["verify"] = False
    if not values:
        return None
    if not stored or os.environ.get(prefix + "REFRESH_TOKEN"):
        return Credentials(**values)

    def keep(token: str) -> None:
        save_credentials(SecretStore(paths), profile, side,
                         Credentials(**(values | {"refresh_token": token})))

    return Credentials(**values, renewed=keep)


def _has_store(paths: Paths) -> bool:
    return Path(paths.data_dir / "secrets.json").exists()
