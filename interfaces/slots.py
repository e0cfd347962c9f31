"""Limits shared by the API workers of one `flusia serve --workers N` without the database: file locks in a directory
`serve` creates for them (FLUSIA_WORKER_SLOTS_DIR) and removes when it stops."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

SLOTS_ENV = "FLUSIA_WORKER_SLOTS_DIR"


class SharedSlots:
    """At most `limit` holders of a key at once across the worker processes of one `serve`: a holder keeps an
    exclusive flock on one of the key's `limit` slot files. The kernel drops a lock when its holder closes it or dies,
    so a killed worker's slots free themselves."""

    def __init__(self, directory: str, limit: int) -> None:
        self.directory, self.limit = directory, limit

    def take(self, key: str) -> Callable[[], None] | None:
        """A slot of `key` (a hex digest: a safe file name), as the function that gives it back; None when all are held."""
        for i in range(self.limit):
            fd = os.open(os.path.join(self.directory, f"{key}.{i}"), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue

            def release(fd: int = fd) -> None:
                os.close(fd)  # closing the descriptor releases its lock

            return release
        return None


def shared_slots(limit: int) -> SharedSlots | None:
    """The workers' shared slots, when this process is one of `serve --workers N`'s workers."""
    directory = os.environ.get(SLOTS_ENV)
    return SharedSlots(directory, limit) if directory and os.path.isdir(directory) else None
