// Read-hit throughput: VUS virtual users (closed model) GET seeded keys as fast as they can.
import http from 'k6/http';
import { check } from 'k6';
import { AUTH, BASE_URL, DURATION, ROUTE, VUS, randomKey, summary } from './lib/common.js';

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
  scenarios: { read_hit: { executor: 'constant-vus', vus: VUS, duration: DURATION } },
  // SMOKE=1 (tests/integration/test_k6_smoke.py): errors only, no latency thresholds.
  thresholds: __ENV.SMOKE
    ? { http_req_failed: ['rate<0.01'] }
    : {
        http_req_failed: ['rate<0.01'],
        'http_req_duration{name:GET /v1/keys/{key}}': ['p(95)<100', 'p(99)<250'],
      },
};

export default function () {
  const r = http.get(`${BASE_URL}/v1/keys/${randomKey()}`, { tags: { name: ROUTE }, headers: AUTH });
  check(r, { 'status is 200': (res) => res.status === 200 });
}

export const handleSummary = summary;
