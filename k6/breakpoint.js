// Breakpoint: the rate keeps rising (PLAN) until the SLOs break. The harness finds the
// breaking rate from its own SLOs (end-to-end lag, not just API latency) over the whole
// ramp, so these thresholds only mark the run and deliberately do not abortOnFail:
// stopping k6 at the first slow API second would cut the ramp the harness measures.
import { options as build } from './lib/config.js';
import { operation } from './lib/workload.js';

export const options = build('breakpoint', { failedRate: 0.05, p95: 1000 });
export default operation;
