// The server's clock against this machine's, as a shopper's page syncs it.

import http from 'k6/http';

// The server's clock minus ours, in ms, from the sample with the shortest
// round trip of five.
export function clockOffsetMs(base) {
  let best = null;
  for (let i = 0; i < 5; i++) {
    const sent = Date.now();
    const time = http.get(`${base}/api/v1/time`).json();
    const received = Date.now();
    const rtt = received - sent;
    if (best === null || rtt < best.rtt) {
      best = { rtt, offset: time.unix_ms - (sent + received) / 2 };
    }
  }
  return best.offset;
}
