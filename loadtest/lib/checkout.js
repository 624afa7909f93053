// The purchase after the win, as a mix of shoppers goes through it: some
// send a bad address first, some use a coupon (students a student one),
// they pay by Alipay, WeChat Pay, Huabei in 12 instalments, interest-free
// instalments or cash on delivery (refused above the drop's cap, then
// Alipay), and some never pay. Every answer is checked against what the
// API promises; `report(kind)` counts anything else.

import http from 'k6/http';
import { sleep } from 'k6';
import { tokenFor, signNotice } from './token.js';

const ONLINE = [
  { method: 'alipay' },
  { method: 'wechat_pay' },
  { method: 'huabei', installments: 12 },
  { method: 'installment', installments: 6 },
];

function headers(secret, user, student) {
  return { Authorization: `Bearer ${tokenFor(secret, user, student)}`, 'Content-Type': 'application/json' };
}

// A shopper's app honours Retry-After: the per-shopper bucket (5/s by
// default) meets a shopper who checks out two orders in one go.
export function patient(send) {
  let res = send();
  for (let tries = 0; res.status === 429 && tries < 5; tries++) {
    sleep(parseInt(res.headers['Retry-After'] || '1', 10));
    res = send();
  }
  return res;
}

export function expect(res, statuses, what, report) {
  if (!statuses.includes(res.status)) {
    report(what);
    console.error(`${what} answered ${res.status}: ${res.body}`);
    return false;
  }
  return true;
}

// Goes through checkout for one pending order; returns what happened:
// 'paid', 'cod', 'unpaid' or 'failed'.
export function checkout(base, secrets, user, order, report) {
  const student = Math.random() < 0.1;
  const h = headers(secrets.jwt, user, student);
  const address = { name: '收件人', phone: '13800138000', region: '北京市', detail: '海淀区清河中街68号', default: true };
  if (Math.random() < 0.1) {
    const bad = patient(() => http.post(`${base}/api/v1/addresses`, JSON.stringify({ ...address, phone: '12345' }), { headers: h }));
    expect(bad, [400], 'a bad phone', report);
    const abroad = patient(() => http.post(`${base}/api/v1/addresses`, JSON.stringify({ ...address, region: '香港特别行政区' }), { headers: h }));
    expect(abroad, [422], 'an undeliverable region', report);
  }
  const added = patient(() => http.post(`${base}/api/v1/addresses`, JSON.stringify(address), { headers: h }));
  if (!expect(added, [201, 409], 'an address', report)) return 'failed';
  if (added.status === 201 && Math.random() < 0.5) {
    // Confirms the address on the order (the others rely on the default).
    const body = JSON.stringify({ address_id: added.json('id') });
    const confirmed = patient(() => http.patch(`${base}/api/v1/orders/${order.id}`, body, { headers: h }));
    if (expect(confirmed, [200], 'the address confirmed', report) && !confirmed.json('address')) {
      report('a confirmed order without its address');
    }
  }
  if (Math.random() < 0.1) return 'unpaid';

  if (student || Math.random() < 0.3) {
    const batch = student ? 'k6-students' : 'k6-coupons';
    const claimed = patient(() => http.post(`${base}/api/v1/coupons/${batch}/claim`, null, { headers: h }));
    if (expect(claimed, [201, 409], 'a coupon claim', report) && claimed.status === 201) {
      const body = JSON.stringify({ coupon_id: claimed.json('id') });
      const patched = patient(() => http.patch(`${base}/api/v1/orders/${order.id}`, body, { headers: h }));
      expect(patched, [200, 409], 'a coupon on the order', report);
    }
  }
  let intent = null;
  if (Math.random() < 0.25) {
    const cod = patient(() => http.post(`${base}/api/v1/orders/${order.id}/pay`, JSON.stringify({ method: 'cash_on_delivery' }), { headers: h }));
    if (!expect(cod, [200, 409], 'cash on delivery', report)) return 'failed';
    if (cod.status === 200) return 'cod';
    if (cod.json('error') !== 'method_not_allowed') report('cash on delivery refused other than by its cap');
  }
  const choice = ONLINE[Math.floor(Math.random() * ONLINE.length)];
  intent = patient(() => http.post(`${base}/api/v1/orders/${order.id}/pay`, JSON.stringify(choice), { headers: h }));
  if (!expect(intent, [200], 'a payment intent', report)) return 'failed';
  const notice = JSON.stringify({
    order_id: order.id,
    transaction_id: `k6-${order.id}`,
    amount: intent.json('amount'),
    method: intent.json('method'),
  });
  const paid = http.post(`${base}/api/v1/payments/notify`, notice, {
    headers: { 'Content-Type': 'application/json', 'X-Signature': signNotice(secrets.payment, notice) },
  });
  if (!expect(paid, [200], 'the payment notice', report)) return 'failed';
  if (paid.json('paid_amount') !== paid.json('amount_due')) report('paid other than what was asked');
  return 'paid';
}

export function createCoupons(base, adminHeaders, report) {
  const now = Date.now();
  const window = { valid_from: new Date(now - 3600e3).toISOString(), valid_until: new Date(now + 86400e3).toISOString() };
  for (const batch of [
    { id: 'k6-coupons', kind: 'amount', value: '100.00', min_spend: '1000.00', total: 100000, per_user: 1, ...window },
    { id: 'k6-students', kind: 'percent', value: '10', student_only: true, total: 100000, per_user: 1, ...window },
  ]) {
    const res = http.post(`${base}/admin/v1/coupons`, JSON.stringify(batch), { headers: adminHeaders });
    expect(res, [201], `coupon batch ${batch.id}`, report);
  }
}
