// One workload operation: POST /v1/ops on the workload API, which picks the entity, the
// values and (without a body) the kind from the scenario's mix, so that k6 and goose drive
// exactly the same workload.

import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { BASE_URL } from './config.js';

// 409: every key the API tried was deleted by concurrent operations. That is the workload
// racing itself, not a failure of the system under test, so it is counted here and kept
// out of http_req_failed.
const conflicts = new Counter('ops_conflicts');

http.setResponseCallback(http.expectedStatuses(200, 409));

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

// Random hex id of `bytes` bytes; W3C forbids all-zero trace and span ids.
function randomId(bytes) {
  for (;;) {
    const b = crypto.getRandomValues(new Uint8Array(bytes));
    if (b.some((x) => x !== 0)) return Array.from(b, (x) => HEX[x]).join('');
  }
}

// A fresh W3C trace context per operation (version 00, sampled), so each write can be
// followed through the pipeline; the API records it with the write.
export function traceparent() {
  return `00-${randomId(16)}-${randomId(8)}-01`;
}

export function operation() {
  const res = http.post(`${BASE_URL}/v1/ops`, null, {
    headers: { traceparent: traceparent() },
    // One name for every operation keeps the metrics' cardinality at one series.
    tags: { name: 'POST /v1/ops' },
  });
  if (res.status === 409) {
    conflicts.add(1);
    return;
  }
  check(res, {
    'status is 200': (r) => r.status === 200,
    'body names the operation': (r) => {
      try {
        return typeof r.json('op') === 'string';
      } catch (_) {
        return false;
      }
    },
  });
}
