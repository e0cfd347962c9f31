"""`flusia` command line. Every subcommand but `serve` prints one JSON object on stdout."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from application import identity, permissions
from application.migrate import MigrationError, migrate
from interfaces.database import resolve_database_url


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, default=str))


def fail(message: str, code: int = 2) -> None:
    emit({"error": message})
    sys.exit(code)


def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def progress_bar(label: str):
    """`show(done, total)` on stderr: bar, counts, rate since the first call and time left at that rate."""
    started: list[float] = []

    def show(done: int, total: int) -> None:
        import time

        now = time.monotonic()
        if not started:
            started.extend([now, done])
        total = max(total, 1)
        width = 30
        filled = int(width * min(done, total) / total)
        elapsed = now - started[0]
        rate = (done - started[1]) / elapsed if elapsed > 0 else 0.0
        eta = f"{int((total - done) / rate) // 60}:{int((total - done) / rate) % 60:02d}" if rate > 0 and done < total else "--:--"
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:,.0f}/s ETA {eta}  ")
        sys.stderr.flush()

    return show


def cmd_tools(args: argparse.Namespace, url: str) -> None:
    """The tool inventory: toolsets with their tools, or (`--markdown`) the README's table of tool groups."""
    from application.inventory import registry, toolset_table

    if args.markdown:
        sys.stdout.write(toolset_table())
        return
    emit({"toolsets": [{"name": t.name, "title": t.title, "description": t.description, "default": t.default,
                        "tools": [op.name for op in registry if op.toolset == t.name]}
                       for t in registry.toolsets.values()]})


def cmd_migrate(args: argparse.Namespace, url: str) -> None:
    emit({"applied": migrate(url)})


def record_console(*change: Any) -> None:
    """settings_changes.record_console, imported when a command changes settings (the tool runner it brings is
    slow to import for every other command)."""
    from application.settings_changes import record_console as record

    record(*change)


def cmd_org_create(args: argparse.Namespace, url: str) -> None:
    migrate(url)
    with connect(url) as conn:
        created = identity.create_organization(conn, args.name, args.admin_email, args.admin_name)
    emit({"organization_id": created.organization_id, "user_id": created.user_id, "token": created.token,
          "token_id": created.token_id})


def cmd_user_create(args: argparse.Namespace, url: str) -> None:
    with connect(url) as conn, conn.transaction():
        user_id = identity.create_user(conn, args.org, args.email, args.name, args.role)
        record_console(conn, args.org, "flusia user create", "user", user_id, "created",
                       {"email": {"before": None, "after": args.email}, "role": {"before": None, "after": args.role}})
    emit({"user_id": user_id})


def cmd_user_set_password(args: argparse.Namespace, url: str) -> None:
    from application import oauth

    password = sys.stdin.readline().rstrip("\r\n")
    with connect(url) as conn:
        oauth.set_password(conn, args.org, args.user, password)
    emit({"user_id": args.user, "password_set": True})


def cmd_token_create(args: argparse.Namespace, url: str) -> None:
    try:
        grants = permissions.parse_permissions(args.perm) if args.perm else None
    except permissions.InvalidPermission as e:
        fail(str(e))
    with connect(url) as conn, conn.transaction():
        token, token_id = identity.create_token(conn, args.org, args.user, grants, name=args.name or "")
        record_console(conn, args.org, "flusia token create", "api_token", token_id, "created",
                       {"name": {"before": None, "after": args.name or ""},
                        "permissions": {"before": None, "after": grants or "the user's role"}})
    emit({"token": token, "token_id": token_id})


def cmd_token_list(args: argparse.Namespace, url: str) -> None:
    with connect(url) as conn:
        emit({"tokens": identity.list_tokens(conn, args.org)})


def cmd_token_revoke(args: argparse.Namespace, url: str) -> None:
    with connect(url) as conn, conn.transaction():
        live = conn.execute("SELECT 1 FROM api_tokens WHERE organization_id = %s AND id = %s AND revoked_at IS NULL",
                            (args.org, args.token_id)).fetchone()
        revoked = identity.revoke_token(conn, args.org, args.token_id)
        if live:  # revoking it again changes nothing, and records nothing
            record_console(conn, args.org, "flusia token revoke", "api_token", args.token_id, "revoked",
                           {"status": {"before": "active", "after": "revoked"}})
    emit({"revoked": revoked})


