-- Daily sales across sources: F2 orders (not cancelled) and F3 invoices, per UTC day.
-- Additive: every column is a count or a sum over input rows, so an incremental build adds the
-- day's sums over the rows added since the last build and subtracts those over the rows removed.
-- capa:
--   bigquery:
--     partition_by: sales_date
--     granularity: YEAR  # one row a day: yearly partitions stay few and full
--     cluster_by: [sales_date]
--   key: [sales_date]
--   incremental:
--     f2_public_orders: CAST(ordered_at AS DATE)
--     f3_dbo_invoices: CAST(issued_at AS DATE)
--   additive:
--     exists: orders + invoices > 0
--   checks:
--     not_null: [sales_date, orders, order_amount, invoices, invoice_amount, total_amount]
--     unique: [sales_date]
WITH orders AS (
  SELECT CAST(ordered_at AS DATE) AS sales_date, COUNT(*) AS orders,
         SUM(CAST(amount AS DECIMAL(18, 2))) AS order_amount
  FROM {{ raw('f2_public_orders') }}
  WHERE ordered_at IS NOT NULL AND (status IS NULL OR status <> 'cancelled')
  GROUP BY CAST(ordered_at AS DATE)
),
invoices AS (
  SELECT CAST(issued_at AS DATE) AS sales_date, COUNT(*) AS invoices,
         SUM(CAST(amount AS DECIMAL(18, 2))) AS invoice_amount
  FROM {{ raw('f3_dbo_invoices') }}
  WHERE issued_at IS NOT NULL
  GROUP BY CAST(issued_at AS DATE)
)
SELECT
  COALESCE(o.sales_date, i.sales_date) AS sales_date,
  COALESCE(o.orders, 0) AS orders,
  COALESCE(o.order_amount, CAST(0 AS DECIMAL(28, 2))) AS order_amount,
  COALESCE(i.invoices, 0) AS invoices,
  COALESCE(i.invoice_amount, CAST(0 AS DECIMAL(28, 2))) AS invoice_amount,
  COALESCE(o.order_amount, CAST(0 AS DECIMAL(28, 2)))
    + COALESCE(i.invoice_amount, CAST(0 AS DECIMAL(28, 2))) AS total_amount
FROM orders o
FULL OUTER JOIN invoices i ON i.sales_date = o.sales_date
