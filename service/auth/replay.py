"""Seen-``jti`` stores: a token is accepted once, whichever gunicorn worker receives it.

``security.replay_store`` picks one:

- ``database`` (default): the ``jwt_replay`` table on ``service.storage.db.metadata``. The first insert
  of a key wins; a unique violation means replay. The database is what every worker shares, so
  nothing else has to be deployed. Expired rows are purged now and then.
- ``redis``: ``SET key NX PX ttl`` on ``security.redis_url``; Redis expires keys itself.
- ``memory``: a dict in this process, for one-process runs and tests only.

Keys are a SHA-256 of issuer and jti (fixed length, and a jti is only unique per issuer). A key
is kept until the token can no longer be accepted anyway (``exp`` plus the clock skew).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from typing import Protocol

from sqlalchemy import BigInteger, Column, String, Table, delete, inspect, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from service.storage.db import make_engine, metadata

log = logging.getLogger("ivig_cds.auth")

jwt_replay = Table(
    "jwt_replay",
    metadata,
    Column("token_key", String(64), primary_key=True, comment="sha256(iss NUL jti), hex"),
    Column("expires_at", BigInteger, nullable=False, index=True, comment="epoch seconds after which the row may go"),
)

#: How often (seconds) one process deletes expired rows.
PURGE_INTERVAL_SECONDS = 60.0


def replay_key(issuer: str, jti: str) -> str:
    return hashlib.sha256(issuer.encode() + b"\0" + jti.encode()).hexdigest()


class ReplayStore(Protocol):
    def first_use(self, key: str, expires_at: float, now: float) -> bool:
        """Record ``key`` until ``expires_at``; False when it was already recorded (a replay)."""
        ...

    def ping(self) -> None:
        """Raise when the store cannot be used (readiness)."""
        ...

    def close(self) -> None: ...


class MemoryReplayStore:
    """One process only: with several workers each would accept the token once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        self._purged_at = 0.0

    def first_use(self, key: str, expires_at: float, now: float) -> bool:
        with self._lock:
            if now - self._purged_at >= PURGE_INTERVAL_SECONDS or len(self._seen) > 100_000:
                self._seen = {k: exp for k, exp in self._seen.items() if exp >= now}
                self._purged_at = now
            known = self._seen.get(key)
            if known is not None and known >= now:
                return False
            self._seen[key] = expires_at
            return True

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None


class SqlReplayStore:
    """The ``jwt_replay`` table; correct across processes because the primary key decides."""

    def __init__(self, url_or_engine: str | Engine) -> None:
        self._owns_engine = isinstance(url_or_engine, str)
        self.engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        self._ready = False
        self._lock = threading.Lock()
        self._purged_at = float("-inf")

    def _ensure_table(self) -> None:
        """Create the table when migrations have not (tests, first start); tolerant of a racing worker."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            try:
                metadata.create_all(self.engine, tables=[jwt_replay])
            except (OperationalError, ProgrammingError, IntegrityError):
                # another worker created it between the existence check and CREATE TABLE
                if not inspect(self.engine).has_table(jwt_replay.name):
                    raise
            self._ready = True

    def _insert(self, key: str, expires_at: int) -> bool:
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(jwt_replay).values(token_key=key, expires_at=expires_at))
            return True
        except IntegrityError:
            return False

    def first_use(self, key: str, expires_at: float, now: float) -> bool:
        self._ensure_table()
        expiry = int(math.ceil(expires_at))
        if now - self._purged_at >= PURGE_INTERVAL_SECONDS:
            self._purged_at = now
            with self.engine.begin() as conn:
                conn.execute(delete(jwt_replay).where(jwt_replay.c.expires_at < int(now)))
        if self._insert(key, expiry):
            return True
        # Taken: a replay, unless the old row outlived its token (then it may be reused once).
        with self.engine.begin() as conn:
            gone = conn.execute(delete(jwt_replay).where(
                jwt_replay.c.token_key == key, jwt_replay.c.expires_at < int(now))).rowcount
        return bool(gone) and self._insert(key, expiry)

    def ping(self) -> None:
        self._ensure_table()
        with self.engine.connect() as conn:
            conn.execute(select(jwt_replay.c.token_key).limit(1))

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()


class RedisReplayStore:
    """``SET NX`` with a time to live: atomic in Redis, expiry handled by Redis."""

    PREFIX = "ivig-cds:jti:"

    def __init__(self, url: str) -> None:
        import redis  # noqa: PLC0415 - only needed when this store is chosen

        self._client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)

    def first_use(self, key: str, expires_at: float, now: float) -> bool:
        ttl_ms = max(1, int(math.ceil((expires_at - now) * 1000)))
        return bool(self._client.set(self.PREFIX + key, b"1", nx=True, px=ttl_ms))

    def ping(self) -> None:
        self._client.ping()

    def close(self) -> None:
        self._client.close()


def open_replay_store(security, database_url: str) -> ReplayStore:
    """The store ``security.replay_store`` names (built on first use, after any worker fork)."""
    kind = security.replay_store
    if kind == "memory":
        return MemoryReplayStore()
    if kind == "redis":
        if not security.redis_url:
            raise ValueError("security.replay_store = redis needs security.redis_url")
        return RedisReplayStore(security.redis_url)
    return SqlReplayStore(database_url)