def cmd_user_deactivate(args: argparse.Namespace, url: str) -> None:
    with connect(url) as conn, conn.transaction():
        done = identity.deactivate_user(conn, args.org, args.user)
        record_console(conn, args.org, "flusia user deactivate", "user", args.user, "deactivated",
                       {"status": {"before": None, "after": "inactive"}, "revoked": {"before": None, "after": done["revoked"]}})
    emit(done)


def cmd_settings_changes(args: argparse.Namespace, url: str) -> None:
    """Who changed which setting (profile, connections, users, invitations, roles, API tokens) and when."""
    from application.settings_changes import recent

    with connect(url) as conn:
        emit({"changes": recent(conn, args.org, args.limit)})


def cmd_projections_status(args: argparse.Namespace, url: str) -> None:
    from interfaces.health import consumer_report

    with connect(url) as conn:
        report = consumer_report(conn)
    emit({"event_store_head": report["event_store_head"], "projections": report["consumers"]})


def _projections(runtime: Any, name: str | None) -> list[Any]:
    if name is None:
        return list(runtime.projections)
    try:
        return [runtime.projection(name)]
    except KeyError:
        fail(f"unknown projection {name!r}; known: {', '.join(p.name for p in runtime.projections)}")
        raise


def cmd_projections_failures(args: argparse.Namespace, url: str) -> None:
    """Parked events: which consumer, organization and event, the error class, attempts and when."""
    from interfaces.runtime import Runtime

    runtime = Runtime(url, pool_size=2, consistency="settle")
    try:
        with runtime.pool.connection() as conn:
            emit({"parked": runtime.projector.parked(conn, args.name)})
    finally:
        runtime.close()


def cmd_projections_retry(args: argparse.Namespace, url: str) -> None:
    """Retry parked events now (after a fix), in order, exactly once; what still fails stays parked."""
    from interfaces.runtime import Runtime

    runtime = Runtime(url, pool_size=2, consistency="settle")
    try:
        out = {p.name: runtime.projector.retry_parked(p, due_only=False) for p in _projections(runtime, args.name)}
        emit({"retried": {name: results for name, results in out.items() if results}})
    finally:
        runtime.close()


def cmd_projections_rebuild(args: argparse.Namespace, url: str) -> None:
    from interfaces.runtime import Runtime

    runtime = Runtime(url, pool_size=4, consistency="settle")
    try:
        out = {}
        for projection in _projections(runtime, args.name):
            out[projection.name] = runtime.projector.rebuild_report(projection, progress_bar(f"rebuild {projection.name}"))
            sys.stderr.write("\n")
        emit({"rebuilt": out})
    finally:
        runtime.close()


def cmd_gdpr_erase(args: argparse.Namespace, url: str) -> None:
    """Erase a person's personal data on request (GDPR art. 17): crm_clients_erase_personal_data run by the operator
    (its events name no user; the tool and a correlation id say what did it). Keys: application/personal_data.py."""
    from uuid import uuid4

    import anyio

    from application.errors import ToolError
    from application.principal import Principal
    from interfaces.runtime import Runtime

    runtime = Runtime(url, pool_size=2, consistency="settle")
    operator = Principal(organization_id=args.org, user_id=None, grants=dict(permissions.BUILT_IN_ROLES["admin"]),  # type: ignore[arg-type]
                         correlation_id=uuid4())
    try:
        result = anyio.run(runtime.runner.call, operator, "crm_clients_erase_personal_data", {"client_id": str(args.client)})
    except ToolError as e:
        fail(e.message)
    finally:
        runtime.close()
    emit(result)


def cmd_project(args: argparse.Namespace, url: str) -> None:
    """Run the stream consumers alone (scale-out), serving no HTTP: the projector (every projection and the workflow
    trigger consumer), the workflow engine, the newsletter sender and the invoice sync and WhatsApp workers. Any
    number of `flusia project` and `flusia serve` processes may run on one database: each projection is applied by
    one of them at a time, and a standby takes over within about a second of the active one dying."""
    import signal
    import threading

    from interfaces.runtime import Runtime

    migrate(url)
    runtime = Runtime(url, pool_size=8)
    emit({"projector": "running", "projections": [p.name for p in runtime.projections], "workflow_engine": "running",
          "consumers": ["newsletter", "invoice_sync", "whatsapp"]})
    sys.stdout.flush()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        runtime.run_consumers(stop)
    finally:
        runtime.close()


