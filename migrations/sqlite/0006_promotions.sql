-- Promotions operators add while serving (POST /admin/v1/promotions), and
-- the end of any promotion, a config file's included: every instance
-- rebuilds its live set of promotions from these rows. A row with no
-- definition only ends a promotion declared in a config file.
CREATE TABLE promotions (
    id         TEXT PRIMARY KEY NOT NULL,
    definition TEXT,
    created_at TEXT NOT NULL,
    ended_at   TEXT
);

-- An order's prices as locked at the win: the list amount before any
-- discount, and the discounts taken (a JSON list; NULL when none). Orders
-- from before have neither: their list amount is what was due.
ALTER TABLE orders ADD COLUMN list_amount TEXT;
ALTER TABLE orders ADD COLUMN discounts TEXT;
