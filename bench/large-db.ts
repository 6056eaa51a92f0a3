import { type LoadResult, latencyStats, load } from "./harness.js";
import { onCleanup, runBenchmark } from "./lib/cleanup.js";
import { benchClassifier, formatCpu, sampleCpu } from "./lib/cpu.js";
import { type BenchDatabase, createBenchDatabase, serverVersion, withClient } from "./lib/postgres.js";
import { deleteOrgKeys, redisUrl, redisVersion } from "./lib/redis.js";
import { int, loadHeader, loadRow, log, machine, median, ms, numberEnv, waitForQuiet } from "./lib/report.js";
import { createOrgs, operatorHeaders, startTollgate, type Tollgate } from "./lib/tollgate.js";

/**
 * Check latency with 10 million stored events against the same measurement on an empty database
 * (target: within 1.2×). Two benchmark databases set up alike — BENCH_ORGS orgs each, on the kolekt
 * catalog's pay_as_you_go plan, billing periods that began BENCH_DAYS days ago — one left empty, one
 * loaded with BENCH_EVENTS events (default 10,000,000): `insert … select generate_series` into
 * usage_events, with the hourly usage_rollups and usage_periods totals ingest would have written, in
 * the same statements (count meters, value 1, timestamps spread over the period so far, in org order:
 * the fastest honest load). Both are vacuumed, analyzed and checkpointed.
 *
 * Then one fresh Tollgate process per database (same configuration, Postgres + Redis, no counters in
 * Redis: the warm-up seeds them from Postgres as after a deploy) and `POST /v1/check` (consume one
 * kolekt, orgs in turn), alternating between the two in each of BENCH_ROUNDS rounds, so that other
 * work on the machine hits both alike: as fast as possible, then at a fixed moderate rate (BENCH_RATE,
 * default half of the empty database's maximum) spread evenly over each second.
 *
 * Loading 10M events takes one to two minutes on 2 cores, the whole run about six. Both databases are
 * dropped at the end.
 *
 * Run: npm run bench:large   (DATABASE_URL, REDIS_URL, BENCH_EVENTS, BENCH_ORGS, BENCH_DAYS,
 *      BENCH_SECONDS, BENCH_CONNECTIONS, BENCH_ROUNDS, BENCH_RATE, BENCH_QUIET_WAIT)
 */
const totalEvents = numberEnv("BENCH_EVENTS", 10_000_000);
const orgCount = numberEnv("BENCH_ORGS", 1000);
const days = numberEnv("BENCH_DAYS", 20);
const duration = numberEnv("BENCH_SECONDS", 10);
const connections = numberEnv("BENCH_CONNECTIONS", 50);
const rounds = numberEnv("BENCH_ROUNDS", 3);
const slices = numberEnv("BENCH_RATE_SLICES", 10);
const fixedRate = process.env.BENCH_RATE ? numberEnv("BENCH_RATE", 1) : undefined;
const CHUNK = 1_000_000;

interface Side {
  label: string;
  database: BenchDatabase;
  orgs: string[];
  tollgate?: Tollgate;
  max: LoadResult[];
  fixed: LoadResult[];
  cpu: string[];
}

function serverOf(side: Side): Tollgate {
  if (!side.tollgate) throw new Error(`${side.label}: Tollgate is not running`);
  return side.tollgate;
}

