import { execFile } from "node:child_process";
import http from "node:http";
import path from "node:path";
import { promisify } from "node:util";
import { Redis } from "ioredis";
import { createRequestListener } from "../src/listener.js";
import {
  checkInputOf,
  checkResponseOf,
  quickSingleCheck,
  runRouteCheck,
} from "../src/modules/metering/check-http.js";
import { ADMIN_KEY, createTestApp } from "../test/support/app.js";
import { onCleanup, runBenchmark } from "./lib/cleanup.js";
import { log, machine, median, numberEnv } from "./lib/report.js";

/**
 * Where a consuming check's CPU goes, in CPU time rather than throughput — so it can be read on a
 * busy machine and compared between two builds: microseconds of CPU per check (`process.cpuUsage`,
 * every thread of the process, user and system), with the load generator in a child process so
 * that its own CPU is not counted.
 *
 * 1. **engine**: `runRouteCheck` called directly by 50 concurrent loops — the check without HTTP
 *    (plan, validation, the batched Lua call, the journal, the answer's JSON);
 * 2. **baseline**: a minimal node:http server answering the same JSON, loaded by autocannon;
 * 3. **Tollgate over HTTP**: the server's own request listener (the node:http fast path), the same load.
 *
 * And Redis's side: microseconds inside the apply script per check (Redis's `INFO commandstats`).
 * 2 − 1 − 3 is what the HTTP layer costs beyond the baseline's. Runs the app in-process on a fresh
 * test database, with Redis and `TOLLGATE_CHECK_ACK` (default journal).
 *
 * Run: npx tsx bench/check-cpu.ts   (DATABASE_URL: admin connection; REDIS_URL; BENCH_SECONDS,
 *      BENCH_ROUNDS; TOLLGATE_CHECK_ACK=journal|commit)
 */
const seconds = numberEnv("BENCH_SECONDS", 4);
const rounds = numberEnv("BENCH_ROUNDS", 3);
const connections = 50;
const orgCount = 100;
const run = promisify(execFile);
const autocannonBin = path.resolve(import.meta.dirname, "../node_modules/.bin/autocannon");

/** Microseconds of CPU per unit of work while `work` runs. */
async function cpuPer(
  work: () => Promise<number>,
): Promise<{ total: number; user: number; system: number; n: number }> {
  const before = process.cpuUsage();
  const n = await work();
  const used = process.cpuUsage(before);
  return { total: (used.user + used.system) / n, user: used.user / n, system: used.system / n, n };
}

