"""Each user's connection secrets, encrypted at rest with the server's Fernet keys.

Keys come from ``CRMSYNC_SERVER_KEYS`` (comma-separated, newest first) or, failing that,
from ``server.key`` in the server's data folder, created readable by its owner only on
first start. Rotation: put a new key first (``CRMSYNC_SERVER_KEYS="NEW,OLD"``), run
``crmsync user rotate-keys`` (:meth:`Vault.rotate`), then drop OLD. Secrets are decrypted
only to build a run's connectors; nothing here logs or returns them to a page.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import delete, insert, select, update

from crmsync.connectors.base import Credentials
from crmsync.errors import ConfigError
from crmsync.store import Store, now
from crmsync.store.schema import user_secrets

KEYS_ENV = "CRMSYNC_SERVER_KEYS"
KEY_FILE = "server.key"


def load_keys(data_dir: Path | None, environ: dict[str, str] | None = None) -> MultiFernet:
    """The server's keys: the environment's, else the key file's (created when missing)."""
    env = (environ if environ is not None else os.environ).get(KEYS_ENV, "")
    if env.strip():
        try:
            return MultiFernet([Fernet(k.strip().encode()) for k in env.split(",") if k.strip()])
        except ValueError:
            raise ConfigError(f"{KEYS_ENV} is not a comma-separated list of Fernet keys; "
                              "make one with 'crmsync secrets new-key'") from None
    if data_dir is None:
        raise ConfigError(f"no server key: set {KEYS_ENV} or give a data folder")
    file = data_dir / KEY_FILE
    if not file.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it meanwhile
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
    lines = [k.strip() for k in file.read_text().replace(",", "\n").splitlines() if k.strip()]
    try:
        return MultiFernet([Fernet(k.encode()) for k in lines])
    except ValueError:
        raise ConfigError(f"{file} holds no valid Fernet key") from None


class Vault:
    """Encrypted credentials per user and name ("crm", "groupware")."""

    def __init__(self, store: Store, keys: MultiFernet) -> None:
        self.store = store
        self._keys = keys

    def put(self, user_id: int, name: str, creds: Credentials) -> None:
        token = self._keys.encrypt(json.dumps(asdict(creds)).encode()).decode()
        c = user_secrets.c
        with self.store.engine.begin() as conn:
            conn.execute(delete(user_secrets).where(c.user_id == user_id, c.name == name))
            conn.execute(insert(user_secrets).values(user_id=user_id, name=name,
                                                     ciphertext=token, updated_at=now()))

    def get(self, user_id: int, name: str) -> Credentials | None:
        c = user_secrets.c
        with self.store.engine.connect() as conn:
            token = conn.execute(select(c.ciphertext).where(
                c.user_id == user_id, c.name == name)).scalar()
        if token is None:
            return None
        try:
            values = json.loads(self._keys.decrypt(token.encode()))
        except InvalidToken:
            raise ConfigError(f"a stored {name} secret does not open with the server's keys; "
                              f"was {KEYS_ENV} (or {KEY_FILE}) changed without keeping the "
                              "old key?") from None
        return Credentials(**values)

    def names(self, user_id: int) -> list[str]:
        c = user_secrets.c
        with self.store.engine.connect() as conn:
            return list(conn.execute(select(c.name).where(c.user_id == user_id)
                                     .order_by(c.name)).scalars())

    def delete(self, user_id: int, name: str) -> bool:
        c = user_secrets.c
        with self.store.engine.begin() as conn:
            return bool(conn.execute(delete(user_secrets).where(
                c.user_id == user_id, c.name == name)).rowcount)

    def rotate(self) -> int:
        """Re-encrypt every secret with the newest key; how many."""
        c = user_secrets.c
        n = 0
        with self.store.engine.begin() as conn:
            rows = conn.execute(select(c.user_id, c.name, c.ciphertext)).all()
            for row in rows:
                try:
                    fresh = self._keys.rotate(row.ciphertext.encode()).decode()
                except InvalidToken:
                    raise ConfigError(f"a stored secret of user {row.user_id} does not open "
                                      "with any of the keys; keep the old key in the list "
                                      "until rotation is done") from None
                conn.execute(update(user_secrets).where(
                    c.user_id == row.user_id, c.name == row.name).values(ciphertext=fresh))
                n += 1
        return n
