"""CRM contract: the YAML validates, every column type parses and rejects with a quoted reason."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from connectors.crm.contract import CrmContract, load_contract
from connectors.crm.errors import CrmContractError
from connectors.crm.types import parser_for


@pytest.fixture(scope="module")
def contract() -> CrmContract:
    return load_contract()


def test_bundled_contract_declares_the_four_objects_with_the_shared_names(
    contract: CrmContract,
) -> None:
    assert set(contract.objects) == {"accounts", "contacts", "opportunities", "activities"}
    accounts = contract.object("accounts")
    assert accounts.primary_key == ("account_id",)
    assert "customer_id" in accounts.columns and accounts.columns["customer_id"].type == "int"
    assert contract.object("opportunities").columns["amount"].type == "decimal(12,2)"


@pytest.mark.parametrize(
    ("spec", "raw", "expected"),
    [
        ("string", "Zoë", "Zoë"),
        ("int", " 42 ", 42),
        ("int", 7, 7),
        ("decimal(12,2)", "1200.5", Decimal("1200.50")),
        ("decimal(12,2)", 12.5, Decimal("12.50")),
        ("date", "2025-02-28", date(2025, 2, 28)),
        ("timestamp", "2025-02-01T08:00:00Z", datetime(2025, 2, 1, 8, tzinfo=UTC)),
        ("timestamp", "2025-02-01T10:00:00+02:00", datetime(2025, 2, 1, 8, tzinfo=UTC)),
        ("timestamp", "2025-02-01 08:00:00", datetime(2025, 2, 1, 8, tzinfo=UTC)),
        ("bool", "yes", True),
        ("bool", False, False),
        ("email", "Zoe@Example.com", "zoe@example.com"),
    ],
)
def test_types_parse(spec: str, raw: object, expected: object) -> None:
    assert parser_for(spec)(raw) == expected


@pytest.mark.parametrize(
    ("spec", "raw", "fragment"),
    [
        ("int", "12a", "'12a' is not an integer"),
        ("int", True, "not an integer"),
        ("decimal(12,2)", "twelve", "'twelve' is not a decimal(12,2)"),
        ("decimal(12,2)", "1.234", "more than 2 decimal places"),
        ("decimal(4,2)", "123.45", "does not fit decimal(4,2)"),
        ("date", "2025-02-30", "'2025-02-30' is not a date"),
        ("date", "30/06/2025", "is not a date (YYYY-MM-DD)"),
        ("timestamp", "2025-13-45T99:00:00", "is not a timestamp"),
        ("bool", "maybe", "is not a boolean"),
        ("email", "not-an-email", "is not an email"),
    ],
)
def test_types_reject_with_the_value_quoted(spec: str, raw: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parser_for(spec)(raw)
    assert fragment in str(info.value)


def test_unknown_type_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown column type 'money'.*decimal"):
        parser_for("money")


def test_validate_collects_every_reason(contract: CrmContract) -> None:
    row, reasons = contract.object("opportunities").validate_record(
        {
            "opportunity_id": "",
            "account_id": "A1",
            "stage": "won-ish",
            "amount": "1.999",
            "close_date": "2025-02-30",
            "last_modified": "2025-01-01T00:00:00Z",
        }
    )
    assert row is None
    assert reasons == [
        "column 'opportunity_id' is required but missing/empty",
        "column 'stage': 'won-ish' is not one of ['prospecting', 'qualification', 'proposal', "
        "'negotiation', 'closed_won', 'closed_lost']",
        "column 'amount': '1.999' has more than 2 decimal places",
        "column 'close_date': '2025-02-30' is not a date (YYYY-MM-DD)",
    ]


def test_optional_empty_values_are_null(contract: CrmContract) -> None:
    row, reasons = contract.object("accounts").validate_record(
        {
            "account_id": "A1",
            "name": "X",
            "industry": "",
            "country": None,
            "customer_id": "",
            "last_modified": "2025-01-01T00:00:00Z",
        }
    )
    assert reasons == []
    assert row is not None and row["industry"] is None and row["customer_id"] is None


def test_invalid_contract_yaml_fails_with_the_file_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "c.yaml"
    bad.write_text(
        "objects:\n  things:\n    primary_key: [id]\n    last_modified: ts\n"
        "    columns:\n      id: {type: string}\n      ts: {type: date}\n"
    )
    with pytest.raises(CrmContractError, match="must be a timestamp"):
        load_contract(bad)
    bad.write_text(
        "objects:\n  loads:\n    primary_key: [id]\n    last_modified: ts\n"
        "    columns:\n      id: {type: string}\n      ts: {type: timestamp}\n"
    )
    with pytest.raises(CrmContractError, match="reserved"):
        load_contract(bad)


def test_unknown_object_names_the_known_ones(contract: CrmContract) -> None:
    with pytest.raises(CrmContractError, match=r"'leads' is not in the contract.*accounts"):
        contract.object("leads")
