// Stress: ramp (100 -> 1000 ops/s by default) to see how the API and the database behave
// near capacity; latency is allowed to grow, errors only a little.
import { options as build } from './lib/config.js';
import { operation } from './lib/workload.js';

export const options = build('stress', { failedRate: 0.02, p95: 1000 });
export default operation;
