// k6 drop day: shoppers arrive before the opening, sync their clocks with
// the server, read the drop, wait for `opens_at`, then hammer reserve at an
// open-model arrival rate that reaches its peak within the first second.
// Some retry with the same Idempotency-Key; some ask for more than their
// limit. After the drop the script reads the operators' stats and shoppers'
// orders, takes the sampled shoppers' pending orders through checkout
// (addresses, coupons, payment methods, some never paying: lib/checkout.js)
// and on after the payment (shipping, delivery, refunds, returns, invoices,
// cancels: lib/after_sale.js), and fails the run if an invariant broke or
// an answer was other than the API says. `loadtest/run` then audits the
// store: units, limits, the money, coupon single use, and the order events
// against the orders.
//
//   loadtest/run drop-day            (starts dropgate and everything else)
//   k6 run -e BASE_URL=... -e JWT_SECRET=... -e ADMIN_TOKEN=... -e DROP=... \
//          -e SKU=... -e STOCK=... -e LIMIT=2 loadtest/drop-day.js
//
// Expected statuses (201, 200, 409, 429, 503) are not failures; any other
// fails the run, as does any count of oversold units, lost orders, limit
// violations, another shopper's orders shown, or mismatched replays.

import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';
import { tokenFor } from './lib/token.js';
import { clockOffsetMs } from './lib/clock.js';
import { checkout, createCoupons } from './lib/checkout.js';
import { afterSale } from './lib/after_sale.js';

const BASE = __ENV.BASE_URL;
// Every instance serving the drop (BASE_URLS, comma-separated; default
// BASE_URL alone): each virtual user talks to one, in turn, as shoppers
// behind a load balancer would.
const BASES = (__ENV.BASE_URLS || BASE).split(',');
const mine = () => BASES[__VU % BASES.length];
const SECRET = __ENV.JWT_SECRET;
const ADMIN_TOKEN = __ENV.ADMIN_TOKEN;
const PAYMENT_SECRET = __ENV.PAYMENT_SECRET;
const LOGISTICS_SECRET = __ENV.LOGISTICS_SECRET;
const DROP = __ENV.DROP;
const SKU = __ENV.SKU;
const STOCK = parseInt(__ENV.STOCK || '5000', 10);
const LIMIT = parseInt(__ENV.LIMIT || '2', 10);
const USERS = parseInt(__ENV.USERS || '50000', 10);
const PEAK = parseInt(__ENV.PEAK || '3000', 10);
const DURATION = __ENV.DURATION || '20s';
// Shares of requests that replay with a key, and that ask beyond the limit.
const REPLAY_SHARE = parseFloat(__ENV.REPLAY_SHARE || '0.1');
const GREEDY_SHARE = parseFloat(__ENV.GREEDY_SHARE || '0.05');
// Shoppers whose orders are read back after the drop.
const AUDIT_USERS = parseInt(__ENV.AUDIT_USERS || '500', 10);

const won = new Counter('won');
const soldOut = new Counter('sold_out');
const limited = new Counter('limit_exceeded');
const shed = new Counter('shed');
const unexpected = new Counter('unexpected_status');
const replayMismatch = new Counter('replay_mismatch');
const oversold = new Counter('oversold');
const lostOrders = new Counter('lost_orders');
const limitViolations = new Counter('limit_violations');
const leakedOrders = new Counter('leaked_orders');
const checkoutErrors = new Counter('checkout_errors');
const checkouts = new Counter('checkouts');
const afterSaleErrors = new Counter('after_sale_errors');

const EXPECTED = [200, 201, 409, 429, 503];
http.setResponseCallback(http.expectedStatuses(...EXPECTED));

export const options = {
  setupTimeout: '300s',
  teardownTimeout: '300s',
  scenarios: {
    drop: {
      executor: 'ramping-arrival-rate',
      startRate: 0,
      timeUnit: '1s',
      preAllocatedVUs: 300,
      maxVUs: 3000,
      // The crowd is there at the second of opening.
      stages: [
        { target: PEAK, duration: '1s' },
        { target: PEAK, duration: DURATION },
      ],
    },
  },
  thresholds: {
    checks: ['rate>0.999'],
    unexpected_status: ['count==0'],
    replay_mismatch: ['count==0'],
    oversold: ['count==0'],
    lost_orders: ['count==0'],
    limit_violations: ['count==0'],
    leaked_orders: ['count==0'],
    checkout_errors: ['count==0'],
    after_sale_errors: ['count==0'],
    won: [`count<=${STOCK}`],
    'http_req_duration{expected_response:true}': ['p(99)<250'],
  },
};

function shopper(user) {
  return { Authorization: `Bearer ${tokenFor(SECRET, user)}`, 'Content-Type': 'application/json' };
}

function admin() {
  return { Authorization: `Bearer ${ADMIN_TOKEN}`, 'Content-Type': 'application/json' };
}