await runBenchmark("bench/large-db", 90, async () => {
  const quiet = await waitForQuiet();
  const prepare = async (label: string): Promise<Side> => {
    const database = await createBenchDatabase();
    log(`${label}: database ${database.name}, creating ${orgCount} orgs`);
    const tollgate = await startTollgate({ databaseUrl: database.url, redisUrl });
    const orgs = await createOrgs(tollgate, orgCount, "pay_as_you_go");
    await tollgate.stop();
    // The orgs' billing periods began `days` ago (the anchor is kept while the plan's interval stays).
    await withClient(database.url, (client) =>
      client.query("update subscriptions set anchor_at = anchor_at - make_interval(days => $1::int)", [days]),
    );
    onCleanup(`delete the ${label} orgs' Redis keys`, async () => void (await deleteOrgKeys(orgs)));
    return { label, database, orgs, max: [], fixed: [], cpu: [] };
  };
  const empty = await prepare("empty");
  const loaded = await prepare(`${int(totalEvents)} events`);

  log(`loading ${int(totalEvents)} events for ${orgCount} orgs over ${days} days`);
  const loadStarted = performance.now();
  await withClient(loaded.database.url, async (client) => {
    await client.query("set work_mem = '256MB'");
    const perOrg = Math.ceil(totalEvents / orgCount);
    const spanSeconds = days * 86_400 - 7200; // ends two hours ago: never the hour checks write to
    for (let from = 1; from <= totalEvents; from += CHUNK) {
      const to = Math.min(totalEvents, from + CHUNK - 1);
      await client.query(
        `with o as (
           select org_id, anchor_at, (row_number() over (order by org_id)) - 1 as idx from subscriptions
         ), input as (
           select o.org_id, 'bulk-' || lpad(g::text, 9, '0') as event_id,
             case when g % 2 = 0 then 'kolekts' else 'api_calls' end as meter,
             o.anchor_at + ((g::bigint * 7919) % $3) * interval '1 second' as ts,
             o.anchor_at as period_start
           from generate_series($1::bigint, $2::bigint) g
           join o on o.idx = (g - 1) / $4
         ), inserted as (
           insert into usage_events (org_id, event_id, meter, "timestamp", value, properties, period_start, received_at)
           select org_id, event_id, meter, ts, 1, '{}'::jsonb, period_start, ts from input
           returning org_id, meter, period_start, "timestamp"
         ), rollups as (
           insert into usage_rollups (org_id, meter, period_start, bucket, count, sum, min, max, latest_at, latest_value, sum_value_time)
           select org_id, meter, period_start, date_trunc('hour', "timestamp", 'UTC'), count(*), count(*), 1, 1,
             max("timestamp"), 1, sum(extract(epoch from "timestamp"))
           from inserted group by 1, 2, 3, 4
           on conflict (org_id, meter, period_start, bucket) do update set
             count = usage_rollups.count + excluded.count,
             sum = usage_rollups.sum + excluded.sum,
             min = least(usage_rollups.min, excluded.min),
             max = greatest(usage_rollups.max, excluded.max),
             latest_value = case when usage_rollups.latest_at is null or excluded.latest_at >= usage_rollups.latest_at
               then excluded.latest_value else usage_rollups.latest_value end,
             latest_at = greatest(usage_rollups.latest_at, excluded.latest_at),
             sum_value_time = usage_rollups.sum_value_time + excluded.sum_value_time
         )
         insert into usage_periods (org_id, meter, period_start, quantity)
         select org_id, meter, period_start, count(*) from inserted group by 1, 2, 3
         on conflict (org_id, meter, period_start) do update
           set quantity = usage_periods.quantity + excluded.quantity, updated_at = now()`,
        [from, to, spanSeconds, perOrg],
      );
      const elapsed = (performance.now() - loadStarted) / 1000;
      log(`  ${int(to)} events (${int(to / elapsed)} events/s)`);
    }
  });
  const loadSeconds = (performance.now() - loadStarted) / 1000;
  for (const side of [empty, loaded]) {
    log(`${side.label}: vacuum analyze, checkpoint`);
    await withClient(side.database.url, async (client) => {
      await client.query("vacuum (analyze) usage_events, usage_rollups, usage_periods");
      await client.query("checkpoint").catch((error: Error) => log(`checkpoint skipped: ${error.message}`));
    });
  }
  const sizes = await withClient(loaded.database.url, async (client) => {
    const { rows } = await client.query<{ name: string; rows: string; size: string }>(
      `select relname as name, n_live_tup::text as rows, pg_size_pretty(pg_total_relation_size(relid)) as size
       from pg_stat_user_tables where relname in ('usage_events', 'usage_rollups', 'usage_periods')
       order by relname`,
    );
    return rows;
  });

  for (const side of [empty, loaded]) {
    await deleteOrgKeys(side.orgs);
    side.tollgate = await startTollgate({ databaseUrl: side.database.url, redisUrl });
  }
  const classify = benchClassifier(
    { "tollgate (empty)": empty.tollgate?.pid, "tollgate (loaded)": loaded.tollgate?.pid },
    "tollgate_bench_",
  );
  const run = (side: Side, seconds: number, overallRate?: number) =>
    load({
      url: `${serverOf(side).url}/v1/check`,
      method: "POST",
      headers: operatorHeaders,
      requests: side.orgs.map((org) => ({
        method: "POST" as const,
        path: "/v1/check",
        body: JSON.stringify({ org_id: org, feature: "kolekts", amount: 1 }),
      })),
      connections,
      durationSeconds: seconds,
      ...(overallRate ? { overallRate, rateSlices: slices, keepSamples: true } : {}),
    });
  log("warming up both (counters seeded from Postgres)");
  await run(empty, 5);
  await run(loaded, 5);
  // Alternating which goes first, so that neither always follows the other.
  const order = (round: number) => (round % 2 === 0 ? [empty, loaded] : [loaded, empty]);
  log(`maximum throughput, ${connections} connections, ${duration} s each, ${rounds} rounds`);
  for (let round = 0; round < rounds; round++) {
    for (const side of order(round)) {
      const cpu = sampleCpu(classify);
      side.max.push(await run(side, duration));
      side.cpu.push(formatCpu(cpu.stop()));
    }
    log(
      `  round ${round + 1}: ${int(empty.max[round]?.requestsPerSecond ?? 0)} vs ${int(loaded.max[round]?.requestsPerSecond ?? 0)} req/s`,
    );
  }
  const rate = fixedRate ?? Math.max(1, Math.round(median(empty.max.map((r) => r.requestsPerSecond)) / 2));
  log(`${rate} req/s spread over ${slices} staggered slices, ${rounds} rounds`);
  for (let round = 0; round < rounds; round++) {
    for (const side of order(round)) side.fixed.push(await run(side, duration, rate));
  }
  const used = async (side: Side) => {
    const answer = await serverOf(side).call<{ used: number }>("POST", "/v1/check", {
      org_id: side.orgs[0],
      feature: "kolekts",
      amount: 1,
      consume: false,
    });
    return answer.used;
  };
  const [usedEmpty, usedLoaded] = [await used(empty), await used(loaded)];
  for (const side of [empty, loaded]) await side.tollgate?.stop();

  const [pgVersion, rVersion] = await Promise.all([serverVersion(empty.database.url), redisVersion()]);
  const header = loadHeader("database", "vs empty");
  console.log(
    `\nPOST /v1/check (consume 1 kolekt, ${orgCount} orgs) on an empty database and with ${loaded.label} stored; ` +
      `Postgres ${pgVersion} + Redis ${rVersion}`,
  );
  console.log(`${machine()}; ${connections} connections, ${duration} s per pass; ${quiet}`);
  console.log(
    `Loaded in ${Math.round(loadSeconds)} s; ${sizes.map((s) => `${s.name} ${int(Number(s.rows))} rows, ${s.size}`).join("; ")}.`,
  );
  console.log(
    `The first org's kolekts used this period: ${int(usedEmpty)} (empty), ${int(usedLoaded)} (loaded): checks count the stored events.\n`,
  );
  console.log(`Maximum throughput (${rounds} rounds):\n`);
  console.log(header);
  for (let i = 0; i < rounds; i++) {
    console.log(loadRow(`empty, round ${i + 1}`, empty.max[i] as LoadResult));
    console.log(loadRow(`${loaded.label}, round ${i + 1}`, loaded.max[i] as LoadResult, empty.max[i]));
  }
  console.log("\nCPU used during each pass, in cores:\n");
  for (let i = 0; i < rounds; i++) {
    console.log(`- round ${i + 1}, empty: ${empty.cpu[i]}`);
    console.log(`- round ${i + 1}, loaded: ${loaded.cpu[i]}`);
  }
  console.log(`\nAt ${int(rate)} req/s spread evenly (${slices} staggered autocannon instances):\n`);
  console.log(header);
  for (let i = 0; i < rounds; i++) {
    console.log(loadRow(`empty, round ${i + 1}`, empty.fixed[i] as LoadResult));
    console.log(loadRow(`${loaded.label}, round ${i + 1}`, loaded.fixed[i] as LoadResult, empty.fixed[i]));
  }
  // Latency: every response of the fixed-rate rounds pooled per database (a p99 of one 10 s round
  // rests on a few hundred samples); throughput: the median of the per-round ratios.
  const pooled = (side: Side) => latencyStats(side.fixed.flatMap((r) => r.samples ?? []));
  const e = pooled(empty);
  const l = pooled(loaded);
  const throughput = median(
    empty.max.map((r, i) => (loaded.max[i] as LoadResult).requestsPerSecond / r.requestsPerSecond),
  );
  console.log(`\nAll ${rounds} rounds at ${int(rate)} req/s pooled:\n`);
  console.log("| database | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |");
  console.log("|---|---:|---:|---:|---:|---:|");
  for (const [name, s] of [
    ["empty", e],
    [loaded.label, l],
  ] as const) {
    console.log(`| ${name} | ${ms(s.p50)} | ${ms(s.p90)} | ${ms(s.p99)} | ${ms(s.p999)} | ${ms(s.max)} |`);
  }
  const p50 = l.p50 / e.p50;
  const p99 = l.p99 / e.p99;
  console.log(
    `\nWith ${loaded.label} vs empty: at ${int(rate)} req/s p50 ${p50.toFixed(2)}×, p99 ${p99.toFixed(2)}×; ` +
      `maximum throughput ${throughput.toFixed(2)}× (median of the rounds). ` +
      `Target within 1.2×: ${Math.max(p50, p99, 1 / throughput) <= 1.2 ? "met" : "NOT met"}.`,
  );
});
