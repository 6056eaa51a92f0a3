import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { freePort, load, row, spawnServer, TABLE_HEADER } from "./harness.js";

/**
 * What Tollgate's HTTP stack (Hono + request ids, metrics, body limits, problem+json) costs over a
 * bare node:http server answering the same JSON: GET /healthz on both, same load, same run.
 * Run: npm run build && npx tsx bench/http-overhead.ts
 */
const duration = Number(process.env.BENCH_SECONDS ?? 10);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 50);

const baseline = await spawnServer(["--import", "tsx", "bench/baseline-server.ts"], {}, await freePort());
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "tollgate-bench-"));
const tollgate = await spawnServer(
  ["bin/tollgate.js", "start"],
  {
    TOLLGATE_DATA_DIR: dataDir,
    TOLLGATE_LOG_LEVEL: "warn",
    TOLLGATE_ADMIN_KEY: "bench-operator-key-0123456789abcdef",
  },
  await freePort(),
);
try {
  // Warm both up (JIT, connection pools), then measure one after the other.
  await load({ url: `${baseline.url}/healthz`, durationSeconds: 2, connections });
  await load({ url: `${tollgate.url}/healthz`, durationSeconds: 2, connections });
  const base = await load({ url: `${baseline.url}/healthz`, durationSeconds: duration, connections });
  const ours = await load({ url: `${tollgate.url}/healthz`, durationSeconds: duration, connections });
  console.log(`\nGET /healthz, ${connections} connections, ${duration} s each, ${os.cpus().length} cores\n`);
  console.log(TABLE_HEADER);
  console.log(row("node:http baseline", base));
  console.log(row("Tollgate (Hono, full middleware)", ours, base));
} finally {
  await baseline.stop();
  await tollgate.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
}
