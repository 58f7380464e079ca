"""The edges of the canonical value domain (see :mod:`capa.events`) and its one comparison rule.

Special values. PostgreSQL holds values that no replica store can: ``infinity`` and
``-infinity`` dates and timestamps, dates before year 1 (BC) or after year 9999, and
``NaN``/``Infinity`` in ``numeric``. Delta, DuckDB and BigQuery all stop at
0001-01-01 .. 9999-12-31 23:59:59.999999 (BigQuery's DATE/DATETIME/TIMESTAMP range), so
capa **saturates** them, the way most replication tools do:

==============================================  ==============================================
source value                                    canonical value
==============================================  ==============================================
date ``infinity``, any date after 9999-12-31    ``DATE_MAX`` = ``date(9999, 12, 31)``
date ``-infinity``, any date before 0001-01-01  ``DATE_MIN`` = ``date(1, 1, 1)``
timestamp ``infinity`` / after 9999             ``TIMESTAMP_MAX`` = 9999-12-31 23:59:59.999999
timestamp ``-infinity`` / BC                    ``TIMESTAMP_MIN`` = 0001-01-01 00:00:00
timestamptz: the same instants, in UTC          ``TIMESTAMPTZ_MAX`` / ``TIMESTAMPTZ_MIN``
real / double ``NaN``, ``Infinity``             the same IEEE float (every store holds them)
numeric ``NaN``, ``Infinity``, ``-Infinity``    NULL (no DECIMAL type has them; Debezium's
                                                precise mode already sends NULL)
==============================================  ==============================================

So ``infinity`` and 9999-12-31 are one value in the replica: a query that treats the
maximum as "open-ended" keeps working, and an exact source value that really is
9999-12-31 stays exact. Ranges keep PostgreSQL's own text (``[2020-01-01,infinity)``,
``empty``), which every store holds as a string.

Comparison. :func:`comparable` is the one rule by which capa says two values are "the same
value": ``capa verify`` hashes it, and the fidelity tests compare with it.
"""

from __future__ import annotations

import base64
import math
import re
import struct
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

DATE_MAX = date.max
DATE_MIN = date.min
TIMESTAMP_MAX = datetime.max
TIMESTAMP_MIN = datetime.min
TIMESTAMPTZ_MAX = datetime.max.replace(tzinfo=UTC)
TIMESTAMPTZ_MIN = datetime.min.replace(tzinfo=UTC)

_EPOCH_DATE = date(1970, 1, 1)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_DAYS_MAX = (DATE_MAX - _EPOCH_DATE).days
_DAYS_MIN = (DATE_MIN - _EPOCH_DATE).days
_US_MAX = (TIMESTAMP_MAX - _EPOCH_NAIVE) // timedelta(microseconds=1)
_US_MIN = (TIMESTAMP_MIN - _EPOCH_NAIVE) // timedelta(microseconds=1)
# PostgreSQL's text for years outside 1..9999: "10000-01-01 ...", "0044-03-15 ... BC"
_YEAR = re.compile(r"^\s*(\d+)-")
_INFINITY = {"infinity": 1, "+infinity": 1, "-infinity": -1}


def date_from_days(days: int) -> date:
    """Days since 1970-01-01 -> date, saturated to DATE_MIN .. DATE_MAX."""
    if days > _DAYS_MAX:
        return DATE_MAX
    if days < _DAYS_MIN:
        return DATE_MIN
    return _EPOCH_DATE + timedelta(days=days)


def timestamp_from_us(micros: int) -> datetime:
    """Microseconds since 1970-01-01 (no zone) -> naive datetime, saturated."""
    if micros > _US_MAX:
        return TIMESTAMP_MAX
    if micros < _US_MIN:
        return TIMESTAMP_MIN
    return _EPOCH_NAIVE + timedelta(microseconds=micros)


def infinity_sign(text: str) -> int:
    """+1 for ``infinity``, -1 for ``-infinity``, 0 for anything else (case-insensitive)."""
    return _INFINITY.get(text.strip().lower(), 0)