/** Loads a server with autocannon in a child process; the number of 2xx answers. */
async function loadServer(server: http.Server, bodies: string[]): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const { port } = server.address() as { port: number };
  try {
    const args = ["-c", String(connections), "-d", String(seconds), "-j", "-m", "POST"];
    args.push("-H", `authorization=Bearer ${ADMIN_KEY}`, "-H", "content-type=application/json");
    // autocannon's CLI takes one body: the orgs are spread by the engine pass; here one org is enough
    // for the cost per request (the counters are per org, the work is not).
    args.push("-b", bodies[0] as string, `http://127.0.0.1:${port}/v1/check`);
    const { stdout } = await run(autocannonBin, args, { maxBuffer: 1e8 });
    const result = JSON.parse(stdout) as { requests: { total: number }; non2xx: number; errors: number };
    if (result.non2xx > 0 || result.errors > 0)
      throw new Error(`${result.non2xx} non-2xx, ${result.errors} errors`);
    return result.requests.total;
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

async function scriptStats(redis: Redis): Promise<{ calls: number; usec: number }> {
  const info = await redis.info("commandstats");
  const match = /cmdstat_evalsha:calls=(\d+),usec=(\d+)/.exec(info);
  return { calls: Number(match?.[1] ?? 0), usec: Number(match?.[2] ?? 0) };
}

await runBenchmark("bench/check-cpu", 10, async () => {
  const redisUrl = process.env.REDIS_URL;
  if (!redisUrl) throw new Error("REDIS_URL is required (the check's Redis mode is what is measured)");
  const ack = process.env.TOLLGATE_CHECK_ACK ?? "journal";
  const t = await createTestApp({
    database: "postgres",
    redis: true,
    env: {
      TOLLGATE_CATALOG: path.resolve(import.meta.dirname, "../catalogs/kolekt.yaml"),
      TOLLGATE_CHECK_ACK: ack,
      TOLLGATE_LOG_LEVEL: "warn",
    },
  });
  onCleanup("close the app and drop its database", () => t.close());
  const redis = new Redis(redisUrl);
  onCleanup("disconnect from Redis", async () => redis.disconnect());
  {
    const orgs: string[] = [];
    for (let i = 0; i < orgCount; i++) {
      const res = await t.call("POST", "/v1/orgs", { auth: "operator", body: { name: `Bench org ${i}` } });
      const org = (res.body as { id: string }).id;
      await t.call("POST", `/v1/orgs/${org}/subscription`, {
        auth: "operator",
        body: { plan: "pay_as_you_go", skip_payment: true },
      });
      orgs.push(org);
    }
    const bodies = orgs.map((org) => JSON.stringify({ org_id: org, feature: "kolekts", amount: 1 }));
    const sample = await t.call("POST", "/v1/check", {
      auth: "operator",
      body: JSON.parse(bodies[0] as string),
    });
    const answerText = sample.text;

    // The engine, as the fast path runs it after reading the body.
    const engineCheck = async (i: number) => {
      const valid = quickSingleCheck(JSON.parse(bodies[i % bodies.length] as string));
      if (!valid) throw new Error("the benchmark's body is not a plain check");
      const { input, single } = checkInputOf(valid);
      const answer = await runRouteCheck(t.deps, input);
      if (!answer.allowed) throw new Error("a check was denied");
      return JSON.stringify(checkResponseOf(answer, single).json);
    };
    const engine = async () => {
      let n = 0;
      const until = performance.now() + seconds * 1000;
      const loop = async (offset: number) => {
        while (performance.now() < until) {
          await engineCheck(n + offset);
          n++;
        }
      };
      await Promise.all(Array.from({ length: connections }, (_, i) => loop(i)));
      return n;
    };
    const baseline = () =>
      loadServer(
        http.createServer((req, res) => {
          req.resume();
          req.on("end", () => {
            res.writeHead(200, {
              "content-type": "application/json",
              "content-length": Buffer.byteLength(answerText),
            });
            res.end(answerText);
          });
        }),
        bodies,
      );
    const tollgate = () => loadServer(http.createServer(createRequestListener(t.deps, t.app)), bodies);

    // Warm-up (JIT), not reported.
    await cpuPer(engine);
    await cpuPer(tollgate);

    const results: Record<"engine" | "baseline" | "tollgate" | "redis", number[]> = {
      engine: [],
      baseline: [],
      tollgate: [],
      redis: [],
    };
    for (let round = 0; round < rounds; round++) {
      const before = await scriptStats(redis);
      const e = await cpuPer(engine);
      const after = await scriptStats(redis);
      const b = await cpuPer(baseline);
      const h = await cpuPer(tollgate);
      const perInvocation = after.calls - before.calls > 0 ? e.n / (after.calls - before.calls) : 0;
      results.engine.push(e.total);
      results.baseline.push(b.total);
      results.tollgate.push(h.total);
      results.redis.push((after.usec - before.usec) / e.n);
      log(
        `round ${round + 1}: engine ${e.total.toFixed(1)} µs/check (user ${e.user.toFixed(1)}, ${Math.round(perInvocation)} checks per script call, ` +
          `Redis ${((after.usec - before.usec) / e.n).toFixed(1)} µs/check); baseline ${b.total.toFixed(1)} µs/request (${Math.round(b.n / seconds)}/s); ` +
          `Tollgate over HTTP ${h.total.toFixed(1)} µs/check (user ${h.user.toFixed(1)}, system ${h.system.toFixed(1)}; ${Math.round(h.n / seconds)}/s)`,
      );
    }
    const m = (k: keyof typeof results) => median(results[k]);
    console.log(
      `\n## CPU per consuming check (${machine()}, TOLLGATE_CHECK_ACK=${ack}, median of ${rounds} rounds)\n`,
    );
    console.log("| part | µs of CPU |\n|---|---:|");
    console.log(`| node:http baseline, per request | ${m("baseline").toFixed(1)} |`);
    console.log(`| Tollgate over HTTP, per check (server process) | ${m("tollgate").toFixed(1)} |`);
    console.log(`| of which the engine (runRouteCheck and the answer's JSON) | ${m("engine").toFixed(1)} |`);
    console.log(
      `| of which HTTP beyond the baseline's | ${(m("tollgate") - m("baseline") - m("engine")).toFixed(1)} |`,
    );
    console.log(`| Redis, inside the apply script, per check | ${m("redis").toFixed(1)} |`);
  }
});
