-- Stock an operator added to a live round, on top of the SKU's stock from
-- the catalog. The engines rebuild a round's stock from these rows too.
CREATE TABLE restocks (
    round_id   TEXT NOT NULL,
    sku        TEXT NOT NULL,
    units      BIGINT NOT NULL CHECK (units > 0),
    created_at TEXT NOT NULL
);
CREATE INDEX restocks_by_round ON restocks (round_id);

-- Drops operators created through the admin API, as the JSON they sent, so
-- they survive a restart and reach every instance.
CREATE TABLE drops (
    id         TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- Round statistics count orders by status.
CREATE INDEX orders_by_round_status ON orders (round_id, status);
