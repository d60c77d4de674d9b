// Chaos: baseline load while the harness injects faults. A Postgres restart makes the API
// answer 503 for a while, so errors are expected; the harness judges recovery and
// convergence, these limits only flag a run where the API was mostly down.
import { options as build } from './lib/config.js';
import { operation } from './lib/workload.js';

export const options = build('chaos', { failedRate: 0.1, p95: 2000 });
export default operation;
