// Shared configuration of the k6 scenarios: where the workload API is, the load plan the
// harness asks for, and the scenario options built from it.
//
// The harness passes (see harness/src/load/k6.rs):
//   BASE_URL  the workload API, e.g. http://127.0.0.1:8080
//   PLAN      JSON array of segments [{"duration_ms": 10000, "from": 50, "to": 50}, ...],
//             rates in operations per second, moving linearly from `from` to `to`.
// By hand: k6 run -e BASE_URL=http://127.0.0.1:8080 -e PLAN='[{"duration_ms":60000,"from":100,"to":100}]' k6/baseline.js

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');

function parsePlan(raw) {
  if (!raw) {
    throw new Error('PLAN is not set: pass -e PLAN=\'[{"duration_ms":60000,"from":100,"to":100}]\'');
  }
  let segments;
  try {
    segments = JSON.parse(raw);
  } catch (e) {
    throw new Error(`PLAN is not valid JSON (${e.message}): ${raw}`);
  }
  if (!Array.isArray(segments) || segments.length === 0) {
    throw new Error(`PLAN must be a non-empty array of segments: ${raw}`);
  }
  segments.forEach((s, i) => {
    const ok = s && Number.isFinite(s.duration_ms) && s.duration_ms > 0
      && Number.isFinite(s.from) && s.from >= 0 && Number.isFinite(s.to) && s.to >= 0;
    if (!ok) {
      throw new Error(`PLAN segment ${i} needs duration_ms > 0 and rates from, to >= 0: ${JSON.stringify(s)}`);
    }
  });
  return segments;
}

// k6 stage targets are integers per `timeUnit`. Plans are normally whole operations per
// second (timeUnit 1s); a fractional rate (e.g. 2.5/s) is expressed per 10, 100 or 1000
// seconds instead so it is not rounded away.
function rateScale(segments) {
  const whole = (scale) => segments.every((s) => [s.from, s.to].every((r) => Math.abs(r * scale - Math.round(r * scale)) < 1e-6));
  for (const scale of [1, 10, 100, 1000]) {
    if (whole(scale)) return scale;
  }
  return 1000;
}

// Turns the plan into ramping-arrival-rate parameters: each segment becomes a stage whose
// target is its end rate (k6 interpolates linearly from the previous target, as the plan
// does). A jump (a segment starting at another rate than the previous one ended) becomes a
// zero-length stage to the new rate first: k6 switches rates at once then (checked: 2 s at
// 10/s then a 0 s stage and 2 s at 100/s gives 219 of 220 arrivals), so the load keeps the
// plan's shape and stays aligned with the harness's timeline, where faults are scheduled.
function arrivalStages(segments) {
  const scale = rateScale(segments);
  const rate = (r) => Math.round(r * scale);
  const stages = [];
  let current = rate(segments[0].from);
  for (const s of segments) {
    if (rate(s.from) !== current) {
      stages.push({ duration: '0s', target: rate(s.from) });
    }
    stages.push({ duration: `${s.duration_ms}ms`, target: rate(s.to) });
    current = rate(s.to);
  }
  return { startRate: rate(segments[0].from), timeUnit: `${scale}s`, stages };
}

const PLAN = parsePlan(__ENV.PLAN);

// Virtual users: an open model needs enough of them that arrivals never wait for a free VU
// (k6 counts those as dropped_iterations). A few are allocated up front, more on demand up
// to twice the peak rate, i.e. room for every request of the peak second taking up to 2 s.
function scenario() {
  const peak = Math.max(...PLAN.map((s) => Math.max(s.from, s.to)));
  return {
    executor: 'ramping-arrival-rate',
    preAllocatedVUs: Math.max(10, Math.ceil(peak / 10)),
    maxVUs: Math.max(10, Math.ceil(peak * 2)),
    // In-flight operations finish, but load stops close to the plan's end.
    gracefulStop: '10s',
    ...arrivalStages(PLAN),
  };
}

// Scenario thresholds. The harness decides pass/fail on its own thresholds; these make a
// hand-run k6 report meaningful. k6 exits 99 when one fails, which the harness records
// without losing the summary.
function thresholds({ failedRate, p95, p99 }) {
  const t = {
    http_req_failed: [`rate<${failedRate}`],
    http_req_duration: [`p(95)<${p95}`],
    checks: [`rate>${1 - failedRate}`],
  };
  if (p99 !== undefined) t.http_req_duration.push(`p(99)<${p99}`);
  return t;
}

// The options every scenario script exports.
export function options(name, limits) {
  return {
    scenarios: { [name]: scenario() },
    thresholds: thresholds(limits),
    // The harness passes the same list on the command line; here for runs by hand.
    summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
  };
}
