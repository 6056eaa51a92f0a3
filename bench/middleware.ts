import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { freePort, type LoadResult, load, root, type Server, spawnServer } from "./harness.js";
import { onCleanup, runBenchmark } from "./lib/cleanup.js";
import { int, loadHeader, loadRow, log, machine, median, numberEnv, waitForQuiet } from "./lib/report.js";

/**
 * What `@tollgate/sdk`'s middleware costs a route, per framework (Hono, Express, Fastify), measured
 * side by side in one run: the same small JSON answered by a bare route and by the same route behind
 * `tollgate(client, { require: ["premium_templates"] })` whose handler tracks one event — the warm
 * path: the key verified within `keyCacheTtlMs`, the boolean from the entitlement cache, the event
 * queued and sent in batches of 1000 — against a real Tollgate on loopback. Target: the gated route
 * serves at least 0.6× the bare route's requests per second.
 *
 * For information, the cold path too: a route with `consume` (the rate) + `quota` (kolekts), one round
 * trip to Tollgate per request (and a tracked event after it).
 *
 * Each app runs in its own process (bench/middleware-server.ts), Tollgate in another (built, embedded
 * storage, the demo catalog with pro's per-minute requests and monthly kolekts raised so the cold path
 * is measured allowed), each framework with an org of its own on pro. Warm-up first, then
 * BENCH_ROUNDS rounds of bare and gated one after the other (the median ratio is the result), then
 * the cold path once. Loopback only; stops by itself.
 *
 * What is measured is the middleware's cost in the app's process. On a small machine the load
 * generator, the app and Tollgate share the cores, and Tollgate ingesting the gated route's tens of
 * thousands of events a second takes about a core (embedded storage: ~50 µs an event) — CPU the app
 * or the load generator would lack, which is not the middleware's cost (Tollgate runs on its own
 * hosts in production). So:
 *
 * - (Linux, `taskset`) the load generator (this process) gets the CPUs but the first to itself, and
 *   the app gets CPU 0, which it shares only with Tollgate at nice BENCH_TOLLGATE_NICE (default 19,
 *   every thread).
 * - The app's SDK talks to Tollgate through a recorder (bench/events-recorder.ts, on the load
 *   generator's CPUs): key verifications and entitlements go to Tollgate and back, and each batch of
 *   events is kept and answered at once as Tollgate answers new events. Once a run is over, the
 *   recorder hands every batch to Tollgate, in order, and Tollgate ingests them before the next run
 *   starts. The app does all of its own work (tracking, serializing, sending, reading the answers),
 *   and Tollgate's ingest happens between runs, not on the app's core during them. At the end every
 *   tracked event must be in Tollgate's usage, counted once.
 * - BENCH_EVENTS=live sends the events to Tollgate itself during the runs, as before 2026-11-25:
 *   Tollgate, deprioritized on the app's core, ingests with what the app leaves and falls behind (the
 *   events wait in the app's queue), and a key verification that it answers late holds the app's
 *   requests behind it. That measures how the machine is shared as much as the middleware.
 *
 * Before each measured run Tollgate is left to go idle (the previous run's events delivered). The
 * cold path, which waits on Tollgate, runs with Tollgate on every CPU at nice 0 (when allowed to raise
 * it back: root); in the recorded mode its requests pass through the recorder too. BENCH_PIN=0 and
 * BENCH_TOLLGATE_NICE=0 measure the machine shared as it comes.
 *
 * Each run also gives the app's CPU per answered request, counted from the start of the load to the
 * delivery of the last event it tracked (the gated route's deliveries included, and a garbage
 * collection at the end): the bare route's over the gated one's is the ratio the app would reach
 * with a core of its own — the middleware's cost, free of how the machine is shared.
 *
 * Run: npm run bench:middleware
 *   (BENCH_SECONDS, BENCH_CONNECTIONS, BENCH_ROUNDS, BENCH_FRAMEWORKS, BENCH_TOLLGATE_NICE, BENCH_PIN;
 *   BENCH_TRANSPORT=fetch sends the SDK's requests through fetch, as in an edge runtime;
 *   BENCH_KEY_TTL_MS sets the app's keyCacheTtlMs (default the SDK's, 500 ms); BENCH_EVENTS=live;
 *   BENCH_PROFILE=<dir> runs each app with --cpu-prof into that directory, for
 *   `npx tsx bench/profile-summary.ts <dir>`)
 */

