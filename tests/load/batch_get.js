// Batch reads: VUS virtual users (closed model) POST /v1/batch with BATCH_SIZE gets of random
// seeded keys each, as fast as they can. keys/s is requests/s times BATCH_SIZE. Every op's own
// status is checked (a batch is 200 even when one of its ops fails), by counting the 200s in
// the body rather than parsing it: k6 shares this machine's cores with the gateway.
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { SharedArray } from 'k6/data';
import { AUTH, BASE_URL, DURATION, VUS, randomKey, summary } from './lib/common.js';

const BATCH_SIZE = Number(__ENV.BATCH_SIZE || 100);
const BODIES = 256; // prepared once: random key sets, shared by every VU
const failedOps = new Counter('batch_ops_failed');

const bodies = new SharedArray('bodies', () => {
  const out = [];
  for (let b = 0; b < BODIES; b++) {
    const ops = [];
    for (let i = 0; i < BATCH_SIZE; i++) ops.push({ op: 'get', key: randomKey() });
    out.push(JSON.stringify({ ops }));
  }
  return out;
});

export const options = {
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
  scenarios: { batch_get: { executor: 'constant-vus', vus: VUS, duration: DURATION } },
  thresholds: { http_req_failed: ['rate<0.01'], batch_ops_failed: ['count<1'] },
};

const PARAMS = {
  headers: Object.assign({ 'Content-Type': 'application/json' }, AUTH),
  tags: { name: 'POST /v1/batch' },
};

export default function () {
  const r = http.post(`${BASE_URL}/v1/batch`, bodies[Math.floor(Math.random() * BODIES)], PARAMS);
  if (check(r, { 'status is 200': (res) => res.status === 200 })) {
    failedOps.add(BATCH_SIZE - (r.body.match(/"status": ?200[,}]/g) || []).length);
  }
}

export const handleSummary = summary;
