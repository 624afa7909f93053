-- A shopper's orders are found through two partial indexes instead of one:
-- unpaid orders (few: at most the stock of the rounds on sale) and the rest.
-- A reserve inserts an unpaid order, so it writes only the small index; the
-- one index over every order ever stored took a random page write per win,
-- and the reserve rate fell as the store grew (BENCHMARKS.md). The big
-- index is written when an order is paid, cancelled or expires, away from
-- the opening second.
DROP INDEX orders_by_user;
CREATE INDEX orders_unpaid_by_user ON orders (user_id) WHERE status = 'pending_payment';
CREATE INDEX orders_by_user ON orders (user_id) WHERE status <> 'pending_payment';