const duration = numberEnv("BENCH_SECONDS", 10);
const connections = numberEnv("BENCH_CONNECTIONS", 50);
const rounds = numberEnv("BENCH_ROUNDS", 5);
const frameworks = (process.env.BENCH_FRAMEWORKS ?? "hono,express,fastify").split(",").map((f) => f.trim());
const tollgateNice = numberEnv("BENCH_TOLLGATE_NICE", 19, { zero: true });
const pinning = process.env.BENCH_PIN !== "0" && os.cpus().length >= 2 && fs.existsSync("/usr/bin/taskset");
/** CPU 0 for the app (and Tollgate, deprioritized); the rest for the load generator. */
const APP_CPUS = "0";
const OTHER_CPUS = `1-${os.cpus().length - 1}`;
const ALL_CPUS = `0-${os.cpus().length - 1}`;
const OPERATOR_KEY = "bench-operator-key-0123456789abcdef";
const profileDir = process.env.BENCH_PROFILE;
/** How the app's SDK reaches Tollgate: node:http (its default on Node) or fetch (BENCH_TRANSPORT=fetch). */
const transport = process.env.BENCH_TRANSPORT === "fetch" ? "fetch" : "node:http";
/**
 * Where the app's tracked events go during a measured run: to a recorder that answers at once and
 * hands them to Tollgate once the run is over (`recorded`, the default), or to Tollgate itself,
 * deprioritized on the app's core (`live`, BENCH_EVENTS=live).
 */
const eventsMode = process.env.BENCH_EVENTS === "live" ? "live" : "recorded";

/** Node's flags for an app that writes a CPU profile when it stops (BENCH_PROFILE). */
function profileArgs(): string[] {
  if (!profileDir) return [];
  fs.mkdirSync(profileDir, { recursive: true });
  return ["--cpu-prof", "--cpu-prof-dir", path.resolve(profileDir)];
}
const TARGET = 0.6;
/** A run during which other processes used more of the machine than this is measured again. */
const MAX_OTHER_WORK = 0.05;

/** The demo catalog, pro's API requests and kolekts raised out of the way of a 10-second run. */
function benchCatalog(): string {
  const kolekt = fs.readFileSync(path.join(root, "catalogs/kolekt.yaml"), "utf8");
  const pro = kolekt.indexOf("  - key: pro\n");
  const next = kolekt.indexOf("  - key: business\n");
  if (pro < 0 || next < pro) throw new Error("catalogs/kolekt.yaml has no pro plan before business");
  const raised = kolekt
    .slice(pro, next)
    .replace("kolekts: { limit: 100 }", "kolekts: { limit: 1000000000 }")
    .replace("api_requests: { limit: 100, window: 1m }", "api_requests: { limit: 1000000000, window: 1m }");
  if (!raised.includes("1000000000, window")) throw new Error("pro's limits are not where expected");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollgate-bench-catalog-"));
  onCleanup("remove the catalog", async () => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, "catalog.yaml");
  fs.writeFileSync(file, kolekt.slice(0, pro) + raised + kolekt.slice(next));
  return file;
}

async function startTollgate(): Promise<Server> {
  if (!fs.existsSync(path.join(root, "dist/cli.js"))) {
    throw new Error("Tollgate is not built: run `npm run build` first (npm run bench:middleware does)");
  }
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "tollgate-bench-"));
  const server = await spawnServer(
    ["bin/tollgate.js", "start"],
    {
      TOLLGATE_DATA_DIR: dataDir,
      TOLLGATE_LOG_LEVEL: "warn",
      TOLLGATE_ADMIN_KEY: OPERATOR_KEY,
      TOLLGATE_CATALOG: benchCatalog(),
    },
    await freePort(),
  );
  onCleanup("stop tollgate", async () => {
    await server.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });
  return server;
}

