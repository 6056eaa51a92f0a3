import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Hono } from "hono";
import { tollgate as honoGate } from "../packages/sdk/src/hono.js";
import { Tollgate } from "../packages/sdk/src/index.js";
import { freePort, spawnServer } from "./harness.js";
import { onCleanup, runBenchmark } from "./lib/cleanup.js";
import { log, machine, median, numberEnv } from "./lib/report.js";

/**
 * What the SDK's own requests cost the application's CPU, through `node:http` (its default on Node)
 * and through `fetch` (edge runtimes, or a `fetch` given in the options), side by side in one run,
 * the two alternating round after round:
 *
 * 1. Delivery: BENCH_EVENTS events (default 200,000) tracked, then flushed in batches of 1,000 to a
 *    stand-in on the other CPU that accepts every batch at once; the app's CPU per event, from the
 *    flush to the last answer (and a garbage collection).
 * 2. A gated Hono route in process (`app.request()`, 50 in flight): `require` of a boolean and a
 *    `track()` per request, against a real Tollgate (built, embedded storage) on the other CPU; the
 *    app's CPU per request over the same app's bare route, the events' delivery included.
 *
 * Linux pins the app to CPU 0 and the rest to the others. Loopback only; stops by itself.
 *
 * Run: npm run bench:sdk-transport
 *   (BENCH_ROUNDS, default 5; BENCH_EVENTS; BENCH_REQUESTS per route and round, default 200,000)
 */

const rounds = numberEnv("BENCH_ROUNDS", 5);
const events = numberEnv("BENCH_EVENTS", 200_000);
const requests = numberEnv("BENCH_REQUESTS", 200_000);
const OPERATOR_KEY = "bench-operator-key-0123456789abcdef";
const transports = ["node:http", "fetch"] as const;
type Transport = (typeof transports)[number];
const pinning = os.cpus().length >= 2 && fs.existsSync("/usr/bin/taskset");
const OTHER_CPUS = `1-${os.cpus().length - 1}`;

function pin(pid: number | undefined, cpus: string): void {
  if (pinning && pid !== undefined)
    spawnSync("taskset", ["-a", "-p", "-c", cpus, String(pid)], { stdio: "ignore" });
}

const collect = () => (globalThis as { gc?: () => void }).gc?.();
const cpuMicros = (since: NodeJS.CpuUsage) => {
  const used = process.cpuUsage(since);
  return used.user + used.system;
};

function clientOf(transport: Transport, baseUrl: string, flushIntervalMs: number): Tollgate {
  return new Tollgate({
    baseUrl,
    apiKey: OPERATOR_KEY,
    track: { batchSize: 1000, maxQueue: 10_000_000, flushIntervalMs, onError: () => {} },
    ...(transport === "fetch" ? { fetch: (input, init) => fetch(input, init) } : {}),
  });
}

/** A server that takes every events batch at once (`node -e`, its own process). */
async function startStandIn(): Promise<string> {
  const port = await freePort();
  const script = `
    require("node:http").createServer((req, res) => {
      let n = 0;
      req.on("data", (c) => { n += c.length; });
      req.on("end", () => {
        res.writeHead(202, { "content-type": "application/json" });
        res.end(JSON.stringify({ accepted: 1000, duplicates: 0, rejected: [] }));
      });
    }).listen(${port}, "127.0.0.1", () => console.log("up"));`;
  const child = spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "inherit"] });
  onCleanup("stop the stand-in", async () => void child.kill());
  await new Promise((resolve) => child.stdout.once("data", resolve));
  pin(child.pid, OTHER_CPUS);
  return `http://127.0.0.1:${port}`;
}

async function delivery(transport: Transport, baseUrl: string): Promise<number> {
  const client = clientOf(transport, baseUrl, 3_600_000);
  for (let i = 0; i < events; i++) {
    client.track({ orgId: "org_bench", meter: "api_calls", properties: { route: "/format" } });
  }
  collect();
  const started = process.cpuUsage();
  const { pending } = await client.flush();
  collect();
  const micros = cpuMicros(started);
  if (pending !== 0) throw new Error(`${pending} events not delivered`);
  await client.shutdown();
  return micros / events;
}

