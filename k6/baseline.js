// Baseline: steady load (100 ops/s for 5 min by default; the rate comes from PLAN). The
// reference run others are compared with, so its limits are the tightest short-run ones.
import { options as build } from './lib/config.js';
import { operation } from './lib/workload.js';

export const options = build('baseline', { failedRate: 0.01, p95: 500, p99: 1000 });
export default operation;
