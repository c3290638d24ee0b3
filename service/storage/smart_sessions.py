"""SMART launch state and app sessions, shared by every worker and replica through the database.

A launch is started on one gunicorn worker and its OAuth callback may land on another (or on
another pod), so the state cannot live in one process's memory. Each entry is a row keyed by a
hash of the opaque cookie value, and its payload (PKCE verifier, access token) is encrypted
with a key derived from that same cookie value: the database alone never yields a token, and
no server-side secret has to be distributed. Entries expire; the table is bounded per kind.

``SessionStore`` keeps the same entries in this process only, for an app without a database
(tests with the in-memory feedback store).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Column, Float, Index, LargeBinary, String, Table, delete, func, insert, select
from sqlalchemy.engine import Engine

from service.storage.db import metadata

smart_session = Table(
    "smart_session",
    metadata,
    Column("key_hash", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("expires_at", Float, nullable=False),
    Index("ix_smart_session_kind_expires_at", "kind", "expires_at"),
)


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _cipher(key: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"ivig-cds smart session").derive(key.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


class SqlSessionStore:
    """The same interface as the in-memory store: put / get / pop / len, per kind."""

    def __init__(self, engine: Engine, kind: str, *, max_entries: int = 1000,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.kind = kind
        self.max_entries = max_entries
        self.clock = clock
        smart_session.create(engine, checkfirst=True)  # migrations create it too; both are idempotent

    def put(self, data: dict[str, Any], ttl: float) -> str:
        key = secrets.token_urlsafe(32)
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(delete(smart_session).where(smart_session.c.expires_at <= now))
            count = conn.execute(select(func.count()).select_from(smart_session)
                                 .where(smart_session.c.kind == self.kind)).scalar_one()
            if count >= self.max_entries:  # a flood of launches evicts the oldest of its own kind only
                oldest = select(smart_session.c.key_hash).where(smart_session.c.kind == self.kind) \
                    .order_by(smart_session.c.expires_at).limit(count - self.max_entries + 1)
                conn.execute(delete(smart_session).where(smart_session.c.key_hash.in_(oldest.scalar_subquery())))
            conn.execute(insert(smart_session).values(
                key_hash=_key_hash(key), kind=self.kind, payload=_cipher(key).encrypt(orjson.dumps(data)),
                expires_at=now + ttl))
        return key

    def get(self, key: str | None) -> dict[str, Any] | None:
        if not key or len(key) > 256:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(smart_session.c.payload, smart_session.c.expires_at).where(
                smart_session.c.key_hash == _key_hash(key), smart_session.c.kind == self.kind)).first()
        if row is None or row.expires_at <= self.clock():
            return None
        try:
            return orjson.loads(_cipher(key).decrypt(row.payload))
        except InvalidToken:
            return None

    def pop(self, key: str | None) -> dict[str, Any] | None:
        found = self.get(key)
        if found is not None:
            with self.engine.begin() as conn:
                deleted = conn.execute(delete(smart_session).where(smart_session.c.key_hash == _key_hash(key)))
            if deleted.rowcount == 0:  # another worker consumed it first: one use only
                return None
        return found

    def __len__(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(smart_session).where(
                smart_session.c.kind == self.kind, smart_session.c.expires_at > self.clock())).scalar_one()


@dataclass
class _Entry:
    data: dict[str, Any]
    expires: float


@dataclass
class SessionStore:
    """Bounded, expiring, thread-safe map from an opaque id to launch state or an app session.

    The in-process variant, used when the app has no database (tests with the in-memory feedback
    store); with a database, ``SqlSessionStore`` is shared by all workers.
    """

    max_entries: int = 1000
    clock: Callable[[], float] = time.monotonic
    _entries: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, data: dict[str, Any], ttl: float) -> str:
        key = secrets.token_urlsafe(32)
        with self._lock:
            self._purge()
            while len(self._entries) >= self.max_entries:
                self._entries.popitem(last=False)
            self._entries[key] = _Entry(dict(data), self.clock() + ttl)
        return key

    def get(self, key: str | None) -> dict[str, Any] | None:
        if not key:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires <= self.clock():
                del self._entries[key]
                return None
            return dict(entry.data)

    def pop(self, key: str | None) -> dict[str, Any] | None:
        found = self.get(key)
        if found is not None:
            with self._lock:
                self._entries.pop(key, None)  # type: ignore[arg-type]
        return found

    def __len__(self) -> int:
        with self._lock:
            self._purge()
            return len(self._entries)

    def _purge(self) -> None:
        now = self.clock()
        for key in [k for k, e in self._entries.items() if e.expires <= now]:
            del self._entries[key]