export function setup() {
  createCoupons(BASE, admin(), () => checkoutErrors.add(1));
  const offset = clockOffsetMs(BASE);
  const drop = http.get(`${BASE}/api/v1/drops/${DROP}`).json();
  const waitMs = Date.parse(drop.round.opens_at) - (Date.now() + offset);
  console.log(`round ${drop.round.id} opens in ${(waitMs / 1000).toFixed(1)} s (clock offset ${offset.toFixed(0)} ms)`);
  if (waitMs > 0) {
    sleep(waitMs / 1000);
  }
  return { round: drop.round.id };
}

function count(res) {
  const ok = check(res, { 'answered as a flash sale expects': (r) => EXPECTED.includes(r.status) });
  if (!ok) {
    unexpected.add(1);
    console.error(`unexpected ${res.status}: ${res.body}`);
    return '';
  }
  if (res.status === 201) won.add(1);
  if (res.status === 429 || res.status === 503) shed.add(1);
  if (res.status !== 409) return '';
  const error = res.json('error');
  if (error === 'sold_out') soldOut.add(1);
  if (error === 'limit_exceeded') limited.add(1);
  return error;
}

function reserve(user, quantity, key) {
  const headers = shopper(user);
  if (key) headers['Idempotency-Key'] = key;
  return http.post(`${mine()}/api/v1/drops/${DROP}/reserve`, JSON.stringify({ sku: SKU, quantity }), { headers });
}

export default function () {
  const user = `shopper-${Math.floor(Math.random() * USERS)}`;
  const roll = Math.random();
  if (roll < REPLAY_SHARE) {
    // A client that lost the answer and sends the same request again.
    const key = `k-${__VU}-${__ITER}`;
    const first = reserve(user, 1, key);
    count(first);
    const again = reserve(user, 1, key);
    count(again);
    if (first.status === 201 && !(again.status === 200 && again.json('id') === first.json('id'))) {
      replayMismatch.add(1);
    }
  } else if (roll < REPLAY_SHARE + GREEDY_SHARE) {
    // More than one account may hold: never a win.
    const res = reserve(user, LIMIT + 1);
    count(res);
    if (res.status === 201) limitViolations.add(1);
  } else {
    count(reserve(user, 1));
  }
}

export function teardown(data) {
  // Wait until every won order is in the order store (Redis mode lags a little).
  let stats = null;
  for (let i = 0; i < 300; i++) {
    stats = http.get(`${BASE}/admin/v1/drops/${DROP}/stats`, { headers: admin() }).json();
    if (stats.queue_lag === 0) break;
    sleep(0.1);
  }
  const sku = stats.skus[SKU];
  const liveOrders = stats.orders.pending_payment + stats.orders.paid + stats.orders.awaiting_delivery;
  console.log(`round ${data.round}: allocated ${sku.allocated}, sold ${sku.sold}, remaining ${sku.remaining}; ` +
    `orders ${JSON.stringify(stats.orders)}; queue lag ${stats.queue_lag}`);
  if (sku.sold > sku.allocated) oversold.add(sku.sold - sku.allocated);
  // Every win is one unit here, so live orders in the store equal units sold.
  if (liveOrders !== sku.sold) lostOrders.add(Math.abs(sku.sold - liveOrders));

  let audited = 0;
  const outcomes = {};
  const secrets = { jwt: SECRET, payment: PAYMENT_SECRET, logistics: LOGISTICS_SECRET, admin: ADMIN_TOKEN };
  const after = {};
  for (let n = 0; n < Math.min(USERS, AUDIT_USERS); n++) {
    const user = `shopper-${Math.floor(Math.random() * USERS)}`;
    const base = BASES[n % BASES.length];
    const res = http.get(`${base}/api/v1/orders`, { headers: shopper(user) });
    if (res.status !== 200) continue;
    audited += 1;
    const orders = res.json('orders');
    const held = orders
      .filter((o) => ['pending_payment', 'paid', 'awaiting_delivery'].includes(o.status))
      .reduce((units, o) => units + o.quantity, 0);
    if (held > LIMIT) limitViolations.add(1);
    if (orders.some((o) => o.user_id !== user)) leakedOrders.add(1);
    for (const order of orders.filter((o) => o.status === 'pending_payment')) {
      const outcome = checkout(base, secrets, user, order, () => checkoutErrors.add(1));
      outcomes[outcome] = (outcomes[outcome] || 0) + 1;
      checkouts.add(1);
    }
    // Then on after the payment: shipping, delivery, refunds, returns.
    const now = http.get(`${base}/api/v1/orders?limit=500`, { headers: shopper(user) });
    if (now.status !== 200) continue;
    for (const order of now.json('orders')) {
      const left = afterSale(base, secrets, user, order, () => afterSaleErrors.add(1));
      after[left] = (after[left] || 0) + 1;
    }
  }
  console.log(`read back the orders of ${audited} shoppers; checkouts: ${JSON.stringify(outcomes)}; ` +
    `after the payment: ${JSON.stringify(after)}`);
}
