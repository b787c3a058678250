"""Users, passwords, web sessions, CSRF tokens and sign-in rate limits.

Passwords are kept as argon2id hashes (argon2-cffi). A session is a random token in an
HttpOnly cookie; the store keeps only the token's SHA-256, so a leaked database opens no
session. Each session has its own CSRF token, which every unsafe request must echo.

Failed sign-ins are counted in the store (table ``login_failures``), per email and per
client address, so that every web process of a server shares one limit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, insert, select, update

from crmsync.errors import ConfigError
from crmsync.model import OBJECT_KINDS
from crmsync.store import Store, now
from crmsync.store.schema import login_failures, profiles, users, web_sessions

SESSION_DAYS = 14
# Sign-in limits: this many failures within the window block further tries.
FAILURE_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_EMAIL = 5
MAX_FAILURES_PER_ADDRESS = 20
MIN_PASSWORD = 8

_hasher = PasswordHasher()
# Verified against when the email is unknown, so that both cases take as long.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class RateLimited(Exception):
    """Too many failed sign-ins; try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed sign-ins; try again in {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class User:
    id: int
    email: str
    is_admin: bool
    profile_id: int
    disabled: bool = False


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    token_hash: str


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in email) \
            or len(email) > 254:
        raise ConfigError(f"{email!r} is not an email address")
    return email


def _user(row) -> User:
    return User(row.id, row.email, bool(row.is_admin), row.profile_id, bool(row.disabled))


# --- users ------------------------------------------------------------------------------


def create_user(store: Store, email: str, password: str, *, is_admin: bool = False) -> User:
    """Add a user with their own (empty) profile: no connections, every object off."""
    email = normalize_email(email)
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"the password must have at least {MIN_PASSWORD} characters")
    digest = _hasher.hash(password)
    with store.engine.begin() as conn:
        if conn.execute(select(users.c.id).where(users.c.email == email)).first():
            raise ConfigError(f"a user {email} exists already")
        # The profile's name is internal (the CLI never sees these profiles by name
        # collision: they are prefixed); its endpoints come with the connections.
        profile_id = conn.execute(insert(profiles).values(
            name=f"server-user:{email}", crm="", groupware="",
            objects=json.dumps(list(OBJECT_KINDS)), settings="{}", created_at=now(),
        ).returning(profiles.c.id)).scalar_one()
        user_id = conn.execute(insert(users).values(
            email=email, password_hash=digest, is_admin=is_admin, profile_id=profile_id,
            created_at=now()).returning(users.c.id)).scalar_one()
    return User(user_id, email, is_admin, profile_id)


def get_user(store: Store, user_id: int) -> User | None:
    with store.engine.connect() as conn:
        row = conn.execute(select(users).where(users.c.id == user_id)).first()
    return _user(row) if row else None


def find_user(store: Store, email: str) -> User | None:
    with store.engine.connect() as conn:
        row = conn.execute(select(users).where(users.c.email == email.strip().lower())).first()
    return _user(row) if row else None


def list_users(store: Store) -> list[User]:
    with store.engine.connect() as conn:
        return [_user(r) for r in conn.execute(select(users).order_by(users.c.email))]


def set_password(store: Store, user_id: int, password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"the password must have at least {MIN_PASSWORD} characters")
    with store.engine.begin() as conn:
        conn.execute(update(users).where(users.c.id == user_id)
                     .values(password_hash=_hasher.hash(password)))
        conn.execute(delete(web_sessions).where(web_sessions.c.user_id == user_id))


def set_admin(store: Store, user_id: int, is_admin: bool) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(users).where(users.c.id == user_id).values(is_admin=is_admin))


def count_admins(store: Store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(users)
                            .where(users.c.is_admin.is_(True))).scalar_one()


# --- signing in -------------------------------------------------------------------------


def _retry_after(store: Store, keys: list[tuple[str, int]], at: datetime) -> int | None:
    """Seconds until the oldest counted failure of a blocked key leaves the window."""
    since = _stamp(at - FAILURE_WINDOW)
    wait = None
    with store.engine.connect() as conn:
        for key, most in keys:
            times = list(conn.execute(
                select(login_failures.c.at).where(login_failures.c.key == key,
                                                  login_failures.c.at >= since)
                .order_by(login_failures.c.at.desc()).limit(most)).scalars())
            if len(times) >= most:
                oldest = datetime.strptime(times[-1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
                seconds = int((oldest + FAILURE_WINDOW - at).total_seconds()) + 1
                wait = max(wait or 0, max(seconds, 1))
    return wait


def authenticate(store: Store, email: str, password: str, address: str,
                 at: datetime | None = None) -> User | None:
    """The user whose email and password these are, else None (and the failure counted).

    RateLimited when the email or the client address failed too often lately; a right
    password does not get through a limit, so guessing cannot go on at full speed.
    """
    at = at or datetime.now(UTC)
    email = email.strip().lower()
    keys = [(f"email:{email}", MAX_FAILURES_PER_EMAIL),
            (f"addr:{address}", MAX_FAILURES_PER_ADDRESS)]
    wait = _retry_after(store, keys, at)
    if wait is not None:
        raise RateLimited(wait)
    with store.engine.connect() as conn:
        row = conn.execute(select(users).where(users.c.email == email)).first()
    ok = False
    try:
        ok = _hasher.verify(row.password_hash if row else _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    if row is None or not ok or row.disabled:
        with store.engine.begin() as conn:
            conn.execute(insert(login_failures), [{"key": k, "at": _stamp(at)} for k, _ in keys])
            # Old failures count no more: forget them as we go.
            conn.execute(delete(login_failures).where(
                login_failures.c.at < _stamp(at - FAILURE_WINDOW * 4)))
        return None
    if _hasher.check_needs_rehash(row.password_hash):
        with store.engine.begin() as conn:
            conn.execute(update(users).where(users.c.id == row.id)
                         .values(password_hash=_hasher.hash(password)))
    with store.engine.begin() as conn:
        conn.execute(delete(login_failures).where(login_failures.c.key == keys[0][0]))
    return _user(row)


# --- sessions ---------------------------------------------------------------------------


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(store: Store, user: User, at: datetime | None = None) -> tuple[str, Session]:
    """A new session: the cookie's token (shown once, never stored) and the session."""
    at = at or datetime.now(UTC)
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    with store.engine.begin() as conn:
        conn.execute(insert(web_sessions).values(
            token_hash=_hash(token), user_id=user.id, csrf_token=csrf, created_at=_stamp(at),
            expires_at=_stamp(at + timedelta(days=SESSION_DAYS))))
        conn.execute(delete(web_sessions).where(web_sessions.c.expires_at < _stamp(at)))
    return token, Session(user, csrf, _hash(token))


def session_of(store: Store, token: str | None, at: datetime | None = None) -> Session | None:
    """The live session a cookie's token opens, if any (not for a disabled user)."""
    if not token or len(token) > 200:
        return None
    at = at or datetime.now(UTC)
    with store.engine.connect() as conn:
        row = conn.execute(
            select(web_sessions.c.csrf_token, web_sessions.c.expires_at, users)
            .join(users, users.c.id == web_sessions.c.user_id)
            .where(web_sessions.c.token_hash == _hash(token))).first()
    if row is None or row.expires_at < _stamp(at) or row.disabled:
        return None
    return Session(_user(row), row.csrf_token, _hash(token))


def end_session(store: Store, session: Session) -> None:
    with store.engine.begin() as conn:
        conn.execute(delete(web_sessions).where(web_sessions.c.token_hash == session.token_hash))


def csrf_ok(session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf_token.encode(),
                                              str(sent).encode())
