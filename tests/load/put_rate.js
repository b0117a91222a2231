// A constant arrival rate of PUTs over a key set (the outbox benchmark: every PUT adds a row).
//   BASE_URL  e.g. http://127.0.0.1:8000   RATE (PUT/s, default 300)   DURATION (default 60s)
//   KEY_COUNT (keys bench-<i>, default 10000)   SUMMARY (path of the JSON summary)
import http from 'k6/http';
import { check } from 'k6';
import { AUTH, BASE_URL, KEY_COUNT } from './lib/common.js';

export const options = {
  discardResponseBodies: true,
  scenarios: {
    writes: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 300),
      timeUnit: '1s',
      duration: __ENV.DURATION || '60s',
      preAllocatedVUs: 50,
      maxVUs: 300,
    },
  },
};

export default function () {
  const key = `bench-${Math.floor(Math.random() * KEY_COUNT)}`;
  const response = http.put(`${BASE_URL}/v1/keys/${key}`, `value of ${key} at ${Date.now()}`, {
    tags: { name: 'PUT /v1/keys/{key}' },
    headers: Object.assign({ 'Content-Type': 'text/plain' }, AUTH),
    timeout: '10s',
  });
  check(response, { 'status is 2xx': (r) => r.status === 200 || r.status === 201 });
}

export function handleSummary(data) {
  const out = {};
  if (__ENV.SUMMARY) out[__ENV.SUMMARY] = JSON.stringify(data);
  return out;
}
