-- Every status of the order's state machine (src/order_states.rs), and a
-- cheaper insert. SQLite cannot change a column's CHECK or constraints in
-- place, so the table is rebuilt; transaction_id becomes unique only where
-- set (the old UNIQUE column indexed the NULL of every unpaid order too).
CREATE TABLE orders_rebuilt (
    id                  TEXT PRIMARY KEY NOT NULL,
    drop_id             TEXT NOT NULL,
    round_id            TEXT NOT NULL,
    sku                 TEXT NOT NULL,
    user_id             TEXT NOT NULL,
    quantity            INTEGER NOT NULL CHECK (quantity > 0),
    status              TEXT NOT NULL CHECK (status IN ('pending_payment', 'paid',
        'awaiting_delivery', 'deposit_paid', 'shipped', 'delivered', 'completed',
        'cancelled', 'expired', 'forfeited', 'refund_requested', 'refunding', 'refunded',
        'return_requested', 'return_approved', 'returned', 'exchanged')),
    unit_price          TEXT NOT NULL,
    amount_due          TEXT NOT NULL,
    deposit_due         TEXT NOT NULL,
    currency            TEXT NOT NULL DEFAULT 'CNY',
    created_at          TEXT NOT NULL,
    pay_by              TEXT NOT NULL,
    idempotency_key     TEXT,
    request_fingerprint TEXT,
    transaction_id      TEXT,
    payment_method      TEXT,
    paid_at             TEXT,
    ended_at            TEXT,
    release_due         INTEGER NOT NULL DEFAULT 0
);

INSERT INTO orders_rebuilt (id, drop_id, round_id, sku, user_id, quantity, status, unit_price,
    amount_due, deposit_due, currency, created_at, pay_by, idempotency_key, request_fingerprint,
    transaction_id, payment_method, paid_at, ended_at, release_due)
SELECT id, drop_id, round_id, sku, user_id, quantity, status, unit_price,
    amount_due, deposit_due, currency, created_at, pay_by, idempotency_key, request_fingerprint,
    transaction_id, payment_method, paid_at, ended_at, release_due
FROM orders;

DROP TABLE orders;
ALTER TABLE orders_rebuilt RENAME TO orders;

CREATE INDEX orders_by_user ON orders (user_id);
CREATE INDEX orders_unpaid_by_deadline ON orders (pay_by) WHERE status = 'pending_payment';
CREATE UNIQUE INDEX orders_idempotency ON orders (round_id, user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX orders_by_transaction ON orders (transaction_id)
    WHERE transaction_id IS NOT NULL;
CREATE INDEX orders_by_round_status ON orders (round_id, status);
CREATE INDEX orders_release_due ON orders (id) WHERE release_due = 1;
