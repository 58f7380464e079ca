"""Sample CRM extracts: realistic volume and dirt, deterministic by seed.

``generate_extract(store, GeneratorConfig(accounts=10_000, seed=7))`` writes a full extract:
``accounts.csv`` (latin-1, names with accents), ``contacts.csv`` (UTF-8),
``opportunities.ndjson``, ``activities.ndjson``, a manifest and ``_SUCCESS``. A share
``dirt`` of the rows is spoiled (bad dates, missing keys, wrong types, unaccepted values,
invalid JSON) and a few rows are duplicated.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from connectors.crm.extract import ExtractFile, ExtractManifest, write_extract
from connectors.crm.filestore import FileStore

INDUSTRIES = (
    "software",
    "retail",
    "manufacturing",
    "finance",
    "healthcare",
    "education",
    "logistics",
    "energy",
)
COUNTRIES = ("DE", "FR", "ES", "PT", "IT", "NL", "BE", "AT", "CH", "US", "GB", "BR")
STAGES = ("prospecting", "qualification", "proposal", "negotiation", "closed_won", "closed_lost")
KINDS = ("call", "email", "meeting", "task", "note")
FIRST = (
    "José",
    "Zoë",
    "Ana",
    "Björn",
    "François",
    "Léa",
    "Jürgen",
    "Inês",
    "Marta",
    "Noël",
    "Chloé",
    "Søren",
)
LAST = (
    "Müller",
    "Peña",
    "García",
    "Dubois",
    "Ødegaard",
    "Conceição",
    "Weiß",
    "Łukasz",
    "Rossi",
    "Smith",
)
NAME_WORDS = (
    "Açaí",
    "Société",
    "Gärtner",
    "Nord",
    "Crédit",
    "Über",
    "Fábrica",
    "Solutions",
    "Logística",
    "Énergie",
)
SUFFIXES = ("GmbH", "SA", "SARL", "Ltd", "S.L.", "AG", "BV", "Lda")
_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


class GeneratorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    accounts: int = Field(
        default=1000, ge=1, description="Number of accounts; other objects scale from it."
    )
    contacts_per_account: float = Field(
        default=3.0, ge=0, description="Average contacts per account."
    )
    opportunities_per_account: float = Field(
        default=2.0, ge=0, description="Average opportunities per account."
    )
    activities_per_contact: float = Field(
        default=2.0, ge=0, description="Average activities per contact."
    )
    customers: int = Field(
        default=1000, ge=1, description="F2 customers.id range that accounts link to (1..N)."
    )
    dirt: float = Field(
        default=0.01, ge=0, le=1, description="Share of rows spoiled (bad dates, missing keys...)."
    )
    duplicates: float = Field(default=0.002, ge=0, le=1, description="Share of rows written twice.")
    seed: int = Field(
        default=7, description="Random seed: the same seed gives byte-identical files."
    )
    load_id: str = Field(
        default="crm-sample-0001", description="Load id written into the manifest."
    )
    extracted_at: datetime = Field(
        default=datetime(2026, 1, 1, tzinfo=UTC), description="Snapshot time."
    )


@dataclass
class _Gen:
    cfg: GeneratorConfig
    rng: random.Random = field(init=False)
    contact_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.cfg.seed)

    def modified(self) -> str:
        seconds = self.rng.randrange(0, 365 * 86400)
        return (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def count(self, per: float, base: int) -> int:
        return round(per * base)

    def account(self, i: int) -> dict[str, Any]:
        r = self.rng
        return {
            "account_id": f"A{i:07d}",
            "name": f"{r.choice(NAME_WORDS)} {r.choice(NAME_WORDS)} {r.choice(SUFFIXES)}",
            "industry": r.choice(INDUSTRIES),
            "country": r.choice(COUNTRIES),
            "customer_id": str(r.randint(1, self.cfg.customers)),
            "last_modified": self.modified(),
        }

    def contact(self, i: int) -> dict[str, Any]:
        r = self.rng
        first, last = r.choice(FIRST), r.choice(LAST)
        cid = f"C{i:08d}"
        self.contact_ids.append(cid)
        return {
            "contact_id": cid,
            "account_id": f"A{r.randrange(self.cfg.accounts):07d}",
            "first_name": first,
            "last_name": last,
            "email": f"{_ascii(first)}.{_ascii(last)}{i}@example.com".lower(),
            "last_modified": self.modified(),
        }

    def opportunity(self, i: int) -> dict[str, Any]:
        r = self.rng
        close = date(2025, 1, 1) + timedelta(days=r.randrange(0, 540))
        return {
            "opportunity_id": f"O{i:08d}",
            "account_id": f"A{r.randrange(self.cfg.accounts):07d}",
            "stage": r.choice(STAGES),
            "amount": f"{r.randrange(100, 5_000_000) / 100:.2f}",
            "close_date": close.isoformat(),
            "last_modified": self.modified(),
        }

    def activity(self, i: int) -> dict[str, Any]:
        r = self.rng
        return {
            "activity_id": f"V{i:09d}",
            "contact_id": r.choice(self.contact_ids) if self.contact_ids else "C00000000",
            "kind": r.choice(KINDS),
            "occurred_at": self.modified(),
            "notes": r.choice(("", "Rückruf erbeten", "demo booked", "prix à confirmer", "n/a")),
            "last_modified": self.modified(),
        }


def _ascii(text: str) -> str:
    return "".join(c for c in text.encode("ascii", "ignore").decode() if c.isalpha()) or "x"


_SPOILERS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "bad_date": lambda row, key: row.update(last_modified="2025-13-45T99:00:00"),
    "missing_key": lambda row, key: row.update({key: ""}),
    "bad_value": lambda row, key: row.update(_bad_value(row)),
}


def _bad_value(row: dict[str, Any]) -> dict[str, Any]:
    if "stage" in row:
        return {"stage": "won-ish"}
    if "amount" in row:
        return {"amount": "twelve"}
    if "kind" in row:
        return {"kind": "carrier pigeon"}
    if "email" in row:
        return {"email": "not-an-email"}
    return {"customer_id": "abc"}


def _rows(
    gen: _Gen, make: Callable[[int], dict[str, Any]], n: int, key: str
) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        row = make(i)
        if gen.rng.random() < gen.cfg.dirt:
            _SPOILERS[gen.rng.choice(sorted(_SPOILERS))](row, key)
        rows.append(row)
        if gen.rng.random() < gen.cfg.duplicates:
            rows.append(dict(row))
    return rows


def _csv_bytes(rows: list[dict[str, Any]], encoding: str) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode(encoding)


def _ndjson_bytes(rows: list[dict[str, Any]], rng: random.Random, dirt: float) -> bytes:
    lines = []
    for row in rows:
        text = json.dumps(row, ensure_ascii=False)
        if rng.random() < dirt / 4:
            text = text[:-1]  # truncated JSON
        lines.append(text)
    return ("\n".join(lines) + "\n").encode("utf-8")


def generate_extract(store: FileStore, cfg: GeneratorConfig | None = None) -> ExtractManifest:
    """Write a full sample extract into ``store``; returns its manifest."""
    cfg = cfg or GeneratorConfig()
    gen = _Gen(cfg)
    n_contacts = gen.count(cfg.contacts_per_account, cfg.accounts)
    accounts = _rows(gen, gen.account, cfg.accounts, "account_id")
    contacts = _rows(gen, gen.contact, n_contacts, "contact_id")
    opportunities = _rows(
        gen,
        gen.opportunity,
        gen.count(cfg.opportunities_per_account, cfg.accounts),
        "opportunity_id",
    )
    activities = _rows(
        gen, gen.activity, gen.count(cfg.activities_per_contact, n_contacts), "activity_id"
    )
    data = {
        "accounts.csv": _csv_bytes(accounts, "latin-1"),
        "contacts.csv": _csv_bytes(contacts, "utf-8"),
        "opportunities.ndjson": _ndjson_bytes(opportunities, gen.rng, cfg.dirt),
        "activities.ndjson": _ndjson_bytes(activities, gen.rng, cfg.dirt),
    }
    files = (
        ExtractFile(object="accounts", name="accounts.csv", format="csv", encoding="auto"),
        ExtractFile(object="contacts", name="contacts.csv", format="csv", encoding="auto"),
        ExtractFile(object="opportunities", name="opportunities.ndjson", format="ndjson"),
        ExtractFile(object="activities", name="activities.ndjson", format="ndjson"),
    )
    manifest = ExtractManifest(
        load_id=cfg.load_id, extracted_at=cfg.extracted_at, mode="full", files=files
    )
    write_extract(store, manifest, data)
    return manifest