def default_workers() -> int:
    """API worker processes of `flusia serve` unless --workers says: FLUSIA_WORKERS, else the number of cores."""
    import os

    return int(os.environ.get("FLUSIA_WORKERS") or 0) or os.cpu_count() or 1


def cmd_serve(args: argparse.Namespace, url: str) -> None:
    import os

    workers = args.workers if args.workers is not None else default_workers()
    if workers < 1:
        fail("--workers: at least 1 API worker process")
    from interfaces.public_url import LISTEN_URL_ENV, PUBLIC_URL_ENV, PublicUrls, listen_url, normalize_public_url

    # OAuth metadata, token audiences and 401 challenges name FLUSIA_PUBLIC_URL (--public-url sets it), else this
    # listening address; never a request's Host header.
    if args.public_url is not None:
        try:
            os.environ[PUBLIC_URL_ENV] = normalize_public_url(args.public_url)
        except ValueError as e:
            fail(f"--public-url: {e}")
    os.environ[LISTEN_URL_ENV] = listen_url(args.host, args.port)
    try:
        urls = PublicUrls.from_env()
    except ValueError as e:
        fail(str(e))
    if urls.configured is None and args.host in ("", "0.0.0.0", "::"):
        logging.getLogger("flusia.cli").warning(
            "listening on all interfaces without --public-url or FLUSIA_PUBLIC_URL: OAuth metadata names %s", urls.listen)
    migrate(url)
    with connect(url) as conn:
        if identity.organization_count(conn) == 0:
            import secrets

            from application import oauth

            demo = identity.create_organization(conn, "Demo Organization", "admin@example.com", "Demo Admin")
            password = secrets.token_urlsafe(12)
            oauth.set_password(conn, demo.organization_id, demo.user_id, password)
            print(
                "\nCreated the demo organization and its admin user (shown only this once):\n\n"
                f"    API token:  {demo.token}\n"
                f"    login:      admin@example.com / {password}   (for OAuth clients such as Claude or Inspector)\n\n"
                f"organization_id={demo.organization_id} user_id={demo.user_id}\n"
                f"MCP endpoint: {urls.configured or urls.listen}/mcp  (Authorization: Bearer <token>, or OAuth)\n",
                flush=True,
            )
    with connect(url) as conn:  # the server key, created once here rather than raced for by the workers
        from application import secrets as server_secrets

        server_secrets.server_key(conn)
    # proxy_headers off: X-Forwarded-* count only from FLUSIA_TRUSTED_PROXIES (interfaces/public_url.py)
    options = dict(host=args.host, port=args.port, log_level="info", access_log=False, loop="uvloop", http="httptools",
                   proxy_headers=False, log_config=None)  # our handler: see interfaces/logs.py
    if workers == 1:  # one process: the API and the consumers, which wake its waiting writers directly
        import uvicorn

        from interfaces.http import create_app
        from interfaces.runtime import Runtime

        runtime = Runtime(url)
        app = create_app(runtime)
        try:
            uvicorn.run(app, **options)
        finally:
            runtime.close()
        return
    serve_workers(url, workers, options, verbose=getattr(args, "verbose", False))


