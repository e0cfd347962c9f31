"""`flusia migrate`: unique numbers, checksums of applied files, renamed and retired files, old databases."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from application.migrate import RENAMED, RETIRED, MigrationError, load_migrations, migrate
from tests.conftest import ROOT

MIGRATIONS = ROOT / "migrations"
SEARCH_INDEXES = ("clients_search_tsv", "clients_phone_key_trgm", "clients_email_key_trgm", "client_search_words_trgm")


def copy_migrations(to: Path) -> Path:
    to.mkdir()
    for f in MIGRATIONS.glob("*.sql"):
        shutil.copy(f, to / f.name)
    return to


def recorded(url: str) -> dict[str, str | None]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT name, checksum FROM schema_migrations").fetchall())


def test_the_shipped_files_follow_the_rules():
    names = [m.name for m in load_migrations()]
    assert names == sorted(p.name for p in MIGRATIONS.glob("*.sql"))
    assert len({n[:4] for n in names}) == len(names)
    for old, new in RENAMED.items():
        assert old not in names and new in names
    assert not set(RETIRED) & set(names)


def test_a_fresh_database_records_every_file_with_its_checksum(fresh_database_url):
    rows = recorded(fresh_database_url)
    assert rows == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in MIGRATIONS.glob("*.sql")}
    assert migrate(fresh_database_url) == []


def test_an_old_database_keeps_its_history_and_converges(fresh_database_url):
    """A database migrated before checksums, the 0005 rename and the retirement of 0007, with the first
    version of 0008: nothing it applied runs again, and it ends up like a fresh database."""
    url = fresh_database_url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE schema_migrations DROP COLUMN checksum")
        conn.execute("DELETE FROM schema_migrations WHERE name = '0013_converge_old_databases.sql'")
        conn.execute("UPDATE schema_migrations SET name = '0005_sales_stats.sql', applied_at = '2026-01-01'"
                     " WHERE name = '0012_sales_stats.sql'")
        conn.execute("INSERT INTO schema_migrations (name) VALUES ('0007_append_function.sql')")
        conn.execute("CREATE FUNCTION flusia_append(uuid[], bigint[], text[], bytea[], jsonb, jsonb) RETURNS SETOF bigint"
                     " LANGUAGE sql AS 'SELECT 1::bigint'")
        for index in SEARCH_INDEXES:
            conn.execute(f"ALTER INDEX {index} RESET (gin_pending_list_limit)")
            conn.execute(f"ALTER INDEX {index} SET (fastupdate = off)")

    # 0012_sales_stats.sql (CREATE TABLE deal_daily_stats) would fail if it ran again
    assert migrate(url) == ["0013_converge_old_databases.sql"]

    rows = recorded(url)
    assert "0005_sales_stats.sql" not in rows
    for path in MIGRATIONS.glob("*.sql"):
        assert rows[path.name] == hashlib.sha256(path.read_bytes()).hexdigest(), path.name
    assert rows["0007_append_function.sql"] is None  # retired: kept as history, no file to check
    with psycopg.connect(url) as conn:
        applied_at = conn.execute("SELECT applied_at::date::text FROM schema_migrations WHERE name = '0012_sales_stats.sql'").fetchone()
        assert applied_at == ("2026-01-01",)
        assert conn.execute("SELECT count(*) FROM pg_proc WHERE proname = 'flusia_append'").fetchone() == (0,)
        options = dict(conn.execute("SELECT relname, reloptions FROM pg_class WHERE relname = ANY(%s)",
                                    (list(SEARCH_INDEXES),)).fetchall())
        assert options == {index: ["gin_pending_list_limit=256"] for index in SEARCH_INDEXES}
    assert migrate(url) == []


def test_a_changed_applied_file_is_refused_naming_it(fresh_database_url, tmp_path):
    source = copy_migrations(tmp_path / "m")
    with open(source / "0003_read_models.sql", "a") as f:
        f.write("\n-- an afterthought\n")
    before = recorded(fresh_database_url)
    with pytest.raises(MigrationError, match=r"0003_read_models\.sql was changed after it was applied.*new migration"):
        migrate(fresh_database_url, source=source)
    assert recorded(fresh_database_url) == before


def test_the_command_line_refuses_a_changed_file_with_a_clear_error(fresh_database_url):
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE name = '0006_work.sql'")
    for command in (["migrate"], ["org", "create", "--name", "X", "--admin-email", "x@example.com"]):
        proc = subprocess.run([sys.executable, "-m", "interfaces.cli", *command], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "DATABASE_URL": fresh_database_url}, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        error = json.loads(proc.stdout)["error"]
        assert "0006_work.sql was changed after it was applied" in error, error
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM organizations").fetchone() == (0,)


def test_no_migration_files_is_refused(fresh_database_url, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("not a migration")
    with pytest.raises(MigrationError, match="no migration files found"):
        migrate(fresh_database_url, source=empty)


def test_a_new_database_is_migrated_from_another_source(admin_url, tmp_path):
    """`source` replaces the installed package: the same rules, on a database of its own."""
    from interfaces.database import create_database, drop_database

    name = f"flusia_mig_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = create_database(admin_url, name)
    try:
        source = copy_migrations(tmp_path / "m")
        assert migrate(url, source=source) == sorted(p.name for p in source.iterdir())
        (source / "0999_later.sql").write_text("CREATE TABLE later_one (id int);")
        assert migrate(url, source=source) == ["0999_later.sql"]
    finally:
        drop_database(admin_url, name)


@pytest.mark.parametrize("extra, message", [
    ("0005_sales_stats.sql", "0005_sales.sql and 0005_sales_stats.sql share the number 0005"),
    ("0007_something.sql", "number 0007 belonged to 0007_append_function.sql, which is retired"),
    ("12_short.sql", "the name must be NNNN_lowercase_name.sql"),
])
def test_file_names_must_have_numbers_of_their_own(tmp_path, extra, message):
    source = copy_migrations(tmp_path / "m")
    (source / extra).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=message):
        load_migrations(source)
