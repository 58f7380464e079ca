-- Order statistics per F2 customer: the counts, amounts and dates that customer_360 and
-- customer_features read (one keyed aggregation of the orders that both models share).
-- "Open" orders are the ones not cancelled (status NULL counts as open). active_days counts
-- the distinct order dates as SIZE(COLLECT_SET(...)), which equals COUNT(DISTINCT ...) (both
-- skip NULLs) in one aggregation pass: COUNT(DISTINCT) beside other aggregates makes Spark
-- expand every row and aggregate twice.
-- capa:
--   bigquery:
--     cluster_by: [customer_id]
--   key: [customer_id]
--   incremental:
--     f2_public_orders: customer_id
--   checks:
--     not_null: [customer_id, order_count, open_orders, cancelled_orders, active_days]
--     unique: [customer_id]
SELECT
  CAST(customer_id AS BIGINT) AS customer_id,
  COUNT(*) AS order_count,
  COUNT(CASE WHEN status IS NULL OR status <> 'cancelled' THEN 1 END) AS open_orders,
  SUM(CASE WHEN status = 'cancelled' THEN 1 ELSE 0 END) AS cancelled_orders,
  SUM(CASE WHEN status IS NULL OR status <> 'cancelled'
           THEN CAST(amount AS DECIMAL(18, 2)) END) AS open_amount,
  MIN(CAST(ordered_at AS TIMESTAMP)) AS first_order_at,
  MAX(CASE WHEN status IS NULL OR status <> 'cancelled'
           THEN CAST(ordered_at AS TIMESTAMP) END) AS last_open_order_at,
  CAST(SIZE(COLLECT_SET(CAST(ordered_at AS DATE))) AS BIGINT) AS active_days
FROM {{ raw('f2_public_orders') }}
WHERE customer_id IS NOT NULL
GROUP BY CAST(customer_id AS BIGINT)