def serve_workers(url: str, workers: int, options: dict[str, Any], *, verbose: bool) -> None:
    """`serve --workers N`: uvicorn's supervisor starts N API worker processes (interfaces/workers.py, each with its
    own Runtime, no consumers) and replaces any that dies; this process runs the stream consumers beside it
    (Runtime.run_consumers in a thread). Metrics of every process go to a directory made here and removed at the end
    (prometheus_client's multiprocess mode), so /metrics on any worker answers the sums."""
    import os
    import shutil
    import tempfile
    import threading

    import uvicorn

    from interfaces import workers as worker_app
    from interfaces.slots import SLOTS_ENV

    run_dir = tempfile.mkdtemp(prefix="flusia-serve-")  # metrics of every process; limits shared by the workers
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(run_dir, "metrics")  # before prometheus_client is imported
    os.environ[SLOTS_ENV] = os.path.join(run_dir, "slots")
    for name in ("metrics", "slots"):
        os.mkdir(os.path.join(run_dir, name))
    os.environ[worker_app.DATABASE_URL_ENV] = url
    os.environ[worker_app.VERBOSE_ENV] = "1" if verbose else ""
    try:
        from interfaces.runtime import Runtime

        runtime = Runtime(url, pool_size=8)
        stop = threading.Event()
        consumers = threading.Thread(target=runtime.run_consumers, args=(stop,), name="consumers", daemon=True)
        consumers.start()
        try:
            # A worker is replaced when it dies or stops answering the supervisor's pings for 30 s (not 5: a busy
            # 2-core machine can starve a starting worker that long); until one has started, connections are refused.
            uvicorn.run("interfaces.workers:create_worker_app", factory=True, workers=workers,
                        timeout_worker_healthcheck=30, **options)
        finally:
            stop.set()
            consumers.join(timeout=30)
            runtime.close()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# -- audit and replay (issue 11) --------------------------------------------------------------------------
def _operator(org: UUID) -> Any:
    """The operator at the console: every permission in that organization, no user (events they cause name none)."""
    from uuid import uuid4

    from application.principal import Principal

    return Principal(organization_id=org, user_id=None, grants=dict(permissions.BUILT_IN_ROLES["admin"]),  # type: ignore[arg-type]
                     correlation_id=uuid4())


def _pages(runtime: Any, org: UUID, tool: str, args: dict[str, Any], limit: int | None = None) -> tuple[Any, list[Any]]:
    """A tool's pages, followed until `limit` items (all when None): (the first page, every item)."""
    import anyio

    from application.errors import ToolError

    operator, items, first, cursor = _operator(org), [], None, None
    while True:
        try:
            page = anyio.run(runtime.runner.call, operator, tool,
                             {**args, "limit": 100, **({"cursor": cursor} if cursor else {})})
        except ToolError as e:
            fail(f"{e.code}: {e.message}")
        first = first or page
        items += page["items"]
        cursor = page.get("next_cursor")
        if cursor is None or (limit is not None and len(items) >= limit):
            return first, items[:limit] if limit is not None else items


def cmd_audit_history(args: argparse.Namespace, url: str) -> None:
    """Every change to one entity, oldest first, with who, the tool and the field changes (crm_audit_entity_history)."""
    from interfaces.runtime import Runtime

    runtime = Runtime(url, pool_size=2, consistency="settle")
    try:
        first, items = _pages(runtime, args.org, "crm_audit_entity_history", {"entity_id": str(args.entity)})
    finally:
        runtime.close()
    emit({**{k: v for k, v in first.items() if k not in ("items", "next_cursor")}, "items": items})


def cmd_audit_changes(args: argparse.Namespace, url: str) -> None:
    """The organization's changes since a moment, newest first: events and settings changes (crm_audit_recent_changes)."""
    from datetime import UTC, datetime

    from interfaces.runtime import Runtime

    def moment(text: str | None) -> str | None:
        if text is None:
            return None
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            fail(f"expected an ISO 8601 date or timestamp, e.g. 2026-11-27 or 2026-11-27T15:30:00+01:00; got {text!r}")
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()

    query = {k: v for k, v in {"since": moment(args.since), "until": moment(args.until), "entity_type": args.type,
                               "user_id": str(args.user) if args.user else None, "tool": args.tool}.items() if v}
    runtime = Runtime(url, pool_size=2, consistency="settle")
    try:
        _, items = _pages(runtime, args.org, "crm_audit_recent_changes", query, args.limit)
    finally:
        runtime.close()
    emit({"changes": items})


def cmd_replay(args: argparse.Namespace, url: str) -> None:
    """Every read model as of one event, built into a schema of its own for investigation (the live ones untouched)."""
    from interfaces.runtime import Runtime

    runtime = Runtime(url, pool_size=2, consistency="settle")
    try:
        def show(name: str, done: int, total: int) -> None:
            progress_bar(f"replay {name}")(done, total)

        try:
            out = runtime.projector.replay_into_schema(args.schema, args.to, show)
        except ValueError as e:
            fail(str(e))
        sys.stderr.write("\n")
        emit({"replayed": out})
    finally:
        runtime.close()


