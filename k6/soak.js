// Soak: baseline rate for hours. Leaks and slow degradation show in the tail and in a
// creeping error rate, hence a tight error budget and a p99 limit.
import { options as build } from './lib/config.js';
import { operation } from './lib/workload.js';

export const options = build('soak', { failedRate: 0.001, p95: 500, p99: 1000 });
export default operation;