async function startTollgate(): Promise<{ url: string; key: string }> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "tollgate-bench-"));
  const server = await spawnServer(
    ["bin/tollgate.js", "start"],
    { TOLLGATE_DATA_DIR: dataDir, TOLLGATE_LOG_LEVEL: "warn", TOLLGATE_ADMIN_KEY: OPERATOR_KEY },
    await freePort(),
  );
  onCleanup("stop tollgate", async () => {
    await server.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });
  pin(server.pid, OTHER_CPUS);
  const call = async <T>(p: string, body: unknown): Promise<T> => {
    const res = await fetch(server.url + p, {
      method: "POST",
      headers: { authorization: `Bearer ${OPERATOR_KEY}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!res.ok) throw new Error(`POST ${p} answered ${res.status}: ${await res.text()}`);
    return (await res.json()) as T;
  };
  const org = await call<{ id: string }>("/v1/orgs", { name: "Bench transport" });
  await call(`/v1/orgs/${org.id}/subscription`, { plan: "pro", interval: "month", skip_payment: true });
  const { key } = await call<{ key: string }>(`/v1/orgs/${org.id}/api-keys`, {
    name: "bench",
    scopes: ["usage:read"],
  });
  return { url: server.url, key };
}

function appOf(client: Tollgate): Hono {
  const body = { status: "ok", template: "numbered", posts: 3 };
  const app = new Hono();
  app.get("/bare", (c) => c.json(body));
  app.get("/gated", honoGate(client, { require: ["premium_templates"] }), (c) => {
    client.track({ orgId: c.get("tollgate").orgId, meter: "api_calls" });
    return c.json(body);
  });
  return app;
}

/** The app's CPU per request on a route, 50 in flight, the events delivered before the clock stops. */
async function perRequest(
  app: Hono,
  client: Tollgate,
  route: string,
  key: string,
  n: number,
): Promise<number> {
  const headers = { authorization: `Bearer ${key}` };
  let sent = 0;
  const worker = async () => {
    while (sent++ < n) await (await app.request(route, { headers })).text();
  };
  collect();
  const started = process.cpuUsage();
  await Promise.all(Array.from({ length: 50 }, worker));
  const { pending } = await client.flush();
  collect();
  if (pending !== 0) throw new Error(`${pending} events not delivered`);
  return cpuMicros(started) / n;
}

await runBenchmark("bench/sdk-transport.ts", 20, async () => {
  pin(process.pid, "0");
  const standIn = await startStandIn();
  const tollgate = await startTollgate();
  const apps = Object.fromEntries(
    transports.map((t) => {
      const client = clientOf(t, tollgate.url, 1000);
      return [t, { client, app: appOf(client) }];
    }),
  ) as Record<Transport, { client: Tollgate; app: Hono }>;
  for (const t of transports) {
    // Warm-up: the JIT, the key's verdict and the entitlements in the cache.
    await delivery(t, standIn);
    await perRequest(apps[t].app, apps[t].client, "/bare", tollgate.key, 20_000);
    await perRequest(apps[t].app, apps[t].client, "/gated", tollgate.key, 20_000);
  }
  const results: Record<Transport, { event: number[]; overhead: number[] }> = {
    "node:http": { event: [], overhead: [] },
    fetch: { event: [], overhead: [] },
  };
  for (let round = 1; round <= rounds; round++) {
    for (const t of round % 2 ? transports : [...transports].reverse()) {
      const event = await delivery(t, standIn);
      const { app, client } = apps[t];
      const bare = await perRequest(app, client, "/bare", tollgate.key, requests);
      const gated = await perRequest(app, client, "/gated", tollgate.key, requests);
      results[t].event.push(event);
      results[t].overhead.push(gated - bare);
      log(
        `round ${round}, ${t}: ${event.toFixed(2)} µs per delivered event; bare ${bare.toFixed(1)} µs, gated ${gated.toFixed(1)} µs per request (+${(gated - bare).toFixed(1)})`,
      );
    }
  }
  const list = (values: number[]) => values.map((v) => v.toFixed(1)).join(", ");
  console.log(
    `\n@tollgate/sdk's transport, ${rounds} rounds; the app on CPU 0, the stand-in and Tollgate on ${OTHER_CPUS}; ${machine()}\n`,
  );
  console.log(
    "| transport | app CPU per delivered event (median; each round) | gated Hono route over bare, µs per request (median; each round) |",
  );
  console.log("|---|---:|---:|");
  for (const t of transports) {
    const { event, overhead } = results[t];
    console.log(
      `| ${t} | ${median(event).toFixed(2)} µs (${event.map((v) => v.toFixed(2)).join(", ")}) | ${median(overhead).toFixed(1)} µs (${list(overhead)}) |`,
    );
  }
});
