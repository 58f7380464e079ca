"""A live workload on the sample F2 shop (``capa_app/stack/sample_f2.sql``): new customers,
orders with items, status changes, price corrections and cancelled orders (deletes that
cascade to their items). Runs in a thread at a target rate until stopped."""

from __future__ import annotations

import logging
import random
import threading
import time
from decimal import Decimal
from typing import Any

logger = logging.getLogger(__name__)
STATUSES = ("new", "paid", "shipped", "delivered", "returned")
COUNTRIES = ("GB", "US", "NL", "FR", "DE", "ES", "IT", "SE")


class ShopWorkload:
    def __init__(self, dsn: str, *, seed: int = 11) -> None:
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.changes = 0
        self.stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, rate: float, seconds: float) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(rate, seconds), name="f2-workload", daemon=True
        )
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise self.error

    def _run(self, rate: float, seconds: float) -> None:
        try:
            import psycopg

            with psycopg.connect(self.dsn) as conn:
                deadline = time.monotonic() + seconds
                while not self.stop.is_set() and time.monotonic() < deadline:
                    started = time.monotonic()
                    self.changes += self._transaction(conn)
                    conn.commit()
                    time.sleep(max(0.0, 10 / rate - (time.monotonic() - started)))
        except BaseException as exc:  # reported by join()
            self.error = exc

    def _ids(self, conn: Any, table: str) -> list[int]:
        return [r[0] for r in conn.execute(f'SELECT "id" FROM "public"."{table}"')]  # fixed names

    def _transaction(self, conn: Any) -> int:
        customers = self._ids(conn, "customers")
        orders = self._ids(conn, "orders")
        changes = 0
        for _ in range(10):
            roll = self.rng.random()
            if roll < 0.15 or not customers:
                customers.append(self._new_customer(conn, max(customers, default=0) + 1))
                changes += 1
            elif roll < 0.45 or not orders:
                changes += self._new_order(
                    conn, max(orders, default=0) + 1, self.rng.choice(customers)
                )
                orders.append(max(orders, default=0) + 1)
            elif roll < 0.9:
                conn.execute(
                    'UPDATE "public"."orders" SET "status" = %s WHERE "id" = %s',
                    [self.rng.choice(STATUSES), self.rng.choice(orders)],
                )
                changes += 1
            else:
                victim = orders.pop(self.rng.randrange(len(orders)))
                items = conn.execute(
                    'DELETE FROM "public"."order_items" WHERE "order_id" = %s', [victim]
                ).rowcount
                conn.execute('DELETE FROM "public"."orders" WHERE "id" = %s', [victim])
                changes += 1 + items
        return changes

    def _new_customer(self, conn: Any, new_id: int) -> int:
        conn.execute(
            'INSERT INTO "public"."customers" ("id", "email", "full_name", "country") VALUES (%s, %s, %s, %s)',
            [new_id, f"user{new_id}@example.com", f"Customer {new_id}", self.rng.choice(COUNTRIES)],
        )
        return new_id

    def _new_order(self, conn: Any, order_id: int, customer_id: int) -> int:
        lines = self.rng.randint(1, 4)
        prices = [Decimal(self.rng.randint(50, 50_000)).scaleb(-2) for _ in range(lines)]
        quantities = [self.rng.randint(1, 5) for _ in range(lines)]
        amount = sum((p * q for p, q in zip(prices, quantities, strict=True)), Decimal("0.00"))
        conn.execute(
            'INSERT INTO "public"."orders" ("id", "customer_id", "status", "amount", "notes") VALUES (%s, %s, %s, %s, %s)',
            [order_id, customer_id, "new", amount, '{"channel": "web"}'],
        )
        for n, (price, qty) in enumerate(zip(prices, quantities, strict=True), start=1):
            conn.execute(
                'INSERT INTO "public"."order_items" ("order_id", "line_no", "sku", "quantity", "unit_price") '
                "VALUES (%s, %s, %s, %s, %s)",
                [order_id, n, f"SKU-{self.rng.randint(1, 500):04d}", qty, price],
            )
        return 1 + lines
