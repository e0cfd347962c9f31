"""Apply the SQL files of the `migrations` package once each, in order, each in its own transaction.

The files ship inside the installed distribution (`migrations/*.sql` is package data, read through
`importlib.resources`), so an installed `flusia` migrates without the source tree.

Rules the files follow, which `migrate` enforces:
- a file is `NNNN_name.sql`; every number is used by one file only, and never again once retired (`RETIRED`);
- a file is never edited once applied: a schema change is a new file with the next free number.

`schema_migrations` (created here) records each applied file's name and checksum, the SHA-256 of its bytes.
Before applying anything, `migrate` refuses with `MigrationError`, naming the file, when an applied file's
content changed, when no migration files are found at all, or when two files share a number. Rows recorded
before checksums existed (checksum NULL) get the current file's checksum on the next run; the databases
that applied an earlier content of a file edited before this rule existed (0008) are brought in line by a
later migration (0013), not by editing the file.

A renamed file keeps its recorded history: `RENAMED` maps an old recorded name to the file's new name, and
the row is renamed in the same transaction that checks the checksums, so the file is not applied again.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import psycopg

LOCK_KEY = 72_000_001  # serialises concurrent `flusia migrate` runs
PACKAGE = "migrations"
FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

# Old recorded name -> current file name. Each entry is a plain `git mv` of a file already applied somewhere;
# the content is unchanged, so the recorded checksum stays valid under the new name.
RENAMED: dict[str, str] = {
    # Two files were numbered 0005; the later one (the per-day revenue summary table, which nothing in
    # 0006-0011 uses) took the next free number.
    "0005_sales_stats.sql": "0012_sales_stats.sql",
}

# Files that were applied somewhere and then removed. Their rows stay in schema_migrations (harmless: a
# recorded name without a file is ignored) and their numbers are never reused.
RETIRED: dict[str, str] = {
    # 0007 is a gap on purpose: it created the plpgsql function flusia_append, replaced by one plain SQL
    # statement in the event store code; 0013 drops the function where it lingers.
    "0007_append_function.sql": "flusia_append() removed; dropped by 0013_converge_old_databases.sql",
}


class MigrationError(Exception):
    """A refusal to migrate; the message names the file and says what to do."""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: bytes

    @property
    def number(self) -> str:
        return self.name[:4]

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql).hexdigest()


def load_migrations(source: Traversable | Path | None = None) -> list[Migration]:
    """The migration files in order: from the installed `migrations` package, or from `source` (a directory)."""
    if source is None:
        try:
            source = resources.files(PACKAGE)
        except ModuleNotFoundError:
            raise MigrationError(f"no migration files: the package {PACKAGE!r} is not installed") from None
    files = sorted((e for e in source.iterdir() if e.name.endswith(".sql") and e.is_file()), key=lambda e: e.name)
    if not files:
        raise MigrationError(f"no migration files found in {source}: the installation is incomplete "
                             f"(the *.sql files must ship in the {PACKAGE!r} package)")
    by_number: dict[str, str] = {}
    retired = {name[:4]: name for name in RETIRED}
    migrations = []
    for entry in files:
        m = FILE_NAME.match(entry.name)
        if m is None:
            raise MigrationError(f"migration file {entry.name}: the name must be NNNN_lowercase_name.sql")
        number = m.group(1)
        if number in by_number:
            raise MigrationError(f"migration files {by_number[number]} and {entry.name} share the number {number}: "
                                 "every migration needs a number of its own")
        if number in retired:
            raise MigrationError(f"migration file {entry.name}: number {number} belonged to {retired[number]}, "
                                 "which is retired; use the next free number")
        by_number[number] = entry.name
        migrations.append(Migration(entry.name, entry.read_bytes()))
    return migrations


def _prepare(conn: psycopg.Connection, migrations: list[Migration]) -> set[str]:
    """Create or upgrade schema_migrations, apply RENAMED, record missing checksums, refuse changed files.
    Runs in one transaction; returns the names already applied."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, "
                 "applied_at timestamptz NOT NULL DEFAULT now(), checksum text)")
    has_checksum = conn.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = 'schema_migrations'::regclass AND attname = 'checksum' "
        "AND NOT attisdropped").fetchone()
    if not has_checksum:  # created before checksums existed; NULL = not recorded yet
        conn.execute("ALTER TABLE schema_migrations ADD COLUMN checksum text")
    for old, new in RENAMED.items():
        conn.execute("DELETE FROM schema_migrations WHERE name = %s "
                     "AND EXISTS (SELECT 1 FROM schema_migrations WHERE name = %s)", (old, new))
        conn.execute("UPDATE schema_migrations SET name = %s WHERE name = %s", (new, old))
    recorded = dict(conn.execute("SELECT name, checksum FROM schema_migrations").fetchall())
    for m in migrations:
        if m.name not in recorded:
            continue
        if recorded[m.name] is None:
            conn.execute("UPDATE schema_migrations SET checksum = %s WHERE name = %s", (m.checksum, m.name))
        elif recorded[m.name] != m.checksum:
            raise MigrationError(
                f"migration {m.name} was changed after it was applied to this database (recorded sha256 "
                f"{recorded[m.name][:12]}..., file {m.checksum[:12]}...): restore the file as it was and put "
                "the change in a new migration file with the next free number")
    return set(recorded)


def migrate(conninfo: str, source: Traversable | Path | None = None) -> list[str]:
    """Apply the pending migrations; returns the names applied. `source` (a directory) replaces the
    installed `migrations` package, for tests."""
    migrations = load_migrations(source)
    applied: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            with conn.transaction():
                done = _prepare(conn, migrations)
            for m in migrations:
                if m.name in done:
                    continue
                with conn.transaction():
                    conn.execute(m.sql.decode("utf-8"))
                    conn.execute("INSERT INTO schema_migrations (name, checksum) VALUES (%s, %s)", (m.name, m.checksum))
                applied.append(m.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied
