"""Engines on one fresh SQLite file, as gunicorn workers starting together would build them."""

from __future__ import annotations

import concurrent.futures
import threading

from sqlalchemy import text

from service.storage.db import make_engine


def test_many_engines_on_a_fresh_sqlite_file_all_connect(tmp_path):
    """Each first connection switches the file to WAL; racing switches must wait, not fail."""
    failures: list[BaseException] = []
    for round_ in range(10):
        url = f"sqlite:///{tmp_path / f'fresh-{round_}.sqlite3'}"
        barrier = threading.Barrier(12)

        def connect_and_write(_: int) -> str:
            engine = make_engine(url)
            barrier.wait()
            try:
                with engine.begin() as conn:
                    conn.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
                    return conn.execute(text("PRAGMA journal_mode")).scalar_one()
            finally:
                engine.dispose()

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(connect_and_write, i) for i in range(12)]
        for f in futures:
            if f.exception() is not None:
                failures.append(f.exception())
            else:
                assert f.result().lower() == "wal"
    assert failures == []
