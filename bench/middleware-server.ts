import type { AddressInfo } from "node:net";
import { serve } from "@hono/node-server";
import express from "express";
import Fastify from "fastify";
import { Hono } from "hono";
import { tollgate as expressGate } from "../packages/sdk/src/express.js";
import { tollgate as fastifyGate } from "../packages/sdk/src/fastify.js";
import type { GateContext } from "../packages/sdk/src/gate.js";
import { tollgate as honoGate } from "../packages/sdk/src/hono.js";
import { Tollgate } from "../packages/sdk/src/index.js";

/**
 * One framework's app for bench/middleware.ts (BENCH_FRAMEWORK: hono, express or fastify), in its own
 * process, with the same small JSON answered by three routes:
 *
 * - `GET /bare`: the route alone;
 * - `GET /gated`: behind `tollgate(client, { require: ["premium_templates"] })` — the warm path: the
 *   key verified within `keyCacheTtlMs`, the boolean from the entitlement cache — and metered: the
 *   handler tracks an `api_calls` event (queued, sent in batches);
 * - `GET /cold`: behind `consume` (the rate) + `quota` (kolekts): one round trip to Tollgate per
 *   request, and a `track()` after it.
 *
 * `GET /healthz` answers for the harness, `GET /stats` with what the gate and the tracker did,
 * `GET /flush` the same once every tracked event was delivered.
 */

const framework = process.env.BENCH_FRAMEWORK ?? "hono";
const port = Number(process.env.PORT);
const client = new Tollgate({
  baseUrl: process.env.TOLLGATE_URL as string,
  apiKey: process.env.TOLLGATE_ADMIN_KEY as string,
  // Tollgate may be deprioritized during the run (bench/middleware.ts): events then wait here and are
  // delivered when the load stops, none dropped.
  track: { batchSize: 1000, maxQueue: 10_000_000, onError: () => {} },
  ...(process.env.BENCH_KEY_TTL_MS ? { keyCacheTtlMs: Number(process.env.BENCH_KEY_TTL_MS) } : {}),
  // BENCH_TRANSPORT=fetch: the SDK's requests through fetch, as in edge runtimes, not node:http.
  ...(process.env.BENCH_TRANSPORT === "fetch" ? { fetch: (input, init) => fetch(input, init) } : {}),
});

const BODY = { status: "ok", template: "numbered", posts: 3 };
const sources: Record<string, number> = { tollgate: 0, cache: 0, "fail-open": 0 };

const warm = { require: ["premium_templates"] };
const cold = {
  consume: [{ feature: "api_requests" }],
  quota: [{ feature: "kolekts", meter: "kolekts" }],
};

/** The gated handler's work: count where the answer came from, meter the call. */
function gated(gate: GateContext): typeof BODY {
  sources[gate.source] = (sources[gate.source] ?? 0) + 1;
  client.track({ orgId: gate.orgId, meter: "api_calls" });
  return BODY;
}

const stats = () => ({ sources, track: client.stats });
/**
 * Delivers everything tracked so far, then the counters. With --expose-gc (bench/middleware.ts),
 * collects the garbage too: the run's own, counted in its CPU rather than in the next run's.
 */
const flushed = async () => {
  const flush = await client.flush();
  (globalThis as { gc?: () => void }).gc?.();
  return { flush, ...stats() };
};

async function start(): Promise<{ close(): Promise<void> }> {
  if (framework === "hono") {
    const app = new Hono();
    app.get("/healthz", (c) => c.json({ status: "ok" }));
    app.get("/stats", (c) => c.json(stats()));
    app.get("/flush", async (c) => c.json(await flushed()));
    app.get("/bare", (c) => c.json(BODY));
    app.get("/gated", honoGate(client, warm), (c) => c.json(gated(c.get("tollgate"))));
    app.get("/cold", honoGate(client, cold), (c) => c.json(BODY));
    const server = serve({ fetch: app.fetch, port, hostname: "127.0.0.1" });
    return { close: () => new Promise((resolve) => server.close(() => resolve())) };
  }
  if (framework === "express") {
    const app = express();
    app.set("etag", false);
    app.get("/healthz", (_req, res) => void res.json({ status: "ok" }));
    app.get("/stats", (_req, res) => void res.json(stats()));
    app.get("/flush", (_req, res) => void flushed().then((body) => res.json(body)));
    app.get("/bare", (_req, res) => void res.json(BODY));
    app.get("/gated", expressGate(client, warm), (_req, res) => void res.json(gated(res.locals.tollgate)));
    app.get("/cold", expressGate(client, cold), (_req, res) => void res.json(BODY));
    const server = app.listen(port, "127.0.0.1");
    return {
      close: () =>
        new Promise((resolve) => {
          server.closeAllConnections();
          server.close(() => resolve());
        }),
    };
  }
  if (framework === "fastify") {
    const app = Fastify();
    app.get("/healthz", async () => ({ status: "ok" }));
    app.get("/stats", async () => stats());
    app.get("/flush", async () => flushed());
    app.get("/bare", async () => BODY);
    app.get("/gated", { preHandler: fastifyGate(client, warm) }, async (request) => gated(request.tollgate));
    app.get("/cold", { preHandler: fastifyGate(client, cold) }, async () => BODY);
    await app.listen({ port, host: "127.0.0.1" });
    const { port: bound } = app.server.address() as AddressInfo;
    if (bound !== port) throw new Error(`fastify listens on ${bound}, not ${port}`);
    return { close: () => app.close() };
  }
  throw new Error(`BENCH_FRAMEWORK must be hono, express or fastify, not ${framework}`);
}

const app = await start();
process.once("SIGTERM", async () => {
  await app.close();
  await client.shutdown();
  process.exit(0);
});
