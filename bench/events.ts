import { freePort, type LoadResult, load, spawnServer } from "./harness.js";
import { onCleanup, runBenchmark } from "./lib/cleanup.js";
import { benchClassifier, formatCpu, sampleCpu } from "./lib/cpu.js";
import { serverVersion, withClient } from "./lib/postgres.js";
import { redisVersion } from "./lib/redis.js";
import { int, log, machine, median, ms, numberEnv, waitForQuiet } from "./lib/report.js";
import { operatorHeaders, tollgateWithOrgs } from "./lib/tollgate.js";

/**
 * `POST /v1/events` in batches of 1000 (Postgres + Redis mode) against the raw baseline: a node:http
 * server (bench/baseline-events-server.ts) taking the same batches and only inserting them, 1000
 * rows per statement with `insert … select * from unnest(…) on conflict (org_id, event_id) do
 * nothing` through `pg`, into a table with the columns and primary key of usage_events. Same
 * autocannon settings, same concurrency, one after the other. Target: ≥ 0.6× the baseline's events/s.
 *
 * Every batch has fresh event ids (autocannon's `[<id>]` replacement), spread over BENCH_ORGS orgs
 * and the kolekt catalog's two meters, with a timestamp and a small properties object. Tollgate
 * does everything it does in production: per-event validation, dedup, hourly rollups, period
 * totals, threshold checks, one transaction per batch, then the Redis counters.
 *
 * Measured in BENCH_ROUNDS rounds (baseline, then Tollgate); the median ratio is the result.
 *
 * Run: npm run bench:events   (DATABASE_URL, REDIS_URL, BENCH_SECONDS, BENCH_EVENTS_CONNECTIONS,
 *      BENCH_ORGS, BENCH_ROUNDS, BENCH_QUIET_WAIT, BENCH_BASELINE_INDEXES=1 to give the baseline
 *      table usage_events' secondary index too, BENCH_PROFILE=<dir>)
 */
const duration = numberEnv("BENCH_SECONDS", 10);
const connections = numberEnv("BENCH_EVENTS_CONNECTIONS", 8);
const orgCount = numberEnv("BENCH_ORGS", 20);
const rounds = numberEnv("BENCH_ROUNDS", 5);
const BATCH = 1000;
const baselineIndexes = process.env.BENCH_BASELINE_INDEXES === "1";
const profileDir = process.env.BENCH_PROFILE || undefined;

