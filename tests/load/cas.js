// Compare-and-set writers: VUS users each read a key's ETag and write it back with If-Match,
// over a few hot keys. A 412 is the expected answer when another writer won, not a failure.
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { AUTH, BASE_URL, DURATION, PUT_ROUTE, ROUTE, VUS, summary, value } from './lib/common.js';

const HOT_KEYS = Number(__ENV.HOT_KEYS || 8);
const won = new Counter('cas_won');
const lost = new Counter('cas_lost');

http.setResponseCallback(http.expectedStatuses(200, 201, 412));

export const options = {
  discardResponseBodies: false,
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
  scenarios: { cas: { executor: 'constant-vus', vus: VUS, duration: DURATION } },
  thresholds: { http_req_failed: ['rate<0.01'], cas_won: ['count>0'] },
};

const body = value();

export default function () {
  const key = `bench-${Math.floor(Math.random() * HOT_KEYS)}`;
  const read = http.get(`${BASE_URL}/v1/keys/${key}`, { tags: { name: ROUTE }, headers: AUTH, responseType: 'none' });
  if (!check(read, { 'read 200': (r) => r.status === 200 })) return;
  const write = http.put(`${BASE_URL}/v1/keys/${key}`, body, {
    tags: { name: PUT_ROUTE },
    headers: { ...AUTH, 'If-Match': read.headers.Etag || read.headers.ETag || '', 'Content-Type': 'application/octet-stream' },
  });
  if (write.status === 412) lost.add(1);
  else if (check(write, { 'write 2xx': (r) => r.status === 200 || r.status === 201 })) won.add(1);
}

export const handleSummary = summary;