def cmd_projections_rebuild_online(args: argparse.Namespace, url: str) -> None:
    """`flusia projections rebuild [NAME] --online`: built beside the live read model, switched when caught up."""
    if not args.online:
        cmd_projections_rebuild(args, url)
        return
    from interfaces.runtime import Runtime

    runtime = Runtime(url, pool_size=4, consistency="settle")
    try:
        out = {}
        for projection in _projections(runtime, args.name):
            try:
                out[projection.name] = runtime.projector.rebuild_online(
                    projection, progress_bar(f"rebuild {projection.name} (online)"))
            except ValueError as e:
                fail(str(e))
            sys.stderr.write("\n")
        emit({"rebuilt": out})
    finally:
        runtime.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flusia", description="Flusia CRM: MCP server, migrations and administration.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, the embedded PostgreSQL's included")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="migrate, start the projector, serve HTTP (MCP at /mcp)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--public-url", metavar="URL",
                   help="the URL clients reach this server at (sets FLUSIA_PUBLIC_URL; default: the listening address)")
    s.add_argument("--workers", type=int, metavar="N",
                   help="API worker processes (default: FLUSIA_WORKERS, else the number of cores); with more than one, "
                        "this process runs the stream consumers and supervises the workers")
    s.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="as flusia --verbose")
    s.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="apply pending SQL migrations").set_defaults(func=cmd_migrate)
    tl = sub.add_parser("tools", help="the tool inventory (JSON), or with --markdown the README's table of tool groups")
    tl.add_argument("--markdown", action="store_true")
    tl.set_defaults(func=cmd_tools, needs_database=False)
    sub.add_parser("project", help="run the stream consumers alone, no HTTP (projector, workflow engine, newsletter, "
                                   "invoice sync and WhatsApp workers; one active per consumer)").set_defaults(
        func=cmd_project)

    org = sub.add_parser("org", help="organizations").add_subparsers(dest="org_command", required=True)
    oc = org.add_parser("create", help="create an organization with an admin user and token")
    oc.add_argument("--name", required=True)
    oc.add_argument("--admin-email", required=True)
    oc.add_argument("--admin-name")
    oc.set_defaults(func=cmd_org_create)

    user = sub.add_parser("user", help="users").add_subparsers(dest="user_command", required=True)
    uc = user.add_parser("create", help="create a user with a built-in or custom role")
    uc.add_argument("--org", required=True, type=UUID)
    uc.add_argument("--email", required=True)
    uc.add_argument("--name", required=True)
    uc.add_argument("--role", required=True, help="admin, sales, viewer or a custom role")
    uc.set_defaults(func=cmd_user_create)
    up = user.add_parser("set-password", help="set a user's login password, read from stdin (argon2id hash)")
    up.add_argument("--org", required=True, type=UUID)
    up.add_argument("--user", required=True, type=UUID)
    up.set_defaults(func=cmd_user_set_password)
    ud = user.add_parser("deactivate", help="mark a user inactive and revoke all their API and OAuth tokens at once")
    ud.add_argument("--org", required=True, type=UUID)
    ud.add_argument("--user", required=True, type=UUID)
    ud.set_defaults(func=cmd_user_deactivate)

    token = sub.add_parser("token", help="API tokens").add_subparsers(dest="token_command", required=True)
    tc = token.add_parser("create", help="create a static API token (printed once)")
    tc.add_argument("--org", required=True, type=UUID)
    tc.add_argument("--user", required=True, type=UUID)
    tc.add_argument("--perm", action="append", default=[], metavar="RESOURCE:FLAGS",
                    help="e.g. clients:rw (flags from rwd); repeatable; default: the user's role grants")
    tc.add_argument("--name")
    tc.set_defaults(func=cmd_token_create)
    tl = token.add_parser("list", help="the organization's API tokens (never their secrets)")
    tl.add_argument("--org", required=True, type=UUID)
    tl.set_defaults(func=cmd_token_list)
    tr = token.add_parser("revoke", help="revoke an API token; requests with it are refused at once")
    tr.add_argument("--org", required=True, type=UUID)
    tr.add_argument("--token-id", required=True, type=UUID)
    tr.set_defaults(func=cmd_token_revoke)

    settings = sub.add_parser("settings", help="organization settings").add_subparsers(dest="settings_command",
                                                                                   required=True)
    sc = settings.add_parser("changes", help="the latest settings changes: who, when, what (never secrets)")
    sc.add_argument("--org", required=True, type=UUID)
    sc.add_argument("--limit", type=int, default=50)
    sc.set_defaults(func=cmd_settings_changes)

    gdpr = sub.add_parser("gdpr", help="data protection").add_subparsers(dest="gdpr_command", required=True)
    ge = gdpr.add_parser("erase", help="erase a lead/client's personal data (GDPR art. 17): its keys are destroyed")
    ge.add_argument("--org", required=True, type=UUID)
    ge.add_argument("--client", required=True, type=UUID)
    ge.set_defaults(func=cmd_gdpr_erase)

    proj = sub.add_parser("projections", help="read models").add_subparsers(dest="projections_command", required=True)
    proj.add_parser("status", help="positions, lag and parked events per consumer").set_defaults(
        func=cmd_projections_status)
    pf = proj.add_parser("failures", help="list parked events (events a consumer could not apply)")
    pf.add_argument("name", nargs="?")
    pf.set_defaults(func=cmd_projections_failures)
    pt = proj.add_parser("retry", help="retry parked events now (all projections when NAME is omitted)")
    pt.add_argument("name", nargs="?")
    pt.set_defaults(func=cmd_projections_retry)
    pr = proj.add_parser("rebuild", help="drop and replay a projection (all when NAME is omitted)")
    pr.add_argument("name", nargs="?")
    pr.set_defaults(func=cmd_projections_rebuild)
    pr.add_argument("--online", action="store_true",
                    help="build beside the live read model and switch when caught up (reads never see it half built)")
    pr.set_defaults(func=cmd_projections_rebuild_online)

    audit = sub.add_parser("audit", help="who changed what (JSON)").add_subparsers(dest="audit_command", required=True)
    ah = audit.add_parser("history", help="every change to one entity, with who, the tool and the field changes")
    ah.add_argument("--org", required=True, type=UUID)
    ah.add_argument("--entity", required=True, type=UUID)
    ah.set_defaults(func=cmd_audit_history)
    ac = audit.add_parser("changes", help="the organization's changes since a moment, newest first")
    ac.add_argument("--org", required=True, type=UUID)
    ac.add_argument("--since", required=True, help="ISO 8601 date or timestamp (UTC when without offset)")
    ac.add_argument("--until", help="exclusive end, ISO 8601")
    ac.add_argument("--type", help="entity type, e.g. deal, client, wiki_page, user")
    ac.add_argument("--user", type=UUID, help="only changes by this user")
    ac.add_argument("--tool", help="only changes made by this tool, e.g. crm_deals_delete")
    ac.add_argument("--limit", type=int, default=1000)
    ac.set_defaults(func=cmd_audit_changes)
    rp = sub.add_parser("replay", help="rebuild every read model as of an event into a separate schema")
    rp.add_argument("--to", required=True, type=int, metavar="NOTIFICATION_ID")
    rp.add_argument("--schema", required=True, metavar="NAME")
    rp.set_defaults(func=cmd_replay)
    return p


def main(argv: list[str] | None = None) -> None:
    from interfaces.logs import configure

    args = parser().parse_args(argv)
    configure(verbose=args.verbose)
    try:
        url = resolve_database_url() if getattr(args, "needs_database", True) else ""
        args.func(args, url)
    except KeyboardInterrupt:  # Ctrl-C: exit handlers (the embedded PostgreSQL's stop) run, no traceback
        sys.exit(130)
    except identity.DomainError as e:  # type: ignore[attr-defined]
        fail(e.message)
    except MigrationError as e:  # refused before anything is applied (changed file, no files, reused number)
        fail(f"migrate: {e}")
    except psycopg.Error as e:
        fail(f"database error: {e.__class__.__name__}: {e}")


if __name__ == "__main__":
    main()
