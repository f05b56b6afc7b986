"""Who is asking: argon2id password hashes, session cookies, CSRF tokens and login rate limiting.

A session is a random token sent as the `slm_session` cookie (HttpOnly, SameSite=Strict); the database keeps only
its SHA-256, so a leaked database opens no session. Each session has its own CSRF token, returned by login and
`/api/me` and required in the `X-CSRF-Token` header of every state-changing request. There are no default
credentials: the first admin is created by `slm label init`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from slmkit.label.db import LoginAttempt, SessionRow, User, now

COOKIE = "slm_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_HOURS = 12
MAX_FAILURES = 5  # failed logins per username and IP ...
FAILURE_WINDOW_S = 60  # ... within this many seconds, then 429
MIN_PASSWORD = 8

_hasher = PasswordHasher()  # argon2id with the library's (RFC 9106 low-memory) defaults
_DUMMY_HASH = _hasher.hash("not a password of anyone")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_password() -> str:
    """A one-time random password (about 96 bits)."""
    return secrets.token_urlsafe(12)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_login(s: Session, username: str, password: str) -> User | None:
    """The user whose password matches; None otherwise (hashing a dummy so unknown names take as long)."""
    user = s.scalar(select(User).where(User.username == username))
    if user is None:
        verify_password(_DUMMY_HASH, password)
        return None
    return user if verify_password(user.password_hash, password) else None


def too_many_failures(s: Session, username: str, ip: str) -> bool:
    since = now() - dt.timedelta(seconds=FAILURE_WINDOW_S)
    n = s.scalar(select(func.count()).select_from(LoginAttempt).where(LoginAttempt.username == username, LoginAttempt.ip == ip, LoginAttempt.at >= since))
    return n >= MAX_FAILURES


def record_failure(s: Session, username: str, ip: str) -> None:
    s.execute(delete(LoginAttempt).where(LoginAttempt.at < now() - dt.timedelta(seconds=FAILURE_WINDOW_S)))
    s.add(LoginAttempt(username=username[:100], ip=ip[:64]))


def start_session(s: Session, user: User) -> tuple[str, str]:
    """A new session for the user: (cookie token, CSRF token); expired sessions are dropped."""
    s.execute(delete(SessionRow).where(SessionRow.expires_at < now()))
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    s.add(SessionRow(token_hash=_digest(token), user_id=user.id, csrf=csrf, expires_at=now() + dt.timedelta(hours=SESSION_HOURS)))
    return token, csrf


def session_of(s: Session, token: str | None) -> tuple[User, SessionRow] | None:
    if not token:
        return None
    row = s.get(SessionRow, _digest(token))
    if row is None or row.expires_at < now():
        return None
    return s.get(User, row.user_id), row


def end_session(s: Session, token: str | None) -> None:
    if token:
        s.execute(delete(SessionRow).where(SessionRow.token_hash == _digest(token)))


def csrf_ok(row: SessionRow, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(row.csrf.encode(), sent.encode())
