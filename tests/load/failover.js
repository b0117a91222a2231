// Failover companion: a constant arrival rate of GETs over a key set, tagged by whether the key's
// shard is the one whose primary is killed during the run (the orchestrator does the killing).
//   KEYS_FILE  JSON {"victim": [...], "healthy": [...]}     BASE_URL  e.g. http://127.0.0.1:8000
//   RATE (GET/s, default 1500)  DURATION (default 20s)  SUMMARY (path of the JSON summary)
import http from 'k6/http';
import { check } from 'k6';
import { SharedArray } from 'k6/data';
import { AUTH } from './lib/common.js';

// Parsed once and shared by every VU (a plain open() would parse it once per VU).
const all = new SharedArray('failover-keys', () => {
  const keys = JSON.parse(open(__ENV.KEYS_FILE));
  return keys.victim.map((k) => [k, 'victim']).concat(keys.healthy.map((k) => [k, 'healthy']));
});
const base = __ENV.BASE_URL || 'http://127.0.0.1:8000';

export const options = {
  discardResponseBodies: true,
  scenarios: {
    reads: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 1500),
      timeUnit: '1s',
      duration: __ENV.DURATION || '20s',
      preAllocatedVUs: 200,
      maxVUs: 1000,
    },
  },
  thresholds: {
    http_req_failed: [{ threshold: 'rate<1', abortOnFail: false }],
  },
};

export default function () {
  const [key, shard] = all[Math.floor(Math.random() * all.length)];
  const response = http.get(`${base}/v1/keys/${encodeURIComponent(key)}`, {
    tags: { name: 'GET /v1/keys/{key}', shard },
    headers: AUTH,
    timeout: '10s',
  });
  check(response, { 'status is 200': (r) => r.status === 200 });
}

export function handleSummary(data) {
  const out = {};
  if (__ENV.SUMMARY) out[__ENV.SUMMARY] = JSON.stringify(data);
  return out;
}
