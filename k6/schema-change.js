// Schema change: baseline load while the harness runs ALTER TABLE on the source. Writes may
// wait on the table lock for a moment, so p95 is looser than baseline; none should fail.
import { options as build } from './lib/config.js';
import { operation } from './lib/workload.js';

export const options = build('schema_change', { failedRate: 0.01, p95: 1000 });
export default operation;
