// Spike: a 5x burst for a minute on top of the baseline (PLAN holds the jump). The burst
// queues work, so latency limits are loose; what matters is recovery, which the harness
// measures on the pipeline's lag.
import { options as build } from './lib/config.js';
import { operation } from './lib/workload.js';

export const options = build('spike', { failedRate: 0.02, p95: 2000 });
export default operation;
