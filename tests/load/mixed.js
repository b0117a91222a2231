// Mixed load: 90% GET, 10% PUT of VALUE_BYTES over the seeded keys (closed model, VUS users).
import http from 'k6/http';
import { check } from 'k6';
import { AUTH, BASE_URL, DURATION, PUT_ROUTE, ROUTE, VUS, randomKey, summary, value } from './lib/common.js';

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
  scenarios: { mixed: { executor: 'constant-vus', vus: VUS, duration: DURATION } },
  // SMOKE=1 (tests/integration/test_k6_smoke.py): errors only, no latency thresholds.
  thresholds: __ENV.SMOKE
    ? { http_req_failed: ['rate<0.01'] }
    : {
        http_req_failed: ['rate<0.01'],
        'http_req_duration{name:GET /v1/keys/{key}}': ['p(99)<250'],
        'http_req_duration{name:PUT /v1/keys/{key}}': ['p(99)<500'],
      },
};

const body = value();

export default function () {
  const key = randomKey();
  if (Math.random() < 0.1) {
    const r = http.put(`${BASE_URL}/v1/keys/${key}`, body, {
      tags: { name: PUT_ROUTE },
      headers: { ...AUTH, 'Content-Type': 'application/octet-stream' },
    });
    check(r, { 'write acknowledged': (res) => res.status === 200 || res.status === 201 });
  } else {
    const r = http.get(`${BASE_URL}/v1/keys/${key}`, { tags: { name: ROUTE }, headers: AUTH });
    check(r, { 'status is 200': (res) => res.status === 200 });
  }
}

export const handleSummary = summary;
