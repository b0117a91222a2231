// Cold-key stampede: STAMPEDE_VUS users GET one key that no cache holds, all at once.
//   KEY  the cold key (the orchestrator puts it in the store only)
import http from 'k6/http';
import { check } from 'k6';
import { AUTH, BASE_URL, ROUTE, summary } from './lib/common.js';

const users = Number(__ENV.STAMPEDE_VUS || 1000);

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
  scenarios: {
    stampede: { executor: 'per-vu-iterations', vus: users, iterations: 1, maxDuration: '30s' },
  },
  thresholds: { http_req_failed: ['rate<0.01'] },
};

export default function () {
  const r = http.get(`${BASE_URL}/v1/keys/${__ENV.KEY}`, { tags: { name: ROUTE }, headers: AUTH, timeout: '10s' });
  check(r, { 'status is 200': (res) => res.status === 200 });
}

export const handleSummary = summary;
