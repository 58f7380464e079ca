-- Sample schema of source F2 (a small shop), created in database "shop" by `capa up`
-- (capa_app/stack/postgres.py) and by the docker-compose PostgreSQL service.
-- Idempotent: safe to run again on an existing database.

CREATE TABLE IF NOT EXISTS "public"."customers" (
    "id"          bigint PRIMARY KEY,
    "email"       text NOT NULL UNIQUE,
    "full_name"   text,
    "country"     char(2),
    "created_at"  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS "public"."orders" (
    "id"           bigint PRIMARY KEY,
    "customer_id"  bigint NOT NULL REFERENCES "public"."customers" ("id"),
    "status"       text NOT NULL DEFAULT 'new',
    "amount"       numeric(12, 2) NOT NULL,
    "currency"     char(3) NOT NULL DEFAULT 'EUR',
    "ordered_at"   timestamptz NOT NULL DEFAULT now(),
    "notes"        jsonb
);

CREATE TABLE IF NOT EXISTS "public"."order_items" (
    "order_id"    bigint NOT NULL REFERENCES "public"."orders" ("id") ON DELETE CASCADE,
    "line_no"     integer NOT NULL,
    "sku"         text NOT NULL,
    "quantity"    integer NOT NULL CHECK ("quantity" > 0),
    "unit_price"  numeric(12, 2) NOT NULL,
    PRIMARY KEY ("order_id", "line_no")
);

INSERT INTO "public"."customers" ("id", "email", "full_name", "country") VALUES
    (1, 'ada@example.com', 'Ada Lovelace', 'GB'),
    (2, 'grace@example.com', 'Grace Hopper', 'US'),
    (3, 'edsger@example.com', 'Edsger Dijkstra', 'NL')
ON CONFLICT ("id") DO NOTHING;

INSERT INTO "public"."orders" ("id", "customer_id", "status", "amount", "notes") VALUES
    (1, 1, 'paid', 43.75, '{"gift": true}'),
    (2, 2, 'new', 1999.99, NULL),
    (3, 1, 'shipped', 0.10, '{"channel": "web"}')
ON CONFLICT ("id") DO NOTHING;

INSERT INTO "public"."order_items" ("order_id", "line_no", "sku", "quantity", "unit_price") VALUES
    (1, 1, 'BOOK-001', 1, 31.25),
    (1, 2, 'PEN-002', 5, 2.50),
    (2, 1, 'LAPTOP-9', 1, 1999.99),
    (3, 1, 'STICKER', 1, 0.10)
ON CONFLICT ("order_id", "line_no") DO NOTHING;
