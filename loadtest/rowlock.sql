-- The baseline a team would otherwise build: the stock row locked and
-- decremented, and the order inserted, in one transaction per reservation.
-- Driven by pgbench from `loadtest/run rowlock` (SKU is passed with -D).
\set user random(1, 1000000)
BEGIN;
WITH taken AS (
  UPDATE baseline_stock SET left_units = left_units - 1
  WHERE sku = :sku AND left_units >= 1
  RETURNING sku
)
INSERT INTO baseline_orders (sku, user_id, created_at)
SELECT sku, :user, now() FROM taken;
END;
