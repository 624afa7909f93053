// k6 fairness: scripted accounts against honest ones at the opening of a
// drop, with or without its waiting room. The figure is units won per
// scripted account over units won per honest account (1 is fair).
//
// Scripted accounts (SCRIPTED): without a queue, fire 100 reserves a second
// each from 20 ms before the opening until they hold their limit or the
// round is sold out. With the queue: join in bursts from the moment the
// queue opens, poll their entry 100 times a second, and reserve the instant
// they are admitted (and keep trying reserve without a ticket meanwhile).
// Honest accounts (HONEST): act once, at a human reaction time 0.15-2 s
// after the opening: without a queue one reserve; with it one join, then a
// look every second (a page refresh), and one reserve a human moment after
// being admitted. Everyone buys their limit in one request. Honest accounts
// record the wait estimated at their first look after the draw against the
// moment they were actually admitted.
//
//   loadtest/run fairness   (starts dropgate, runs this twice: QUEUED=0, QUEUED=1)

import http from 'k6/http';
import { sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import { tokenFor } from './lib/token.js';
import { clockOffsetMs } from './lib/clock.js';

// Every instance serving the drop (BASE_URLS, comma-separated): each
// virtual user talks to one, in turn, so accounts are spread over them.
const BASES = (__ENV.BASE_URLS || __ENV.BASE_URL).split(',');
const base = () => BASES[__VU % BASES.length];
const SECRET = __ENV.JWT_SECRET;
const DROP = __ENV.DROP;
const SKU = __ENV.SKU;
const LIMIT = parseInt(__ENV.LIMIT || '2', 10);
const SCRIPTED = parseInt(__ENV.SCRIPTED || '20', 10);
const HONEST = parseInt(__ENV.HONEST || '400', 10);
const QUEUED = __ENV.QUEUED === '1';
// Accounts of this run: a second run on the same server uses other names.
const TAG = __ENV.TAG || 'run';
// How long after the opening anyone still tries.
const GIVE_UP_MS = parseInt(__ENV.GIVE_UP_MS || '20000', 10);

const scriptedUnits = new Counter('scripted_units');
const honestUnits = new Counter('honest_units');
const unexpected = new Counter('unexpected_status');
const estimateError = new Trend('estimate_error_s');
const estimateAbsError = new Trend('estimate_abs_error_s');

const EXPECTED = [200, 201, 403, 404, 409, 429, 503];
http.setResponseCallback(http.expectedStatuses(...EXPECTED));

export const options = {
  setupTimeout: '120s',
  scenarios: {
    scripted: { executor: 'per-vu-iterations', vus: SCRIPTED, iterations: 1, maxDuration: '120s', exec: 'scripted' },
    honest: { executor: 'per-vu-iterations', vus: HONEST, iterations: 1, maxDuration: '120s', exec: 'honest' },
  },
  thresholds: { unexpected_status: ['count==0'] },
};

function headers(user, ticket) {
  const h = { Authorization: `Bearer ${tokenFor(SECRET, user)}`, 'Content-Type': 'application/json' };
  if (ticket) h['Queue-Ticket'] = ticket;
  return h;
}

function expect(res) {
  if (!EXPECTED.includes(res.status)) {
    unexpected.add(1);
    console.error(`unexpected ${res.status}: ${res.body}`);
  }
  return res;
}

export function setup() {
  const offset = clockOffsetMs(BASES[0]);
  const drop = http.get(`${BASES[0]}/api/v1/drops/${DROP}`).json();
  // Server time → this machine's time.
  const local = (iso) => Date.parse(iso) - offset;
  return {
    opensAt: local(drop.round.opens_at),
    queueOpensAt: drop.queue ? local(drop.queue.opens_at) : null,
  };
}

function sleepUntil(ms) {
  const wait = ms - Date.now();
  if (wait > 0) sleep(wait / 1000);
}

function reserve(user, ticket) {
  return expect(http.post(`${base()}/api/v1/drops/${DROP}/reserve`,
    JSON.stringify({ sku: SKU, quantity: LIMIT }), { headers: headers(user, ticket) }));
}

function look(user) {
  return expect(http.get(`${base()}/api/v1/drops/${DROP}/queue`, { headers: headers(user) }));
}

function join(user) {
  return expect(http.post(`${base()}/api/v1/drops/${DROP}/queue`, '', { headers: headers(user) }));
}

// True when the answer ends the account's trying.
function settled(res, units) {
  if (res.status === 201) {
    units.add(LIMIT);
    return true;
  }
  if (res.status !== 409) return false;
  const error = res.json('error');
  return error === 'sold_out' || error === 'limit_exceeded' || error === 'closed';
}

export function scripted(data) {
  const user = `bot-${TAG}-${__VU}`;
  const deadline = data.opensAt + GIVE_UP_MS;
  if (!QUEUED) {
    sleepUntil(data.opensAt - 20);
    while (Date.now() < deadline) {
      if (settled(reserve(user), scriptedUnits)) return;
      sleep(0.01);
    }
    return;
  }
  sleepUntil(data.queueOpensAt);
  for (let i = 0; i < 10; i++) join(user);
  sleepUntil(data.opensAt - 20);
  while (Date.now() < deadline) {
    join(user);
    const entry = look(user);
    if (entry.status === 200 && entry.json('state') === 'admitted') {
      while (Date.now() < deadline) {
        if (settled(reserve(user, entry.json('ticket')), scriptedUnits)) return;
        sleep(0.01);
      }
      return;
    }
    if (entry.status === 200 && entry.json('state') === 'sold_out') return;
    reserve(user); // without a ticket: 403, whatever it tries
    sleep(0.01);
  }
}

export function honest(data) {
  const user = `human-${TAG}-${__VU}`;
  const deadline = data.opensAt + GIVE_UP_MS;
  sleepUntil(data.opensAt + 150 + Math.random() * 1850);
  if (!QUEUED) {
    for (let tries = 0; tries < 5; tries++) {
      const res = reserve(user);
      if (res.status !== 429 && res.status !== 503) {
        settled(res, honestUnits);
        return;
      }
      sleep(0.5 + Math.random());
    }
    return;
  }
  join(user);
  let estimate = null;
  while (Date.now() < deadline) {
    sleep(1);
    const res = look(user);
    if (res.status !== 200) continue;
    const entry = res.json();
    if (estimate === null && entry.position !== null && entry.state === 'waiting' && entry.estimated_wait_s !== null) {
      estimate = { at: Date.now(), wait: entry.estimated_wait_s };
    }
    if (entry.state === 'sold_out') return;
    if (entry.state === 'admitted') {
      if (estimate !== null) {
        const actual = (Date.parse(entry.admit_at) - estimate.at) / 1000;
        estimateError.add(actual - estimate.wait);
        estimateAbsError.add(Math.abs(actual - estimate.wait));
      }
      sleep(0.3 + Math.random());
      for (let tries = 0; tries < 5; tries++) {
        const bought = reserve(user, entry.ticket);
        if (bought.status !== 429 && bought.status !== 503) {
          settled(bought, honestUnits);
          return;
        }
        sleep(0.5 + Math.random());
      }
      return;
    }
  }
}