/** Sets the nice value of every thread of a process (Linux: threads have their own); false if refused. */
function renice(pid: number | undefined, nice: number): boolean {
  if (pid === undefined) return false;
  const tasks = `/proc/${pid}/task`;
  const ids = fs.existsSync(tasks) ? fs.readdirSync(tasks).map(Number) : [pid];
  let ok = true;
  for (const id of ids) {
    try {
      os.setPriority(id, nice);
    } catch (error) {
      // A thread that just ended is no matter; a refusal (raising priority without root) is.
      if ((error as { code?: string }).code !== "ESRCH") ok = false;
    }
  }
  return ok;
}

/** Pins every thread of a process to these CPUs (threads it starts later inherit it). */
function pin(pid: number | undefined, cpus: string): void {
  if (!pinning || pid === undefined) return;
  const result = spawnSync("taskset", ["-a", "-p", "-c", cpus, String(pid)], { stdio: "ignore" });
  if (result.status !== 0) throw new Error(`taskset could not pin ${pid} to CPUs ${cpus}`);
}

/** CPU seconds a process used so far (Linux). */
function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined || !fs.existsSync(`/proc/${pid}/stat`)) return 0;
  const fields = (fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1] ?? "").split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // clock ticks (USER_HZ)
}

/** CPU ticks of the whole machine so far: busy and total (Linux). */
function machineTicks(): { busy: number; total: number } {
  if (!fs.existsSync("/proc/stat")) return { busy: 0, total: 0 };
  const values = (fs.readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "")
    .trim()
    .split(/\s+/)
    .slice(1)
    .map(Number);
  const total = values.reduce((a, b) => a + b, 0);
  return { busy: total - (values[3] ?? 0) - (values[4] ?? 0), total };
}

/**
 * Runs `fn` and says what share of the machine other work used meanwhile: everything busy but this
 * benchmark's processes (Tollgate, the app, this process with the load generator). On a shared
 * machine a run disturbed by someone's test is measured again rather than kept.
 */
async function measuredAlone<T>(
  pids: (number | undefined)[],
  fn: () => Promise<T>,
): Promise<{ result: T; others: number }> {
  const ours = () => pids.reduce((sum: number, pid) => sum + cpuSeconds(pid) * 100, 0);
  const before = machineTicks();
  const oursBefore = ours();
  const result = await fn();
  const after = machineTicks();
  const total = after.total - before.total;
  const others = total > 0 ? Math.max(0, after.busy - before.busy - (ours() - oursBefore)) / total : 0;
  return { result, others };
}

/** Waits (at most 60 s) until Tollgate is idle: under 5% of a core over half a second. */
async function idle(pid: number | undefined): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const before = cpuSeconds(pid);
    await new Promise((r) => setTimeout(r, 500));
    if ((cpuSeconds(pid) - before) / 0.5 < 0.05 || Date.now() > deadline) return;
  }
}

