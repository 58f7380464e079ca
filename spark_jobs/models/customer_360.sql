-- One row per F2 customer: CRM account + contacts, F2 order totals (customer_orders), F3 invoice
-- totals.
-- capa:
--   bigquery:
--     cluster_by: [customer_id]
--   key: [customer_id]
--   incremental:
--     f2_public_customers: id
--     customer_orders: customer_id
--     f3_dbo_invoices: customer_id
--     crm_crm_accounts: customer_id
--     crm_crm_contacts: >-
--       SELECT a.customer_id FROM {{ rows }} r
--       JOIN {{ raw_history('crm_crm_accounts') }} a ON a.account_id = r.account_id
--   checks:
--     not_null: [customer_id, orders, order_amount, invoices, invoice_amount, contacts]
--     unique: [customer_id]
--     accepted_values:
--       industry: [software, retail, manufacturing, finance, healthcare, education, logistics, energy]
--     relationships:
--       - {column: customer_id, to: f2_public_customers, field: id}
WITH customers AS (
  SELECT CAST(id AS BIGINT) AS customer_id, CAST(full_name AS STRING) AS name,
         CAST(email AS STRING) AS email, CAST(country AS STRING) AS customer_country
  FROM {{ raw('f2_public_customers') }}
),
accounts AS (
  SELECT customer_id, account_id, account_name, industry, country FROM (
    SELECT CAST(customer_id AS BIGINT) AS customer_id, CAST(account_id AS STRING) AS account_id,
           CAST(name AS STRING) AS account_name, CAST(industry AS STRING) AS industry,
           CAST(country AS STRING) AS country,
           ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY account_id) AS rn
    FROM {{ raw('crm_crm_accounts') }}
    WHERE customer_id IS NOT NULL
  ) WHERE rn = 1
),
contacts AS (
  SELECT CAST(a.customer_id AS BIGINT) AS customer_id, COUNT(*) AS contacts
  FROM {{ raw('crm_crm_contacts') }} c
  JOIN {{ raw('crm_crm_accounts') }} a ON a.account_id = c.account_id
  WHERE a.customer_id IS NOT NULL
  GROUP BY CAST(a.customer_id AS BIGINT)
),
invoices AS (
  SELECT CAST(customer_id AS BIGINT) AS customer_id, COUNT(*) AS invoices,
         SUM(CAST(amount AS DECIMAL(18, 2))) AS invoice_amount,
         MAX(CAST(issued_at AS TIMESTAMP)) AS last_invoice_at
  FROM {{ raw('f3_dbo_invoices') }}
  GROUP BY CAST(customer_id AS BIGINT)
)
SELECT
  c.customer_id, c.name, c.email, c.customer_country,
  a.account_id, a.account_name, a.industry, a.country,
  COALESCE(ct.contacts, 0) AS contacts,
  COALESCE(o.open_orders, 0) AS orders,
  COALESCE(o.open_amount, CAST(0 AS DECIMAL(28, 2))) AS order_amount,
  o.last_open_order_at AS last_order_at,
  COALESCE(i.invoices, 0) AS invoices,
  COALESCE(i.invoice_amount, CAST(0 AS DECIMAL(28, 2))) AS invoice_amount,
  i.last_invoice_at
FROM customers c
LEFT JOIN accounts a ON a.customer_id = c.customer_id
LEFT JOIN contacts ct ON ct.customer_id = c.customer_id
LEFT JOIN {{ ref('customer_orders') }} o ON o.customer_id = c.customer_id
LEFT JOIN invoices i ON i.customer_id = c.customer_id
