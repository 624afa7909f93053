// After the payment, as a store's orders go through it: the carrier ships
// and delivers most paid orders (cash-on-delivery ones are delivered and
// paid at the door); some shoppers ask for a refund before shipping (the
// operator approves most, the gateway pays back), some race the carrier's
// shipping notice with it (exactly one of the two wins); some return a
// delivered order without reason (approved, refunded: returned), some ask
// for an invoice; unpaid orders are cancelled by their shoppers. Every
// answer is checked against what the API promises; `report(kind)` counts
// anything else. Returns the status each order was left in.

import http from 'k6/http';
import { tokenFor, signNotice } from './token.js';
import { patient, expect } from './checkout.js';

function signed(base, path, secret, body) {
  const text = JSON.stringify(body);
  return http.post(`${base}${path}`, text, {
    headers: { 'Content-Type': 'application/json', 'X-Signature': signNotice(secret, text) },
  });
}

function carrier(base, secrets, order, event) {
  return signed(base, '/api/v1/logistics/notify', secrets.logistics, {
    order_id: order.id, event, at: new Date().toISOString(), carrier: '顺丰速运', tracking_number: `SF${order.id.slice(-12)}`,
  });
}

function refundBack(base, secrets, order, amount) {
  return signed(base, '/api/v1/payments/refund-notify', secrets.payment, {
    order_id: order.id, refund_id: `rf-${order.id}`, amount,
  });
}

// Takes one order (as the shopper's list shows it) on from where it is.
export function afterSale(base, secrets, user, order, report) {
  const shopper = { Authorization: `Bearer ${tokenFor(secrets.jwt, user)}`, 'Content-Type': 'application/json' };
  const admin = { Authorization: `Bearer ${secrets.admin}`, 'Content-Type': 'application/json' };
  const ask = (what, body) => patient(() => http.post(`${base}/api/v1/orders/${order.id}/${what}`, JSON.stringify(body), { headers: shopper }));
  const review = (what, approve) => http.post(`${base}/admin/v1/orders/${order.id}/${what}`, JSON.stringify({ approve, note: 'k6' }), { headers: admin });
  const roll = Math.random();

  if (order.status === 'pending_payment') {
    const cancelled = patient(() => http.post(`${base}/api/v1/orders/${order.id}/cancel`, null, { headers: shopper }));
    // The sweeper may have expired it first.
    expect(cancelled, [200, 409], 'a cancel', report);
    return cancelled.status === 200 ? 'cancelled' : 'expired';
  }
  if (order.status === 'paid' && roll < 0.15) {
    const asked = ask('refund', { reason: '买错了' });
    if (!expect(asked, [200], 'a refund request', report)) return 'failed';
    if (asked.json('refund.amount') !== order.paid_amount) report('a refund of other than what was paid');
    if (roll < 0.03) {
      expect(review('refund', false), [200], 'a refund refused', report);
      return afterSale(base, secrets, user, { ...order, status: 'paid' }, report);
    }
    if (!expect(review('refund', true), [200], 'a refund approved', report)) return 'failed';
    const back = refundBack(base, secrets, order, asked.json('refund.amount'));
    if (!expect(back, [200], 'the refund confirmed', report)) return 'failed';
    expect(refundBack(base, secrets, order, asked.json('refund.amount')), [200], 'a repeated refund confirmation', report);
    return back.json('status');
  }
  if (order.status === 'paid' && roll < 0.25) {
    // The shopper asks for a refund as the parcel leaves (both sent at
    // once): exactly one of the two goes through.
    const notice = JSON.stringify({
      order_id: order.id, event: 'shipped', at: new Date().toISOString(), carrier: '顺丰速运', tracking_number: `SF${order.id.slice(-12)}`,
    });
    const [refund, shipped] = http.batch([
      ['POST', `${base}/api/v1/orders/${order.id}/refund`, JSON.stringify({ reason: '不要了' }), { headers: shopper }],
      ['POST', `${base}/api/v1/logistics/notify`, notice,
        { headers: { 'Content-Type': 'application/json', 'X-Signature': signNotice(secrets.logistics, notice) } }],
    ]);
    const both = [refund.status, shipped.status].sort().join(',');
    // A 429 (the shopper's own bucket) means the refund never raced.
    if (both !== '200,409' && refund.status !== 429) report(`a refund racing the shipping notice ended ${both}`);
    return shipped.status === 200 ? 'shipped' : 'refund_requested';
  }
  if (order.status === 'paid') {
    if (!expect(carrier(base, secrets, order, 'shipped'), [200], 'the shipping notice', report)) return 'failed';
    expect(carrier(base, secrets, order, 'shipped'), [200], 'a repeated shipping notice', report);
  } else if (order.status !== 'awaiting_delivery') {
    return order.status;
  }
  const delivered = carrier(base, secrets, order, 'delivered');
  if (!expect(delivered, [200], 'the delivery notice', report)) return 'failed';
  if (!delivered.json('paid_amount')) report('a delivered order without what was paid');
  if (roll < 0.45) {
    const asked = ask('return', { reason: 'no_reason', kind: 'return' });
    if (!expect(asked, [200], 'a return request', report)) return 'failed';
    if (!expect(review('return', true), [200], 'a return approved', report)) return 'failed';
    const back = refundBack(base, secrets, order, asked.json('return.amount'));
    return expect(back, [200], 'the return refunded', report) ? back.json('status') : 'failed';
  }
  if (roll < 0.7) {
    const invoice = { title: '个人', email: `${user}@example.com` };
    expect(ask('invoice', invoice), [200], 'an invoice request', report);
    expect(ask('invoice', invoice), [409], 'a second invoice request', report);
  }
  return 'delivered';
}
