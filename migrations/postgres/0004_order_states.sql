-- Every status of the order's state machine (src/order_states.rs), and
-- transaction_id unique only where set (the old UNIQUE constraint indexed
-- the NULL of every unpaid order too).
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check CHECK (status IN ('pending_payment', 'paid',
    'awaiting_delivery', 'deposit_paid', 'shipped', 'delivered', 'completed',
    'cancelled', 'expired', 'forfeited', 'refund_requested', 'refunding', 'refunded',
    'return_requested', 'return_approved', 'returned', 'exchanged'));
ALTER TABLE orders DROP CONSTRAINT orders_transaction_id_key;
CREATE UNIQUE INDEX orders_by_transaction ON orders (transaction_id)
    WHERE transaction_id IS NOT NULL;
