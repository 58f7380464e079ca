"""The CRM source contract: typed config (YAML validated by pydantic) and row validation.

``contract.yaml`` next to this module is the default contract. :meth:`ObjectContract.validate`
turns one raw extract record (a mapping of column -> text or JSON scalar) into a typed row,
or returns the reasons it is rejected (bad dates, missing keys, wrong types, unaccepted values).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from capa.errors import TableNameError
from capa.events import Column, raw_table_name
from connectors.crm.errors import CrmContractError
from connectors.crm.types import Parser, parser_for, source_type

DEFAULT_CONTRACT = Path(__file__).with_name("contract.yaml")
RESERVED_OBJECTS = frozenset({"rejects", "loads"})


class ColumnContract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(
        description="Column type: string, int, decimal(p,s), date, timestamp, bool, email."
    )
    required: bool = Field(default=False, description="A NULL/empty value rejects the row.")
    accepted_values: tuple[str, ...] | None = Field(
        default=None, description="If set, a non-NULL value outside this list rejects the row."
    )

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        parser_for(value)  # raises ValueError naming the known types
        return value


class ObjectContract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ignored_types=(cached_property,))

    name: str = Field(default="", description="Object name (filled from the mapping key).")
    primary_key: tuple[str, ...] = Field(min_length=1, description="Primary-key columns, in order.")
    last_modified: str = Field(description="Timestamp column giving each row's version.")
    columns: dict[str, ColumnContract] = Field(description="Column name -> contract, in order.")

    @model_validator(mode="after")
    def _keys_are_columns(self) -> ObjectContract:
        for col in (*self.primary_key, self.last_modified):
            if col not in self.columns:
                raise ValueError(f"column {col!r} is a key/last_modified but is not declared")
        if self.columns[self.last_modified].type != "timestamp":
            raise ValueError(f"last_modified column {self.last_modified!r} must be a timestamp")
        return self

    @cached_property
    def parsers(self) -> dict[str, Parser]:
        return {name: parser_for(col.type) for name, col in self.columns.items()}

    @property
    def event_columns(self) -> tuple[Column, ...]:
        return tuple(Column(n, source_type(c.type)) for n, c in self.columns.items())

    def is_required(self, column: str) -> bool:
        return (
            column in self.primary_key
            or column == self.last_modified
            or self.columns[column].required
        )

    def validate_record(self, record: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
        """Raw record -> (typed row, []) or (None, reasons)."""
        row: dict[str, Any] = {}
        reasons: list[str] = []
        for name in self.columns:
            value, reason = self._validate_value(name, record.get(name))
            row[name] = value
            if reason:
                reasons.append(reason)
        return (None, reasons) if reasons else (row, [])

    def _validate_value(self, name: str, raw: Any) -> tuple[Any, str | None]:
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            if self.is_required(name):
                return None, f"column {name!r} is required but missing/empty"
            return None, None
        try:
            value = self.parsers[name](raw)
        except ValueError as exc:
            return None, f"column {name!r}: {exc}"
        accepted = self.columns[name].accepted_values
        if accepted is not None and str(value) not in accepted:
            return None, f"column {name!r}: {value!r} is not one of {list(accepted)}"
        return value, None


class CrmContract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(default="crm", description="Source name stamped on change events.")
    schema_: str = Field(
        default="crm", alias="schema", description="Schema name stamped on change events."
    )
    objects: dict[str, ObjectContract] = Field(description="Object name -> its contract.")

    @field_validator("objects", mode="before")
    @classmethod
    def _name_objects(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: {**v, "name": k} if isinstance(v, Mapping) else v for k, v in value.items()}
        return value

    @field_validator("objects")
    @classmethod
    def _no_reserved(cls, value: dict[str, ObjectContract]) -> dict[str, ObjectContract]:
        clash = RESERVED_OBJECTS & set(value)
        if clash:
            raise ValueError(f"object names {sorted(clash)} are reserved for capa's own tables")
        return value

    @model_validator(mode="after")
    def _usable_table_names(self) -> CrmContract:
        for name in (*self.objects, *RESERVED_OBJECTS):
            try:
                raw_table_name(self.source, self.schema_, name)
            except TableNameError as exc:
                raise ValueError(exc.reason) from None
        return self

    def object(self, name: str) -> ObjectContract:
        try:
            return self.objects[name]
        except KeyError:
            raise CrmContractError(
                f"CRM object {name!r} is not in the contract; known objects: {sorted(self.objects)}"
            ) from None


def load_contract(path: str | Path | None = None) -> CrmContract:
    """Read and validate a contract YAML (default: the bundled ``contract.yaml``)."""
    import yaml

    target = Path(path) if path else DEFAULT_CONTRACT
    try:
        data = yaml.safe_load(target.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CrmContractError(f"cannot read CRM contract {str(target)!r}: {exc}") from exc
    try:
        return CrmContract.model_validate(data)
    except ValidationError as exc:
        raise CrmContractError(f"CRM contract {str(target)!r} is invalid: {exc}") from exc
