// k6 drop scenario: shoppers sync their clock with the server, wait for the
// round to open, then hammer reserve at an open-model arrival rate.
//
//   loadtest/run k6          (starts dropgate for you; see loadtest/README.md)
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e JWT_SECRET=... -e DROP=... \
//          -e SKU=... -e STOCK=... loadtest/drop.js
//
// Statuses 201/200/409/429/503 are expected answers in a flash sale; anything
// else fails the `checks` threshold. Tokens are minted here (HS256), so no
// token files are needed.

import http from 'k6/http';
import { check, sleep } from 'k6';
import { tokenFor } from './lib/token.js';
import { Counter } from 'k6/metrics';

const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const SECRET = __ENV.JWT_SECRET || 'dropgate-demo-jwt_secret';
const DROP = __ENV.DROP || 'demo-phone';
const SKU = __ENV.SKU || 'demo-8-256-black';
const STOCK = parseInt(__ENV.STOCK || '100', 10);
const USERS = parseInt(__ENV.USERS || '50000', 10);
const RATE = parseInt(__ENV.RATE || '2000', 10);
const DURATION = __ENV.DURATION || '15s';

const won = new Counter('won');
const soldOut = new Counter('sold_out');
const limited = new Counter('limit_exceeded');
const shed = new Counter('shed');

http.setResponseCallback(http.expectedStatuses(200, 201, 409, 429, 503));

export const options = {
  setupTimeout: '180s',
  scenarios: {
    drop: {
      executor: 'ramping-arrival-rate',
      startRate: 0,
      timeUnit: '1s',
      preAllocatedVUs: 200,
      maxVUs: 2000,
      // The crowd arrives within the first second of the opening.
      stages: [
        { target: RATE, duration: '1s' },
        { target: RATE, duration: DURATION },
      ],
    },
  },
  thresholds: {
    checks: ['rate>0.999'],
    http_req_failed: ['rate<0.001'],
    'http_req_duration{expected_response:true}': ['p(99)<250'],
    // Clients never see more wins than there is stock.
    won: [`count<=${STOCK}`],
  },
};

export function setup() {
  const t0 = Date.now();
  const time = http.get(`${BASE}/api/v1/time`).json();
  const offsetMs = time.unix_ms - (t0 + Date.now()) / 2;
  const drop = http.get(`${BASE}/api/v1/drops/${DROP}`).json();
  const opensAt = Date.parse(drop.round.opens_at);
  const waitMs = opensAt - (Date.now() + offsetMs);
  console.log(`round ${drop.round.id} opens in ${(waitMs / 1000).toFixed(1)} s (clock offset ${offsetMs.toFixed(0)} ms)`);
  if (waitMs > 0) {
    sleep(waitMs / 1000);
  }
  return { round: drop.round.id };
}

export default function () {
  const user = `shopper-${Math.floor(Math.random() * USERS)}`;
  const res = http.post(
    `${BASE}/api/v1/drops/${DROP}/reserve`,
    JSON.stringify({ sku: SKU, quantity: 1 }),
    { headers: { Authorization: `Bearer ${tokenFor(SECRET, user)}`, 'Content-Type': 'application/json' } },
  );
  check(res, { 'answered as a flash sale expects': (r) => [200, 201, 409, 429, 503].includes(r.status) });
  if (res.status === 201) won.add(1);
  else if (res.status === 409 && res.json('error') === 'sold_out') soldOut.add(1);
  else if (res.status === 409 && res.json('error') === 'limit_exceeded') limited.add(1);
  else if (res.status === 429 || res.status === 503) shed.add(1);
}

export function teardown(data) {
  const drop = http.get(`${BASE}/api/v1/drops/${DROP}`).json();
  const remaining = drop.skus.find((s) => s.id === SKU).remaining;
  console.log(`round ${data.round}: ${remaining} of ${STOCK} units left`);
  check(remaining, { 'remaining stock within 0..stock': (r) => r >= 0 && r <= STOCK });
}
