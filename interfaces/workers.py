"""The API worker processes of `flusia serve --workers N`.

uvicorn's supervisor (the `serve` process) starts N workers and replaces any that dies; each imports this module
and calls `create_worker_app`, which builds the worker's own Runtime (event store, pools, tool runner, position
feed) from the database URL `serve` resolved. Workers are stateless and run no stream consumer: the `serve`
process runs those beside the supervisor (Runtime.run_consumers), each one active in one process at a time.
A worker's writes wait for the read models through the position feed (LISTEN/NOTIFY), so a write through one
worker is visible to a read through any other once its answer has come back. What must hold across workers
without the database, the limit of GET /mcp streams per token, uses file locks (interfaces/slots.py).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from litestar import Litestar

DATABASE_URL_ENV = "FLUSIA_WORKER_DATABASE_URL"
"""Set by `serve` for its workers: the database it migrated (the embedded server's, or DATABASE_URL)."""
POOL_SIZE_ENV = "FLUSIA_WORKER_POOL_SIZE"
VERBOSE_ENV = "FLUSIA_WORKER_VERBOSE"


def create_worker_app() -> Litestar:
    from interfaces.http import create_app
    from interfaces.logs import configure
    from interfaces.runtime import Runtime

    configure(verbose=os.environ.get(VERBOSE_ENV) == "1")
    logging.getLogger("uvicorn.access").propagate = False  # as access_log=False did before `configure` here
    runtime = Runtime(os.environ[DATABASE_URL_ENV], pool_size=int(os.environ.get(POOL_SIZE_ENV) or 20))
    app = create_app(runtime, run_projector=False)  # no consumers here: see Runtime.start
    app.on_shutdown.append(runtime.close)
    watch_parent()
    return app


def watch_parent(every: float = 1.0) -> None:
    """A worker whose `serve` process died (kill -9: nobody supervises it any more, and it would keep the port from a
    new `serve`) shuts down gracefully, as on SIGTERM."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(every)
            if os.getppid() != parent:
                logging.getLogger("flusia.workers").warning("the serve process is gone; this API worker stops")
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="watch-serve", daemon=True).start()

