"""Type stub of the Rust extension (see capa/native.py for the contract).

``rare_value`` builds only Time, Uuid, JsonDoc, Array and Decimals past 16 unscaled bytes;
Decimal, Timestamp, TimestampTz and Date are built natively.
"""

from collections.abc import Callable, Iterable
from typing import Any

def decode_batch(
    values: Iterable[bytes | None],
    fingerprint: bytes,
    rare_value: Callable[[bytes, int], tuple[Any, int]],
) -> tuple[list[tuple[Any, ...]], list[int]]: ...
