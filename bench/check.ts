import { type LoadResult, load, spawnBaseline } from "./harness.js";
import { onCleanup, runBenchmark } from "./lib/cleanup.js";
import { benchClassifier, formatCpu, sampleCpu } from "./lib/cpu.js";
import { serverVersion, withClient } from "./lib/postgres.js";
import { redisVersion } from "./lib/redis.js";
import {
  int,
  LOAD_HEADER,
  loadRow,
  log,
  machine,
  median,
  ms,
  numberEnv,
  waitForQuiet,
} from "./lib/report.js";
import { operatorHeaders, tollgateWithOrgs } from "./lib/tollgate.js";

/**
 * `POST /v1/check` with consume, Postgres + Redis mode, against a minimal node:http server answering
 * the same JSON — same autocannon settings, same run, one after the other:
 *
 * 1. as fast as possible: Tollgate's throughput as a ratio of the baseline's (target ≥ 0.5×);
 * 2. at half of Tollgate's measured maximum: latency (target p99 < 10 ms). autocannon paces a rate
 *    in per-second bursts (each connection sends its share back to back, then waits for the next
 *    second), so the rate is run twice: as autocannon does it, and spread evenly over each second
 *    (staggered autocannon instances, `rateSlices`).
 *
 * Checks spread over BENCH_ORGS orgs on the kolekt catalog's pay_as_you_go plan (unlimited kolekts:
 * the quota never runs out), one kolekt each. Every allowed check is committed to Postgres before
 * its answer; the run ends by comparing the committed usage with the allowed answers.
 *
 * Maximum throughput is measured in BENCH_ROUNDS rounds (baseline, then Tollgate) and the median
 * ratio reported, so that other work on the machine skews one round rather than the result; the CPU
 * each process used during each pass is printed with it.
 *
 * Run: npm run bench:check   (DATABASE_URL, REDIS_URL, BENCH_SECONDS, BENCH_CONNECTIONS, BENCH_ORGS,
 *      BENCH_ROUNDS, BENCH_RATE_SLICES, BENCH_QUIET_WAIT, BENCH_PROFILE=<dir> to profile the server
 *      with --cpu-prof, then `npx tsx bench/profile-summary.ts <dir>`; BENCH_DRY_RUN=1 for checks that
 *      only ask — nothing to commit; TOLLGATE_CHECK_ACK=journal|commit for the server's ack mode;
 *      BENCH_NODE_ARGS="--perf-basic-prof" passes flags to the server's node, e.g. to read a
 *      `perf record` of its workers: docs/benchmarks.md)
 */
const duration = numberEnv("BENCH_SECONDS", 10);
const connections = numberEnv("BENCH_CONNECTIONS", 50);
const orgCount = numberEnv("BENCH_ORGS", 100);
const slices = numberEnv("BENCH_RATE_SLICES", 10);
const rounds = numberEnv("BENCH_ROUNDS", 3);
const profileDir = process.env.BENCH_PROFILE || undefined;
/** Checks that only ask (`consume: false`): the path without the commit, to see what the commit costs. */
const dryRun = process.env.BENCH_DRY_RUN === "1";