def out_of_range_sign(text: str) -> int:
    """For PostgreSQL date/timestamp text: +1 after year 9999, -1 BC, 0 inside the range."""
    if infinity_sign(text):
        return infinity_sign(text)
    if text.rstrip().upper().endswith(" BC"):
        return -1
    match = _YEAR.match(text)
    return 1 if match and len(match.group(1)) > 4 else 0


def saturated(sign: int, kind: str) -> Any:
    """The canonical value of an out-of-range ``date``/``timestamp``/``timestamptz``."""
    low, high = _BOUNDS[kind]
    return high if sign > 0 else low


_BOUNDS: dict[str, tuple[Any, Any]] = {
    "date": (DATE_MIN, DATE_MAX),
    "timestamp": (TIMESTAMP_MIN, TIMESTAMP_MAX),
    "timestamptz": (TIMESTAMPTZ_MIN, TIMESTAMPTZ_MAX),
}


def float32_value(value: float) -> float:
    """A ``real`` (IEEE float32) as the float64 of its shortest round-trip decimal text.

    That is the text PostgreSQL prints; sources send other texts of the same float32 (Java's
    ``Float.toString`` gives ``-1.17549435E-38`` for ``-1.1754944e-38``; Avro readers give
    ``0.10000000149011612`` for ``0.1``), so every path maps to this one value.
    """
    if not math.isfinite(value):
        return value
    single = _as_float32(value)
    if single is None:  # beyond float32: not a real; keep what was sent
        return value
    for digits in range(1, 10):
        text = f"{single:.{digits}g}"
        if _as_float32(float(text)) == single:
            return float(text)
    return single


def _as_float32(value: float) -> float | None:
    try:
        return float(struct.unpack("<f", struct.pack("<f", value))[0])
    except OverflowError:  # a rounded text just past the float32 maximum
        return None


def iso_duration_text(micros: int) -> str:
    """µs -> ISO-8601 duration text ``[-]P<d>DT<h>H<m>M<s>S`` (the canonical interval)."""
    sign, micros = ("-", -micros) if micros < 0 else ("", micros)
    days, rest = divmod(micros, 86_400_000_000)
    hours, rest = divmod(rest, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    seconds, frac = divmod(rest, 1_000_000)
    sec = f"{seconds}.{frac:06d}".rstrip("0").rstrip(".") if frac else str(seconds)
    return f"{sign}P{days}DT{hours}H{minutes}M{sec}S"


# --- the one comparison rule -------------------------------------------------------------


def comparable(value: Any) -> Any:
    """A value's comparable form: equal forms <=> capa treats the values as the same.

    * numbers compare by value across int/float/Decimal widening (``12.30 == 12.300``,
      ``7 == 7.0``): a replica column's scale and width are its type, checked separately;
    * ``NaN`` equals ``NaN`` and the infinities equal themselves;
    * timestamps compare as instants (tz-aware in UTC) or as naive wall-clock values;
    * bytes compare by content, arrays item by item, everything else by its canonical JSON
      form (:func:`capa.codec.to_json_value`).
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return _float_form(value)
    if isinstance(value, Decimal):
        return _decimal_form(value)
    if isinstance(value, memoryview | bytearray | bytes):
        return "b64:" + base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, list | tuple):
        return [comparable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): comparable(v) for k, v in value.items()}
    return _temporal_form(value)


def _float_form(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer() and abs(value) < 2**63:
        return int(value)
    return repr(value)


def _decimal_form(value: Decimal) -> Any:
    if not value.is_finite():
        return "NaN" if value.is_nan() else ("Infinity" if value > 0 else "-Infinity")
    if value == value.to_integral_value():
        return int(value)
    return format(value.normalize(), "f")


def _temporal_form(value: Any) -> Any:
    """Dates, times, UUIDs, bytes ...: their canonical JSON form (one rule, in the codec)."""
    from capa.codec import to_json_value  # codec imports events; keep this module leaf-light

    return to_json_value(value)
