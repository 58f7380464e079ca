"""CTID ranges: a table's heap pages cut into ranges that readers copy independently.

A range is ``[start_page, end_page)``; the last range of a table is open-ended
(``end_page`` None), so rows that land on pages added after planning are still read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: never cut ranges smaller than this (a range costs one query and one Delta commit)
MIN_RANGE_PAGES = 128


@dataclass(frozen=True, slots=True)
class PageRange:
    index: int
    start_page: int
    end_page: int | None  # None: to the end of the table

    def predicate(self) -> str:
        """The SQL condition selecting this range (TID Range Scan, PostgreSQL 14+)."""
        lower = f"ctid >= '({self.start_page},0)'::tid"
        if self.end_page is None:
            return lower
        return f"{lower} AND ctid < '({self.end_page},0)'::tid"


def pages_per_range(relpages: int, workers: int, max_pages: int) -> int:
    """About four ranges per worker (balance), each at least MIN_RANGE_PAGES and at most
    ``max_pages`` (which bounds a reader's memory)."""
    wanted = math.ceil(max(relpages, 1) / max(workers * 4, 1))
    return max(min(wanted, max_pages), min(MIN_RANGE_PAGES, max_pages))


def split_pages(relpages: int, workers: int, max_pages: int) -> list[PageRange]:
    """The ranges covering a table of ``relpages`` pages (at least one, the last open)."""
    step = pages_per_range(relpages, workers, max_pages)
    starts = list(range(0, max(relpages, 1), step))
    return [
        PageRange(i, start, starts[i + 1] if i + 1 < len(starts) else None)
        for i, start in enumerate(starts)
    ]
