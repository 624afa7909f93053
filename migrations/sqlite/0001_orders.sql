-- Orders: the table operators and auditors query directly; every change to it goes through src/store/orders.rs.
-- Times are UTC RFC 3339 text with milliseconds, so text order is time order.
-- Every index here is written on every reservation, the hot path: keep them
-- few (measured in BENCHMARKS.md).
CREATE TABLE orders (
    id                  TEXT PRIMARY KEY,
    drop_id             TEXT NOT NULL,
    round_id            TEXT NOT NULL,
    sku                 TEXT NOT NULL,
    user_id             TEXT NOT NULL,
    quantity            INTEGER NOT NULL CHECK (quantity > 0),
    status              TEXT NOT NULL CHECK (status IN ('pending_payment', 'paid', 'cancelled', 'expired')),
    unit_price          TEXT NOT NULL,
    amount_due          TEXT NOT NULL,
    deposit_due         TEXT NOT NULL,
    currency            TEXT NOT NULL DEFAULT 'CNY',
    created_at          TEXT NOT NULL,
    pay_by              TEXT NOT NULL,
    idempotency_key     TEXT,
    request_fingerprint TEXT,
    transaction_id      TEXT UNIQUE,
    payment_method      TEXT,
    paid_at             TEXT,
    ended_at            TEXT
);

CREATE INDEX orders_by_user ON orders (user_id);
CREATE INDEX orders_unpaid_by_deadline ON orders (pay_by) WHERE status = 'pending_payment';
CREATE UNIQUE INDEX orders_idempotency ON orders (round_id, user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
