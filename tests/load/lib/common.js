// Shared by the k6 scenarios: configuration from the environment, the key set, the summary.
import { SharedArray } from 'k6/data';

export const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8000';
export const DURATION = __ENV.DURATION || '10s';
export const VUS = Number(__ENV.VUS || 32);
export const KEY_COUNT = Number(__ENV.KEY_COUNT || 10000);
export const VALUE_BYTES = Number(__ENV.VALUE_BYTES || 100);
export const ROUTE = 'GET /v1/keys/{key}';
// API_KEY: sent as `Authorization: Bearer <key>` on every request (unset: no header, for a
// gateway with auth disabled or the naive proxy).
export const AUTH = __ENV.API_KEY ? { Authorization: `Bearer ${__ENV.API_KEY}` } : {};
export const PUT_ROUTE = 'PUT /v1/keys/{key}';

// The keys the orchestrator seeded: bench-<i>, i < KEY_COUNT (parsed once, shared by every VU).
export const keys = new SharedArray('keys', () => {
  const out = [];
  for (let i = 0; i < KEY_COUNT; i++) out.push(`bench-${i}`);
  return out;
});

export function randomKey() {
  return keys[Math.floor(Math.random() * keys.length)];
}

export function value() {
  return 'v'.repeat(VALUE_BYTES);
}

// handleSummary: the JSON summary to the path the orchestrator gives, one line on stdout.
export function summary(data) {
  const out = {};
  if (__ENV.SUMMARY) out[__ENV.SUMMARY] = JSON.stringify(data);
  const d = data.metrics.http_req_duration ? data.metrics.http_req_duration.values : {};
  const reqs = data.metrics.http_reqs ? data.metrics.http_reqs.values.rate : 0;
  out.stdout = `requests/s ${reqs.toFixed(0)}  p95 ${(d['p(95)'] || 0).toFixed(2)} ms  p99 ${(d['p(99)'] || 0).toFixed(2)} ms\n`;
  return out;
}
