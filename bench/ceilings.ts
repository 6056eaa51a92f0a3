import { freePort, load, spawnBaseline, spawnServer } from "./harness.js";
import { onCleanup, runBenchmark } from "./lib/cleanup.js";
import { createBenchDatabase } from "./lib/postgres.js";
import { deletePrefix, redisUrl } from "./lib/redis.js";
import { int, LOAD_HEADER, loadRow, log, machine, median, numberEnv, waitForQuiet } from "./lib/report.js";

/**
 * How fast can a consuming check be on this machine, in each design? Minimal servers with nothing of
 * Tollgate in them (bench/ceiling-server.ts) against the node:http baseline, in the harness and with
 * the settings of bench/check.ts: 50 connections, 100 orgs, baseline then candidate in each round.
 *
 * - acknowledged once in Redis, one Lua call per request;
 * - the same, one Lua call per event-loop turn;
 * - acknowledged once committed to Postgres (group commit) after the batched Lua call.
 *
 * The third bounds every design that commits to Postgres before answering; docs/benchmarks.md uses
 * these numbers to decide what the check path must become to reach its target.
 *
 * Run: npx tsx bench/ceilings.ts   (DATABASE_URL, REDIS_URL, BENCH_SECONDS, BENCH_CONNECTIONS,
 *      BENCH_ROUNDS, BENCH_QUIET_WAIT)
 */
const duration = numberEnv("BENCH_SECONDS", 8);
const connections = numberEnv("BENCH_CONNECTIONS", 50);
const rounds = numberEnv("BENCH_ROUNDS", 3);
const MODES = [
  ["redis", "acknowledged in Redis, one Lua call per request"],
  ["redis-batched", "acknowledged in Redis, one Lua call per event-loop turn"],
  ["postgres", "acknowledged in Postgres (group commit after the batched Lua call)"],
] as const;

await runBenchmark("bench/ceilings", 15, async () => {
  const quiet = await waitForQuiet();
  const database = await createBenchDatabase();
  const prefix = `ceiling-${process.pid}:`;
  onCleanup("delete the ceiling servers' Redis keys", () => deletePrefix(prefix));
  const requests = Array.from({ length: 100 }, (_, i) => ({
    method: "POST" as const,
    path: "/v1/check",
    body: JSON.stringify({ org_id: `org_${i}`, feature: "kolekts", amount: 1 }),
  }));
  const sample = JSON.stringify({ allowed: true, feature: "kolekts", type: "metered", limit: null, used: 1 });
  const baseline = await spawnBaseline(sample);
  onCleanup("stop baseline", baseline.stop);
  const target = (url: string) => ({
    url: `${url}/v1/check`,
    method: "POST" as const,
    headers: { "content-type": "application/json" },
    requests,
    connections,
    durationSeconds: duration,
  });

  const results: { mode: string; label: string; ratios: number[]; rows: string[] }[] = [];
  for (const [mode, label] of MODES) {
    const server = await spawnServer(
      ["--import", "tsx", "bench/ceiling-server.ts"],
      { CEILING_MODE: mode, CEILING_PREFIX: prefix, REDIS_URL: redisUrl, DATABASE_URL: database.url },
      await freePort(),
    );
    try {
      log(`${label}: warming up`);
      await load({ ...target(server.url), durationSeconds: 3 });
      const ratios: number[] = [];
      const rows: string[] = [];
      for (let round = 0; round < rounds; round++) {
        const base = await load(target(baseline.url));
        const ours = await load(target(server.url));
        ratios.push(ours.requestsPerSecond / base.requestsPerSecond);
        rows.push(loadRow(`node:http baseline, round ${round + 1}`, base));
        rows.push(loadRow(`${mode}, round ${round + 1}`, ours, base));
        log(`  round ${round + 1}: ${int(base.requestsPerSecond)} vs ${int(ours.requestsPerSecond)} req/s`);
      }
      results.push({ mode, label, ratios, rows });
    } finally {
      await server.stop();
    }
  }
  await baseline.stop();

  console.log(
    `\nCeilings of a consuming check (${machine()}; ${connections} connections, ${duration} s per pass; ${quiet})\n`,
  );
  console.log(LOAD_HEADER);
  for (const r of results) for (const row of r.rows) console.log(row);
  console.log("");
  for (const r of results) {
    console.log(
      `- ${r.label}: ${median(r.ratios).toFixed(2)}× the baseline (median of ${r.ratios.map((x) => x.toFixed(2)).join(", ")})`,
    );
  }
});
