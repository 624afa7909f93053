// k6 overload scenario: an open-model arrival rate of shoppers reserving in
// an open round, for a fixed time. `loadtest/run overload` runs it twice,
// at the server's engine budget (1x) and at five times that (5x), and
// compares the goodput.
//
//   k6 run -e BASE_URL=... -e JWT_SECRET=... -e DROP=... -e SKU=... \
//          -e RATE=1000 -e DURATION=60s loadtest/overload.js
//
// Goodput is what a shopper can act on: 201 won, 200 replay, and the
// business 409s (sold out, limit reached). 429 and 503 are shedding,
// answered fast. Any other status fails the run, as does a p99 over 50 ms
// for admitted requests.

import http from 'k6/http';
import { check } from 'k6';
import { SharedArray } from 'k6/data';
import { tokenFor } from './lib/token.js';
import { Counter, Trend } from 'k6/metrics';

const BASE = __ENV.BASE_URL;
const SECRET = __ENV.JWT_SECRET;
const DROP = __ENV.DROP;
const SKU = __ENV.SKU;
const USERS = parseInt(__ENV.USERS || '100000', 10);
const RATE = parseInt(__ENV.RATE || '1000', 10);
const DURATION = __ENV.DURATION || '60s';

// Every shopper's token, minted once before the load and shared by all
// virtual users: minting during the load would spend k6's CPU, which shares
// the server's two cores here, and show up as server latency.
const tokens = new SharedArray('tokens', () =>
  Array.from({ length: USERS }, (_, n) => tokenFor(SECRET, `shopper-${n}`)));

const goodput = new Counter('goodput');
const shed = new Counter('shed');
const unexpected = new Counter('unexpected');
const admittedDuration = new Trend('admitted_duration', true);

http.setResponseCallback(http.expectedStatuses(200, 201, 409, 429, 503));

export const options = {
  scenarios: {
    offered: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 500,
      maxVUs: 3000,
    },
  },
  thresholds: {
    unexpected: ['count==0'],
    admitted_duration: ['p(99)<50'],
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
  discardResponseBodies: true,
  // Fewer tags on k6's own samples: its CPU is shared with the server here.
  systemTags: ['status'],
};

export default function () {
  const token = tokens[Math.floor(Math.random() * USERS)];
  const res = http.post(
    `${BASE}/api/v1/drops/${DROP}/reserve`,
    JSON.stringify({ sku: SKU, quantity: 1 }),
    { headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' } },
  );
  // Bodies are discarded to keep k6's CPU (on the server's cores) low, so a
  // 503 counts as shedding here; `loadtest/run overload` then checks from
  // the server's own counters that every 503 was `overloaded`.
  const admitted = res.status === 200 || res.status === 201 || res.status === 409;
  const shedding = res.status === 429 || res.status === 503;
  if (admitted) {
    goodput.add(1);
    admittedDuration.add(res.timings.duration);
  } else if (shedding) {
    shed.add(1);
    check(res, { 'shedding says when to retry': (r) => Number(r.headers['Retry-After']) >= 1 });
  } else {
    unexpected.add(1);
    console.error(`unexpected status ${res.status}`);
  }
}