await runBenchmark("bench/events", 15, async () => {
  const quiet = await waitForQuiet();
  const { database, tollgate, orgs } = await tollgateWithOrgs(orgCount, profileDir);

  await withClient(database.url, async (client) => {
    await client.query(
      baselineIndexes
        ? "create table bench_raw_events (like usage_events including defaults including indexes)"
        : "create table bench_raw_events (like usage_events including defaults, primary key (org_id, event_id))",
    );
  });
  const baseline = await spawnServer(
    ["--import", "tsx", "bench/baseline-events-server.ts"],
    { DATABASE_URL: database.url, BASELINE_TABLE: "bench_raw_events" },
    await freePort(),
  );
  onCleanup("stop baseline", baseline.stop);

  // One batch: event ids `<request id>-<i>` (autocannon puts a fresh id in every request).
  const timestamp = new Date().toISOString();
  const events = Array.from({ length: BATCH }, (_, i) => ({
    id: `[<id>]-${i}`,
    org_id: orgs[i % orgs.length],
    meter: i % 2 === 0 ? "kolekts" : "api_calls",
    timestamp,
    properties: { source: "bench", n: i },
  }));
  const body = JSON.stringify({ events });
  const check = await tollgate.call<{ accepted: number; rejected: unknown[] }>(
    "POST",
    "/v1/events",
    JSON.parse(body.replaceAll("[<id>]", "probe")),
    202,
  );
  if (check.accepted !== BATCH) throw new Error(`the probe batch was not accepted: ${JSON.stringify(check)}`);

  const eps = (r: LoadResult) => r.requestsPerSecond * BATCH;
  const run = (url: string, seconds: number) =>
    load({
      url: `${url}/v1/events`,
      method: "POST",
      headers: operatorHeaders,
      body,
      idReplacement: true,
      connections,
      durationSeconds: seconds,
      timeoutSeconds: 60,
    });
  log("warming up");
  const warmBase = await run(baseline.url, 3);
  const warmOurs = await run(tollgate.url, 3);
  log(`measuring, ${connections} connections, ${duration} s each, ${rounds} rounds`);
  const results: { base: LoadResult; ours: LoadResult; cpuBase: string; cpuOurs: string }[] = [];
  const classify = benchClassifier({ tollgate: tollgate.pid, baseline: baseline.pid }, database.name);
  for (let round = 0; round < rounds; round++) {
    let cpu = sampleCpu(classify);
    const base = await run(baseline.url, duration);
    const cpuBase = formatCpu(cpu.stop());
    cpu = sampleCpu(classify);
    const ours = await run(tollgate.url, duration);
    const cpuOurs = formatCpu(cpu.stop());
    results.push({ base, ours, cpuBase, cpuOurs });
    log(`  round ${round + 1}: ${int(eps(base))} vs ${int(eps(ours))} events/s`);
  }

  // Every acknowledged batch must be stored: count the rows.
  const [stored, storedBase] = await withClient(database.url, async (client) => {
    const count = async (table: string) =>
      Number((await client.query<{ n: string }>(`select count(*)::text as n from ${table}`)).rows[0]?.n ?? 0);
    return [await count("usage_events"), await count("bench_raw_events")];
  });
  const total = (f: (r: LoadResult) => number, side: "base" | "ours") =>
    results.reduce((acc, r) => acc + f(r[side]), 0);
  const acknowledged = BATCH * (warmOurs.ok + total((r) => r.ok, "ours") + 1);
  const sent = BATCH * (warmOurs.sent + total((r) => r.sent, "ours") + 1);
  const acknowledgedBase = BATCH * (warmBase.ok + total((r) => r.ok, "base"));

  const [pgVersion, rVersion] = await Promise.all([serverVersion(database.url), redisVersion()]);
  const ratios = results.map((r) => eps(r.ours) / eps(r.base));
  const ratio = median(ratios);
  console.log(
    `\nPOST /v1/events, batches of ${BATCH} (${orgs.length} orgs, 2 meters), Postgres ${pgVersion} + Redis ${rVersion}`,
  );
  console.log(`${machine()}; ${connections} connections, ${duration} s per pass; ${quiet}\n`);
  console.log("| server | events/s | batches/s | vs baseline | p50 ms | p99 ms | errors |");
  console.log("|---|---:|---:|---:|---:|---:|---:|");
  const line = (name: string, r: LoadResult, ratioText: string) =>
    console.log(
      `| ${name} | ${int(eps(r))} | ${r.requestsPerSecond.toFixed(1)} | ${ratioText} | ${ms(r.latency.p50)} | ${ms(r.latency.p99)} | ${r.errors + r.non2xx} |`,
    );
  results.forEach(({ base, ours }, i) => {
    const raw = `raw pg insert${baselineIndexes ? " (+ meter index)" : ""}, round ${i + 1}`;
    line(raw, base, "1.00×");
    line(`Tollgate, round ${i + 1}`, ours, `${(eps(ours) / eps(base)).toFixed(2)}×`);
  });
  console.log("\nCPU used during each pass, in cores:\n");
  results.forEach((r, i) => {
    console.log(`- round ${i + 1}, raw insert: ${r.cpuBase}`);
    console.log(`- round ${i + 1}, Tollgate: ${r.cpuOurs}`);
  });
  console.log(
    `\nTollgate at ${ratio.toFixed(2)}× the raw insert (median of ${ratios.map((r) => r.toFixed(2)).join(", ")}; target ≥ 0.6×: ${ratio >= 0.6 ? "met" : "NOT met"}).`,
  );
  const complete = stored >= acknowledged && stored <= sent;
  console.log(
    `Stored: ${int(stored)} events in usage_events for ${int(acknowledged)} acknowledged ` +
      `(${int(sent)} sent)${complete ? "" : " — MISMATCH"}; baseline table ${int(storedBase)} for ${int(acknowledgedBase)} acknowledged.`,
  );
  if (!complete) process.exitCode = 1;
  await baseline.stop();
  await tollgate.stop();
});