await runBenchmark("bench/check", 20, async () => {
  const quiet = await waitForQuiet();
  const { database, tollgate, orgs } = await tollgateWithOrgs(orgCount, profileDir);

  const bodyOf = (org: string) =>
    JSON.stringify({
      org_id: org,
      feature: "kolekts",
      amount: 1,
      ...(dryRun ? { consume: false } : {}),
    });
  const requests = orgs.map((org) => ({ method: "POST" as const, path: "/v1/check", body: bodyOf(org) }));
  // The baseline answers exactly what Tollgate answers (one real answer, taken now).
  const sample = await tollgate.text("POST", "/v1/check", JSON.parse(bodyOf(orgs[0] as string)));
  const answer = JSON.parse(sample) as { allowed: boolean };
  if (!answer.allowed) throw new Error(`the sample check was denied: ${sample}`);
  const baseline = await spawnBaseline(sample);
  onCleanup("stop baseline", baseline.stop);

  const target = (url: string) => ({
    url: `${url}/v1/check`,
    method: "POST" as const,
    headers: operatorHeaders,
    requests,
    connections,
  });
  // The sample consumed one; checks still in flight when a pass stops may be committed unanswered.
  // Checks that only ask consume nothing.
  let allowedByTollgate = dryRun ? 0 : 1;
  let sentToTollgate = allowedByTollgate;
  const ours = async (options: { durationSeconds: number; overallRate?: number; rateSlices?: number }) => {
    const result = await load({ ...target(tollgate.url), ...options });
    if (!dryRun) {
      allowedByTollgate += result.ok;
      sentToTollgate += result.sent;
    }
    return result;
  };
  const theirs = (options: { durationSeconds: number; overallRate?: number; rateSlices?: number }) =>
    load({ ...target(baseline.url), ...options });

  try {
    log("warming up (JIT, connection pools, counters seeded in Redis)");
    await theirs({ durationSeconds: 3 });
    await ours({ durationSeconds: 5 });

    log(`maximum throughput, ${connections} connections, ${duration} s each, ${rounds} rounds`);
    const maxRounds: { base: LoadResult; ours: LoadResult; cpuBase: string; cpuOurs: string }[] = [];
    const classify = benchClassifier({ tollgate: tollgate.pid, baseline: baseline.pid }, database.name);
    for (let round = 0; round < rounds; round++) {
      let cpu = sampleCpu(classify);
      const base = await theirs({ durationSeconds: duration });
      const cpuBase = formatCpu(cpu.stop());
      cpu = sampleCpu(classify);
      const oursMax = await ours({ durationSeconds: duration });
      const cpuOurs = formatCpu(cpu.stop());
      maxRounds.push({ base, ours: oursMax, cpuBase, cpuOurs });
      log(`  round ${round + 1}: ${int(base.requestsPerSecond)} vs ${int(oursMax.requestsPerSecond)} req/s`);
    }
    const ratios = maxRounds.map((r) => r.ours.requestsPerSecond / r.base.requestsPerSecond);
    const ourMaxRps = median(maxRounds.map((r) => r.ours.requestsPerSecond));
    const half = Math.max(1, Math.round(ourMaxRps / 2));

    log(`${half} req/s (half of Tollgate's maximum), autocannon's pacing`);
    const baseHalf = await theirs({ durationSeconds: duration, overallRate: half });
    const ourHalf = await ours({ durationSeconds: duration, overallRate: half });
    log(`${half} req/s spread over ${slices} staggered slices`);
    const baseEven = await theirs({ durationSeconds: duration, overallRate: half, rateSlices: slices });
    const ourEven = await ours({ durationSeconds: duration, overallRate: half, rateSlices: slices });

    // Every allowed check must have been committed to Postgres before it was answered.
    const committed = await withClient(database.url, async (client) => {
      const { rows } = await client.query<{ total: string | null }>(
        "select sum(quantity)::text as total from usage_periods where meter = 'kolekts'",
      );
      return Number(rows[0]?.total ?? 0);
    });

    const [pgVersion, rVersion] = await Promise.all([serverVersion(database.url), redisVersion()]);
    console.log(
      `\nPOST /v1/check (${dryRun ? "ask about" : "consume"} 1 kolekt, ${orgs.length} orgs), Postgres ${pgVersion} + Redis ${rVersion}`,
    );
    console.log(`${machine()}; ${connections} connections, ${duration} s per pass; ${quiet}\n`);
    console.log(`Maximum throughput (${rounds} rounds, baseline then Tollgate in each):\n`);
    console.log(LOAD_HEADER);
    maxRounds.forEach((r, i) => {
      console.log(loadRow(`node:http baseline, round ${i + 1}`, r.base));
      console.log(loadRow(`Tollgate, round ${i + 1}`, r.ours, r.base));
    });
    console.log("\nCPU used during each pass, in cores:\n");
    maxRounds.forEach((r, i) => {
      console.log(`- round ${i + 1}, baseline: ${r.cpuBase}`);
      console.log(`- round ${i + 1}, Tollgate: ${r.cpuOurs}`);
    });
    console.log(`\nAt ${int(half)} req/s (half of Tollgate's maximum), autocannon's per-second pacing:\n`);
    console.log(LOAD_HEADER);
    console.log(loadRow("node:http baseline", baseHalf));
    console.log(loadRow("Tollgate", ourHalf, baseHalf));
    console.log(`\nAt ${int(half)} req/s spread evenly (${slices} staggered autocannon instances):\n`);
    console.log(LOAD_HEADER);
    console.log(loadRow("node:http baseline", baseEven));
    console.log(loadRow("Tollgate", ourEven, baseEven));
    const ratio = median(ratios);
    const worstP99 = Math.max(ourHalf.latency.p99, ourEven.latency.p99);
    console.log(
      `\nThroughput ${ratio.toFixed(2)}× the baseline (median of ${ratios.map((r) => r.toFixed(2)).join(", ")}; target ≥ 0.5×: ${ratio >= 0.5 ? "met" : "NOT met"}); ` +
        `p99 at half load ${ms(ourHalf.latency.p99)} ms paced by autocannon, ${ms(ourEven.latency.p99)} ms spread ` +
        `(target < 10 ms: ${worstP99 < 10 ? "met" : "NOT met"}).`,
    );
    const complete = committed >= allowedByTollgate && committed <= sentToTollgate;
    console.log(
      `Usage committed to Postgres: ${int(committed)} kolekts for ${int(allowedByTollgate)} allowed checks ` +
        `(${int(sentToTollgate)} sent)${complete ? "" : " — MISMATCH: acknowledged usage is missing"}.`,
    );
    if (!complete) process.exitCode = 1;
  } finally {
    await baseline.stop();
    await tollgate.stop();
  }
});
