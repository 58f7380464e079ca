"""Tell the operator, once at bridge start, about captured tables without a primary key.

capa replicates a keyless table as a multiset (:mod:`capa.keyless`); its updates and deletes
can only be matched with the full old row, i.e. ``REPLICA IDENTITY FULL``. Without it
PostgreSQL itself refuses UPDATE and DELETE on the table once a publication that publishes
them includes it ("cannot update table ... because it does not have a replica identity and
publishes updates"), so the application notices before capa does. One warning lists every
such table and the statement that fixes it. A table with a unique index but no primary key is
keyed by that index (Debezium: "defaulting to unique indices"); PostgreSQL refuses its UPDATE
and DELETE too unless its identity names the index (or is FULL), so the same warning names it
with ``REPLICA IDENTITY USING INDEX``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_IDENTITIES = {"d": "DEFAULT", "n": "NOTHING", "f": "FULL", "i": "USING INDEX"}
# tables without a primary key, with the name of their first unique index (NULL: none)
KEYLESS_TABLES_SQL = """
    SELECT n.nspname::text, c.relname::text, c.relreplident::text,
           (SELECT x.relname::text FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
             WHERE i.indrelid = c.oid AND i.indisunique ORDER BY 1 LIMIT 1)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p')
       AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND left(n.nspname, 3) <> 'pg_'
       AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
     ORDER BY 1, 2
"""


@dataclass(frozen=True, slots=True)
class KeylessTable:
    schema: str
    table: str
    identity: str  # pg_class.relreplident: d, n, f or i
    index: str | None = None  # a unique index (the table is keyed by it), None: keyless

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def unmatched(self) -> bool:
        """True if its updates and deletes cannot be applied (or are refused at the source):
        a keyless table needs FULL, an indexed one FULL or USING INDEX."""
        return self.identity != "f" and (self.index is None or self.identity != "i")

    @property
    def fix(self) -> str:
        identity = "FULL" if self.index is None else f'USING INDEX "{self.index}"'
        return f'ALTER TABLE "{self.schema}"."{self.table}" REPLICA IDENTITY {identity}'


def captured(tables: Sequence[KeylessTable], include_list: str | None) -> list[KeylessTable]:
    """The tables Debezium captures: its ``table.include.list`` is a comma-separated list of
    regular expressions matched against the whole ``schema.table`` (all tables without one)."""
    patterns = [re.compile(p.strip()) for p in (include_list or "").split(",") if p.strip()]
    if not patterns:
        return list(tables)
    return [t for t in tables if any(p.fullmatch(t.name) for p in patterns)]


def identity_warning(tables: Sequence[KeylessTable]) -> str | None:
    """The one warning for captured keyless tables whose updates capa cannot match (any
    identity but FULL: NOTHING and DEFAULT are refused by PostgreSQL, and an old row of index
    columns only cannot be matched)."""
    unmatched = [t for t in tables if t.unmatched]
    if not unmatched:
        return None
    listed = ", ".join(
        f"{t.name} (REPLICA IDENTITY {_IDENTITIES[t.identity]}"
        + (f", keyed by unique index {t.index})" if t.index else ")")
        for t in unmatched
    )
    fixes = "; ".join(t.fix for t in unmatched)
    return (
        f"captured tables without a primary key: {listed}. Their inserts replicate; PostgreSQL "
        "refuses UPDATE and DELETE on a table without a primary key with DEFAULT or NOTHING "
        "identity while it is published, and an old row without all columns cannot be matched "
        f"in a keyless replica. Run: {fixes} (or add a primary key)"
    )


def warn_about_keyless_tables(dsn: str, include_list: str | None) -> None:
    """Log :func:`identity_warning` for the source at ``dsn`` (once, at start). A source that
    cannot be read here is left to Debezium, which reports it with its own error."""
    try:
        import psycopg

        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            rows = conn.execute(KEYLESS_TABLES_SQL).fetchall()
    except Exception as exc:  # a check, never a reason not to start
        logger.info("could not list tables without a primary key (%s)", exc)
        return
    tables = captured([KeylessTable(*row) for row in rows], include_list)
    message = identity_warning(tables)
    if message:
        logger.warning("%s", message)
    elif tables:
        logger.info(
            "%d captured table(s) without a primary key replicate as multisets (or keyed by "
            "a unique index): %s",
            len(tables),
            ", ".join(t.name + (f" (by {t.index})" if t.index else "") for t in tables),
        )
