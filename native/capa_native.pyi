"""Type stub of the Rust extension (see capa/native.py for the contract)."""

from collections.abc import Iterable
from typing import Any

from capa.events import ChangeEvent

def decode_event(data: bytes, start: int = 0) -> ChangeEvent: ...
def decode_batch(
    values: Iterable[bytes | None], fingerprint: bytes
) -> tuple[list[tuple[Any, ...]], list[int]]: ...
