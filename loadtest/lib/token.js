// Shopper tokens minted inside k6: HS256 JWTs signed with the server's
// secret, one per shopper, made once per virtual user and reused.

import crypto from 'k6/crypto';
import encoding from 'k6/encoding';

const tokens = {};

export function tokenFor(secret, user, student = false) {
  const name = student ? `${user}+student` : user;
  if (!tokens[name]) {
    const b64url = (text) => encoding.b64encode(text, 'rawurl');
    const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
    const claims = b64url(JSON.stringify({ sub: user, exp: Math.floor(Date.now() / 1000) + 3600, student }));
    const signature = crypto.hmac('sha256', secret, `${header}.${claims}`, 'base64rawurl');
    tokens[name] = `${header}.${claims}.${signature}`;
  }
  return tokens[name];
}

// The hex HMAC-SHA256 of a payment notice, as the gateway signs it.
export function signNotice(secret, body) {
  return crypto.hmac('sha256', secret, body, 'hex');
}