async function operator<T>(tollgate: Server, method: string, p: string, body?: unknown): Promise<T> {
  const res = await fetch(tollgate.url + p, {
    method,
    headers: { authorization: `Bearer ${OPERATOR_KEY}`, "content-type": "application/json" },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${p} answered ${res.status}: ${text}`);
  return JSON.parse(text) as T;
}

interface Stats {
  sources: Record<string, number>;
  track: Record<string, number>;
  flush?: { pending: number };
}

interface Measured {
  framework: string;
  bare: LoadResult[];
  gated: LoadResult[];
  cold: LoadResult;
  ratios: number[];
  /** The app's CPU per answered request (µs), each round. */
  cpu: { bare: number; gated: number }[];
  stats: Stats;
  /** What Tollgate counted on the gated route's meter once everything was delivered. */
  delivered: number;
}

/** A fresh org on pro with an API key, for one framework's app. */
async function newOrg(tollgate: Server, name: string): Promise<{ org: string; key: string }> {
  const org = await operator<{ id: string }>(tollgate, "POST", "/v1/orgs", { name });
  await operator(tollgate, "POST", `/v1/orgs/${org.id}/subscription`, {
    plan: "pro",
    interval: "month",
    skip_payment: true,
  });
  const { key } = await operator<{ key: string }>(tollgate, "POST", `/v1/orgs/${org.id}/api-keys`, {
    name,
    scopes: ["usage:read"],
  });
  return { org: org.id, key };
}

/** Tollgate's total of a meter for the org this period. */
async function usageOf(tollgate: Server, org: string, meter: string): Promise<number> {
  const usage = await operator<{ series: { value: string }[] }>(
    tollgate,
    "GET",
    `/v1/orgs/${org}/usage?meter=${meter}&granularity=month`,
  );
  return usage.series.reduce((sum, point) => sum + Number(point.value), 0);
}

/**
 * The recorder of the app's events (bench/events-recorder.ts), on the load generator's CPUs, or
 * none when the events go to Tollgate live.
 */
async function startRecorder(tollgate: Server): Promise<Server | undefined> {
  if (eventsMode === "live") return undefined;
  const recorder = await spawnServer(
    ["--import", "tsx", "bench/events-recorder.ts"],
    { TOLLGATE_URL: tollgate.url },
    await freePort(),
  );
  onCleanup("stop the events recorder", () => recorder.stop());
  pin(recorder.pid, OTHER_CPUS);
  return recorder;
}

async function measure(framework: string, tollgate: Server, recorder: Server | undefined): Promise<Measured> {
  const { org, key } = await newOrg(tollgate, `Bench ${framework}`);
  const app = await spawnServer(
    [...profileArgs(), "--expose-gc", "--import", "tsx", "bench/middleware-server.ts"],
    {
      BENCH_FRAMEWORK: framework,
      BENCH_TRANSPORT: transport,
      ...(process.env.BENCH_KEY_TTL_MS ? { BENCH_KEY_TTL_MS: process.env.BENCH_KEY_TTL_MS } : {}),
      TOLLGATE_URL: (recorder ?? tollgate).url,
      TOLLGATE_ADMIN_KEY: OPERATOR_KEY,
    },
    await freePort(),
  );
  const unregister = onCleanup(`stop the ${framework} app`, () => app.stop());
  pin(app.pid, APP_CPUS);
  try {
    const headers = { authorization: `Bearer ${key}` };
    /** Delivers every event the app tracked so far (Tollgate catches up meanwhile). */
    const drain = async (): Promise<Stats> => {
      let stats = (await (await fetch(`${app.url}/flush`)).json()) as Stats;
      for (let i = 0; i < 30 && stats.flush?.pending !== 0; i++) {
        stats = (await (await fetch(`${app.url}/flush`)).json()) as Stats;
      }
      if (stats.flush?.pending !== 0) {
        throw new Error(
          `${framework}: ${stats.flush?.pending} tracked events still undelivered after 31 flushes`,
        );
      }
      return stats;
    };
    /**
     * Hands the recorded events to Tollgate (between runs): each new to Tollgate, none refused. (A
     * duplicate would mean the app sent an event twice: the final count shows whether it counted once.)
     */
    const replay = async (): Promise<void> => {
      if (!recorder) return;
      const res = await fetch(`${recorder.url}/replay`, { method: "POST" });
      const text = await res.text();
      if (!res.ok) throw new Error(`${framework}: the recorder could not replay: ${text}`);
      const replayed = JSON.parse(text) as {
        events: number;
        accepted: number;
        duplicates: number;
        rejected: number;
      };
      if (replayed.rejected > 0 || replayed.accepted + replayed.duplicates !== replayed.events) {
        throw new Error(`${framework}: Tollgate did not take every replayed event: ${text}`);
      }
      if (replayed.duplicates > 0)
        log(`${framework}: ${int(replayed.duplicates)} replayed events were duplicates`);
    };
    /**
     * One measured run, with the app's CPU per answered request (µs): from the start of the load to
     * the delivery of the last event it tracked — the middleware's whole cost, wherever Tollgate's
     * deprioritized answers made the app wait.
     */
    const measured = async (route: string): Promise<{ result: LoadResult; cpuUs: number }> => {
      for (let attempt = 1; ; attempt++) {
        await drain();
        await replay();
        await idle(tollgate.pid);
        const before = cpuSeconds(app.pid);
        const pids = [tollgate.pid, app.pid, process.pid, recorder?.pid];
        const { result, others } = await measuredAlone(pids, async () => {
          const answered = await load({
            url: `${app.url}/${route}`,
            headers,
            connections,
            durationSeconds: duration,
          });
          await drain();
          return answered;
        });
        const cpuUs = ((cpuSeconds(app.pid) - before) * 1e6) / Math.max(1, result.ok);
        if (others <= MAX_OTHER_WORK || attempt >= 5) {
          if (others > MAX_OTHER_WORK)
            log(`WARNING: ${route} kept after ${attempt} tries with ${Math.round(others * 100)}% other work`);
          return { result, cpuUs };
        }
        log(
          `${framework} ${route}: ${Math.round(others * 100)}% of the machine was busy with other work; measuring again`,
        );
        await new Promise((r) => setTimeout(r, 5000));
      }
    };
    const run = async (route: string, seconds = duration): Promise<LoadResult> =>
      seconds !== duration
        ? load({ url: `${app.url}/${route}`, headers, connections, durationSeconds: seconds })
        : (await measured(route)).result;
    // Warm-up: JIT, connections, the key verified and the org's entitlements cached.
    for (const route of ["bare", "gated", "cold", "bare", "gated"]) await run(route, 2);
    const bare: LoadResult[] = [];
    const gated: LoadResult[] = [];
    const ratios: number[] = [];
    const cpu: { bare: number; gated: number }[] = [];
    for (let round = 1; round <= rounds; round++) {
      const { result: b, cpuUs: bareCpu } = await measured("bare");
      const { result: g, cpuUs: gatedCpu } = await measured("gated");
      bare.push(b);
      gated.push(g);
      ratios.push(g.requestsPerSecond / b.requestsPerSecond);
      cpu.push({ bare: bareCpu, gated: gatedCpu });
      log(
        `${framework} round ${round}: bare ${int(b.requestsPerSecond)} req/s (${bareCpu.toFixed(1)} µs CPU each), gated ${int(g.requestsPerSecond)} req/s (${gatedCpu.toFixed(1)} µs): ${(g.requestsPerSecond / b.requestsPerSecond).toFixed(2)}×, by CPU ${(bareCpu / gatedCpu).toFixed(2)}×`,
      );
    }
    // The cold path waits on Tollgate: measured with Tollgate at normal priority when that is allowed.
    const raised = tollgateNice > 0 && renice(tollgate.pid, 0);
    pin(tollgate.pid, ALL_CPUS);
    const cold = await run("cold");
    pin(tollgate.pid, APP_CPUS);
    if (raised) renice(tollgate.pid, tollgateNice);
    log(
      `${framework} cold (Tollgate at nice ${raised || tollgateNice === 0 ? 0 : tollgateNice}): ${int(cold.requestsPerSecond)} req/s`,
    );
    // Every tracked event delivered (Tollgate catches up now that the load stopped), each counted once.
    let stats = (await (await fetch(`${app.url}/stats`)).json()) as Stats;
    log(`${framework}: delivering ${int(stats.track.queued ?? 0)} queued events`);
    for (let i = 0; i < 30; i++) {
      stats = (await (await fetch(`${app.url}/flush`)).json()) as Stats;
      if (stats.flush?.pending === 0) break;
    }
    await replay();
    const delivered = await usageOf(tollgate, org, "api_calls");
    const sent =
      (stats.sources.tollgate ?? 0) + (stats.sources.cache ?? 0) + (stats.sources["fail-open"] ?? 0);
    if (stats.flush?.pending !== 0 || (stats.track.dropped ?? 0) > 0 || delivered !== sent) {
      throw new Error(
        `${framework}: tracked usage not delivered exactly: ${sent} gated answers, ${delivered} counted by Tollgate, ${JSON.stringify(stats)}`,
      );
    }
    return { framework, bare, gated, cold, ratios, cpu, stats, delivered };
  } finally {
    unregister();
    await app.stop();
  }
}

await runBenchmark("bench/middleware.ts", 40, async () => {
  const quiet = await waitForQuiet();
  const tollgate = await startTollgate();
  renice(tollgate.pid, tollgateNice);
  pin(tollgate.pid, APP_CPUS);
  pin(process.pid, OTHER_CPUS);
  log(
    `Tollgate at ${tollgate.url} (embedded), nice ${tollgateNice}; ${pinning ? `the app and Tollgate on CPU ${APP_CPUS}, the load generator on ${OTHER_CPUS}` : "no CPU pinning"}; tracked events ${eventsMode === "live" ? "to Tollgate live" : "recorded, replayed to Tollgate after each run"}; ${quiet}`,
  );

  const results: Measured[] = [];
  const recorder = await startRecorder(tollgate);
  for (const framework of frameworks) results.push(await measure(framework, tollgate, recorder));

  const pick = (list: LoadResult[], ratios: number[]) => {
    // The round whose ratio is the median one.
    const m = median(ratios);
    const i = ratios.indexOf(m);
    return list[Math.max(i, 0)] as LoadResult;
  };
  console.log(
    `\n@tollgate/sdk middleware vs a bare route, ${connections} connections, ${duration} s each, ${rounds} rounds; the SDK over ${transport}; events ${eventsMode === "live" ? "to Tollgate live" : "recorded, replayed after each run"}; Tollgate at nice ${tollgateNice}; ${pinning ? `app and Tollgate on CPU ${APP_CPUS}, load generator on ${OTHER_CPUS}` : "no pinning"}; ${machine()}\n`,
  );
  console.log(
    "| framework | bare req/s | gated (warm) req/s | ratio (median) | each round | app CPU per request, bare → gated | ratio by CPU (median) | cold req/s | cold ratio |",
  );
  console.log("|---|---:|---:|---:|---|---:|---:|---:|---:|");
  for (const r of results) {
    const m = median(r.ratios);
    const bare = median(r.bare.map((x) => x.requestsPerSecond));
    const gated = median(r.gated.map((x) => x.requestsPerSecond));
    const bareCpu = median(r.cpu.map((c) => c.bare));
    const gatedCpu = median(r.cpu.map((c) => c.gated));
    const byCpu = median(r.cpu.map((c) => c.bare / c.gated));
    console.log(
      `| ${r.framework} | ${int(bare)} | ${int(gated)} | **${m.toFixed(2)}×** ${m >= TARGET ? "(≥ 0.6: met)" : "(< 0.6: NOT met)"} | ${r.ratios.map((x) => x.toFixed(2)).join(", ")} | ${bareCpu.toFixed(1)} → ${gatedCpu.toFixed(1)} µs | ${byCpu.toFixed(2)}× | ${int(r.cold.requestsPerSecond)} | ${(r.cold.requestsPerSecond / bare).toFixed(2)}× |`,
    );
  }
  for (const r of results) {
    const i = r.ratios.indexOf(median(r.ratios));
    const bare = r.bare[Math.max(i, 0)] as LoadResult;
    console.log(`\n${r.framework} (the median round, and the cold path):\n`);
    console.log(loadHeader("route", "vs bare"));
    console.log(loadRow("bare", bare));
    console.log(loadRow("gated: require (warm) + track", pick(r.gated, r.ratios), bare));
    console.log(loadRow("cold: consume + quota (1 round trip)", r.cold, bare));
    const { sources, track } = r.stats;
    console.log(
      `\ngated answers by source: ${Object.entries(sources)
        .map(([k, v]) => `${k} ${int(v)}`)
        .join(
          ", ",
        )}; tracked ${int(track.tracked ?? 0)} events in ${int(track.requests ?? 0)} requests (accepted ${int(track.accepted ?? 0)}, dropped ${int(track.dropped ?? 0)}, queued ${int(track.queued ?? 0)})`,
    );
  }
  const failed = results.filter((r) => median(r.ratios) < TARGET).map((r) => r.framework);
  if (failed.length > 0) console.log(`\nBelow ${TARGET}×: ${failed.join(", ")}`);
});
