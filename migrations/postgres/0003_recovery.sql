-- A restock carries an id, so a retried restock adds its units once.
ALTER TABLE restocks ADD COLUMN id TEXT;
CREATE UNIQUE INDEX restocks_by_id ON restocks (round_id, id) WHERE id IS NOT NULL;

-- An order that ended (cancelled, expired) owes its units back to the
-- engine until the engine has taken them: set in the transaction that ends
-- the order, cleared once the release is applied, retried until then.
ALTER TABLE orders ADD COLUMN release_due SMALLINT NOT NULL DEFAULT 0;
CREATE INDEX orders_release_due ON orders (id) WHERE release_due = 1;
