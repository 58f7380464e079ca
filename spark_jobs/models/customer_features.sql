-- Data-science features per customer (one row per customer_360 row): value, activity, mix.
-- capa:
--   bigquery:
--     cluster_by: [customer_id]
--   key: [customer_id]
--   incremental:
--     customer_360: customer_id
--     customer_orders: customer_id
--   checks:
--     not_null: [customer_id, lifetime_value, order_count, value_band]
--     unique: [customer_id]
--     accepted_values:
--       value_band: [none, low, mid, high]
--     relationships:
--       - {column: customer_id, to: customer_360, field: customer_id}
SELECT
  c.customer_id,
  c.order_amount + c.invoice_amount AS lifetime_value,
  COALESCE(s.order_count, 0) AS order_count,
  COALESCE(s.cancelled_orders, 0) AS cancelled_orders,
  COALESCE(s.active_days, 0) AS active_days,
  s.first_order_at,
  c.last_order_at,
  CASE WHEN c.orders = 0 THEN CAST(NULL AS DECIMAL(28, 2))
       ELSE CAST(c.order_amount / c.orders AS DECIMAL(28, 2)) END AS avg_order_amount,
  CASE WHEN COALESCE(s.order_count, 0) = 0 THEN 0.0
       ELSE ROUND(COALESCE(s.cancelled_orders, 0) / s.order_count, 4) END AS cancel_rate,
  c.contacts AS crm_contacts,
  c.industry,
  CASE WHEN c.order_amount + c.invoice_amount = 0 THEN 'none'
       WHEN c.order_amount + c.invoice_amount < 1000 THEN 'low'
       WHEN c.order_amount + c.invoice_amount < 10000 THEN 'mid'
       ELSE 'high' END AS value_band
FROM {{ ref('customer_360') }} c
LEFT JOIN {{ ref('customer_orders') }} s ON s.customer_id = c.customer_id
