-- After the payment: when each status was reached, the expected ship date,
-- the carrier's tracking, the refund and the return asked for, the return
-- windows (set at delivery), and the invoice requested.
ALTER TABLE orders ADD COLUMN status_times TEXT;          -- JSON: {"paid": time, …}
ALTER TABLE orders ADD COLUMN estimated_ship_date TEXT;   -- YYYY-MM-DD, set when paid
ALTER TABLE orders ADD COLUMN tracking TEXT;              -- JSON array of logistics events
ALTER TABLE orders ADD COLUMN refund TEXT;                -- JSON: reason, review, amount
ALTER TABLE orders ADD COLUMN refund_id TEXT;             -- the gateway's refund, once confirmed
ALTER TABLE orders ADD COLUMN return_request TEXT;        -- JSON: reason, kind, note, review
ALTER TABLE orders ADD COLUMN no_reason_until TEXT;       -- returns without reason end here
ALTER TABLE orders ADD COLUMN complete_at TEXT;           -- every return window has ended
ALTER TABLE orders ADD COLUMN invoice TEXT;               -- JSON: title, tax_id, email, status
CREATE UNIQUE INDEX orders_by_refund ON orders (refund_id) WHERE refund_id IS NOT NULL;
CREATE INDEX orders_delivered_by_completion ON orders (complete_at) WHERE status = 'delivered';
-- Operators' search by drop reads in id order with a limit: no index on
-- drop_id, which every win would pay for.

-- One event per status change, written in the transaction of the change
-- (I8). Ids increase in commit order: SQLite has one writer, and
-- AUTOINCREMENT never reuses the id of a deleted event.
CREATE TABLE order_events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL,
    type     TEXT NOT NULL,
    at       TEXT NOT NULL,
    body     TEXT NOT NULL                                 -- the order as it was then (JSON)
);
-- No other index: a win writes one more row, and every index on it would
-- cost the reserve path. Readers go by id (pull, webhooks); pruning reads
-- from the oldest id up, where the old events are.

-- Webhook delivery: how far each webhook has been handed events, the
-- deliveries still to retry (an order's later events wait behind its
-- earlier ones), and which instance dispatches (a lease with an expiry).
CREATE TABLE webhook_cursors (
    webhook  TEXT PRIMARY KEY NOT NULL,
    after_id BIGINT NOT NULL
);
CREATE TABLE webhook_retries (
    webhook      TEXT NOT NULL,
    event_id     BIGINT NOT NULL,
    order_id     TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    first_try_at TEXT NOT NULL,
    next_at      TEXT NOT NULL,
    last_error   TEXT,
    PRIMARY KEY (webhook, event_id)
);
CREATE INDEX webhook_retries_by_order ON webhook_retries (webhook, order_id, event_id);
CREATE TABLE leases (
    name   TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    until  TEXT NOT NULL
);
