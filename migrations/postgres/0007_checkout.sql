-- Shoppers' delivery addresses (POST /api/v1/addresses). A deleted address
-- is gone: orders keep their own copy (orders.address), never a reference.
-- At most one default per shopper (the unique index).
CREATE TABLE addresses (
    id         TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL,
    name       TEXT NOT NULL,
    phone      TEXT NOT NULL,
    region     TEXT NOT NULL,
    detail     TEXT NOT NULL,
    is_default INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE INDEX addresses_by_user ON addresses (user_id);
CREATE UNIQUE INDEX addresses_one_default ON addresses (user_id) WHERE is_default = 1;

-- Where the order goes: a JSON copy of the address chosen at checkout.
ALTER TABLE orders ADD COLUMN address TEXT;

-- The payment intent (POST /api/v1/orders/{id}/pay): its id, and the
-- interest-free periods chosen; the method goes in payment_method, which a
-- payment notification must then match.
ALTER TABLE orders ADD COLUMN payment_id TEXT;
ALTER TABLE orders ADD COLUMN installments INTEGER;

-- Presale: the balance window of the order's round (NULL for other
-- orders), what has been paid (the deposit, then everything), and the
-- balance's own gateway transaction (the deposit's stays in transaction_id).
ALTER TABLE orders ADD COLUMN balance_from TEXT;
ALTER TABLE orders ADD COLUMN balance_until TEXT;
ALTER TABLE orders ADD COLUMN paid_amount TEXT;
ALTER TABLE orders ADD COLUMN balance_transaction_id TEXT;
CREATE UNIQUE INDEX orders_by_balance_transaction ON orders (balance_transaction_id)
    WHERE balance_transaction_id IS NOT NULL;
CREATE INDEX orders_deposit_by_balance_deadline ON orders (balance_until)
    WHERE status = 'deposit_paid';

-- Coupon batches operators create (the definition as sent, the counts the
-- store enforces), the coupons shoppers claim, and the one an order uses.
-- A coupon is on at most one order and an order has at most one coupon.
CREATE TABLE coupon_batches (
    id         TEXT PRIMARY KEY NOT NULL,
    definition TEXT NOT NULL,
    total      INTEGER NOT NULL,
    per_user   INTEGER NOT NULL,
    claimed    INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE coupons (
    id         TEXT PRIMARY KEY NOT NULL,
    batch_id   TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    claimed_at TEXT NOT NULL,
    order_id   TEXT,
    used_at    TEXT
);
CREATE INDEX coupons_by_user ON coupons (user_id, batch_id);
CREATE UNIQUE INDEX coupons_by_order ON coupons (order_id) WHERE order_id IS NOT NULL;
ALTER TABLE orders ADD COLUMN coupon_id TEXT;
