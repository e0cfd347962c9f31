"""A background worker draining a queue table: its own autocommit connection (the advisory locks it takes live
there) and a thread woken by NOTIFY on its channel; `stop()` sends that notification so the thread ends at once.
The WhatsApp inbox and the invoice sync are two of these."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import psycopg
from psycopg.rows import dict_row


class ListeningWorker:
    channel: ClassVar[str]
    thread_name: ClassVar[str]
    application_name: ClassVar[str]

    def __init__(self, database_url: str, store: Any) -> None:
        self.database_url = database_url
        self.store = store
        self._conn: psycopg.Connection | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _db(self) -> psycopg.Connection:
        """This worker's own connection: it holds the advisory locks of what the worker runs."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.database_url, autocommit=True, row_factory=dict_row,
                                         application_name=self.application_name)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            try:
                with psycopg.connect(self.database_url, autocommit=True) as conn:
                    conn.execute("SELECT pg_notify(%s, 'stop')", (self.channel,))
            except psycopg.Error:
                pass
            self._thread.join(timeout=30)
            self._thread = None
        self.close()

    def _loop(self) -> None:
        raise NotImplementedError
