import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { generateKey } from "../../../src/modules/api-keys/format.js";
import {
  FaultProxy,
  freePort,
  killAllTollgates,
  startTollgate,
  type TollgateProcess,
} from "../../../test/support/tollgate-process.js";
import type { GateContext, GateOptions } from "../src/gate.js";
import { Tollgate, type TollgateOptions, type TrackProblem } from "../src/index.js";
import {
  ADMIN_KEY,
  operatorHelpers,
  recordingFetch,
  SECRET,
  type Storage,
  sleep,
  storageModes,
  until,
} from "./support.js";

/**
 * The middleware of one framework against a real Tollgate child process (`tollgate start`), in each
 * storage mode: middleware-hono/express/fastify.test.ts run this suite with their framework's app.
 * The catalog is the bundled demo (Kolekt): free has 10 kolekts a month, 10 API requests a minute
 * and no premium templates; pro has 100 of each a month/minute, and premium templates.
 */

/** What a test route answers: the gate's context as the handler saw it, or a failure on demand. */
export type RouteHandler = (gate: GateContext, query: URLSearchParams) => { status: number; body: unknown };

export interface RouteSpec<Ctx> {
  method: "GET" | "POST";
  path: string;
  options: GateOptions<Ctx>;
}

/** One framework: builds an app with these routes behind `tollgate()`, listening on loopback. */
export interface Framework<Ctx> {
  name: string;
  /** A request header as the framework's context gives it. */
  header(ctx: Ctx, name: string): string | undefined;
  start(
    client: Tollgate,
    routes: RouteSpec<Ctx>[],
    handler: RouteHandler,
  ): Promise<{ url: string; close(): Promise<void> }>;
}

/** The routes every framework serves, by the same options. */
function routesFor<Ctx>(fw: Framework<Ctx>): RouteSpec<Ctx>[] {
  const kolekts = (failMode?: "open" | "closed"): GateOptions<Ctx> => ({
    consume: [{ feature: "api_requests" }],
    quota: [
      { feature: "kolekts", meter: "kolekts", amount: (ctx) => Number(fw.header(ctx, "x-amount") ?? 1) },
    ],
    ...(failMode ? { failMode } : {}),
  });
  return [
    { method: "GET", path: "/whoami", options: {} },
    {
      method: "GET",
      path: "/custom-key",
      options: { key: (ctx) => fw.header(ctx, "x-kolekt-key") },
    },
    { method: "GET", path: "/premium", options: { require: ["premium_templates"] } },
    { method: "POST", path: "/kolekts", options: kolekts() },
    { method: "POST", path: "/open/kolekts", options: kolekts("open") },
    { method: "POST", path: "/closed/kolekts", options: kolekts("closed") },
  ];
}

/** `?outcome=fail|error|throw` makes the handler fail; `?units=N` overrides the tracked amount. */
const handler: RouteHandler = (gate, query) => {
  const outcome = query.get("outcome");
  if (outcome === "throw") throw new Error("the handler failed");
  if (outcome === "fail") return { status: 400, body: { error: "bad input" } };
  if (outcome === "error") return { status: 500, body: { error: "broken" } };
  const units = query.get("units");
  if (units !== null) gate.usage("kolekts", Number(units));
  return {
    status: 201,
    body: {
      org: gate.orgId,
      key: gate.keyId,
      plan: gate.plan,
      scopes: gate.scopes,
      source: gate.source,
      results: gate.results.map((r) => ({ feature: r.feature, allowed: r.allowed })),
    },
  };
};

interface Answer {
  status: number;
  headers: Headers;
  body: any;
  ms: number;
}

export function middlewareSuite<Ctx>(fw: Framework<Ctx>): void {
  describe.each(storageModes)(`${fw.name} middleware against a real Tollgate ($name)`, (mode) => {
    let server: TollgateProcess;
    let env: Record<string, string>;
    let storage: Storage;
    let admin: Tollgate;
    const orgs: string[] = [];
    const cleanups: (() => Promise<unknown>)[] = [];

    beforeAll(async () => {
      storage = await mode.setup();
      env = {
        ...storage.env,
        TOLLGATE_ADMIN_KEY: ADMIN_KEY,
        TOLLGATE_SECRET: SECRET,
        TOLLGATE_LOG_LEVEL: "warn",
        // Fixed, so a restarted server is at the same address.
        PORT: String(await freePort()),
      };
      server = await startTollgate(env);
      admin = new Tollgate({ baseUrl: server.url, apiKey: ADMIN_KEY, track: { onError: () => {} } });
    }, 120_000);

    afterEach(async () => {
      for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
    });

    afterAll(async () => {
      await killAllTollgates();
      await storage?.cleanup(orgs);
    });

    /** A client and an app of this framework using it. */
    const app = async (options: Partial<TollgateOptions> = {}) => {
      const client = new Tollgate({ baseUrl: server.url, apiKey: ADMIN_KEY, ...options });
      cleanups.push(() => client.shutdown());
      const started = await fw.start(client, routesFor(fw), handler);
      cleanups.push(() => started.close());
      const call = async (
        method: string,
        path: string,
        headers: Record<string, string> = {},
      ): Promise<Answer> => {
        const at = performance.now();
        const res = await fetch(started.url + path, { method, headers });
        const text = await res.text();
        let body: unknown;
        try {
          body = JSON.parse(text);
        } catch {
          body = text;
        }
        return { status: res.status, headers: res.headers, body, ms: performance.now() - at };
      };
      return { client, call };
    };

    const { newOrg, setPlan, usageOf } = operatorHelpers(() => admin, orgs);

    const issueKey = async (org: string): Promise<{ id: string; key: string }> => {
      const { data, error } = await admin.api.POST("/v1/orgs/{org}/api-keys", {
        params: { path: { org } },
        body: { name: "Backend", scopes: ["usage:read"] },
      });
      expect(error).toBeUndefined();
      return { id: data?.id as string, key: data?.key as string };
    };

    const bearer = (key: string) => ({ authorization: `Bearer ${key}` });

    /** A dry-run check by the operator: the feature as it stands. */
    const peek = (org: string, feature: string) => admin.check(org, feature, { consume: false });

    const expectProblem = (res: Answer, status: number, code: string) => {
      expect(res.status, JSON.stringify(res.body)).toBe(status);
      expect(res.headers.get("content-type")).toMatch(/^application\/problem\+json/);
      expect(res.body).toMatchObject({
        type: `https://tollgate.dev/problems/${code.replaceAll("_", "-")}`,
        title: expect.any(String),
        status,
        detail: expect.any(String),
        code,
      });
    };

    it("answers 401 for a missing, malformed, unknown or revoked key, and finds the key where told", async () => {
      const org = await newOrg();
      const key = await issueKey(org);
      const { call } = await app({ keyCacheTtlMs: 300 });

      const missing = await call("GET", "/whoami");
      expectProblem(missing, 401, "unauthenticated");
      expect(missing.body.detail).toMatch(/No API key/);
      expect(missing.headers.get("www-authenticate")).toBe("Bearer");
      const malformed = await call("GET", "/whoami", bearer("tg_not-a-key"));
      expectProblem(malformed, 401, "unauthenticated");
      expect(malformed.body.detail).toMatch(/malformed/);
      expect(malformed.headers.get("www-authenticate")).toBe('Bearer error="invalid_token"');
      const unknown = await call("GET", "/whoami", { "x-api-key": generateKey().key });
      expectProblem(unknown, 401, "unauthenticated");
      expect(unknown.body.detail).toMatch(/not known/);
      // A key elsewhere than the route's `key` option says is no key.
      expectProblem(await call("GET", "/custom-key", bearer(key.key)), 401, "unauthenticated");

      const ok = await call("GET", "/whoami", bearer(key.key));
      expect(ok.status, JSON.stringify(ok.body)).toBe(201);
      expect(ok.body).toEqual({
        org,
        key: key.id,
        plan: "free",
        scopes: ["usage:read"],
        source: "tollgate",
        results: [],
      });
      expect((await call("GET", "/whoami", { "x-api-key": key.key })).body).toMatchObject({ org });
      expect((await call("GET", "/custom-key", { "x-kolekt-key": key.key })).body).toMatchObject({ org });

      const { response } = await admin.api.DELETE("/v1/orgs/{org}/api-keys/{id}", {
        params: { path: { org, id: key.id } },
      });
      expect(response.status).toBe(200);
      // Once the verdict's TTL (300 ms here) has passed, the key is refused.
      await sleep(350);
      let revoked = await call("GET", "/whoami", bearer(key.key));
      if (revoked.status !== 401) {
        // Tollgate's own processes honour a revocation within 1.5 s (docs/identity.md).
        await sleep(1600);
        revoked = await call("GET", "/whoami", bearer(key.key));
      }
      expectProblem(revoked, 401, "unauthenticated");
      expect(revoked.body.detail).toMatch(/revoked/);
    });

    it("answers 402 with the upgrade URL when a required feature is off, and warm, asks Tollgate nothing", async () => {
      const org = await newOrg();
      const key = await issueKey(org);
      const { fetch, calls } = recordingFetch();
      const { client, call } = await app({ fetch, keyCacheTtlMs: 2000 });

      const denied = await call("GET", "/premium", bearer(key.key));
      expectProblem(denied, 402, "payment_required");
      expect(denied.body).toMatchObject({
        feature: "premium_templates",
        reason: "feature_not_in_plan",
        upgrade_plan: expect.any(String),
        upgrade_url: expect.stringContaining(`/orgs/${org}/billing?feature=premium_templates`),
      });
      expect(denied.body.detail).toMatch(/free plan does not include premium_templates/);

      await setPlan(org, "pro");
      client.invalidate(org);
      const allowed = await call("GET", "/premium", bearer(key.key));
      expect(allowed.status, JSON.stringify(allowed.body)).toBe(201);
      expect(allowed.body).toMatchObject({
        plan: "pro",
        results: [{ feature: "premium_templates", allowed: true }],
      });
      // Warm: the key was verified less than keyCacheTtlMs ago, the boolean is in the cache.
      calls.length = 0;
      for (let i = 0; i < 20; i++) {
        const again = await call("GET", "/premium", bearer(key.key));
        expect(again.status).toBe(201);
        expect(again.body.source).toBe("cache");
      }
      expect(calls).toEqual([]);
    });

    it("answers 429 quota_exceeded with the headers and upgrade URL, consuming no rate", async () => {
      const org = await newOrg();
      const key = await issueKey(org);
      const { call } = await app();
      expect((await admin.check(org, "kolekts", { amount: 10 })).allowed).toBe(true);

      for (let i = 0; i < 3; i++) {
        const res = await call("POST", "/kolekts", bearer(key.key));
        expectProblem(res, 429, "quota_exceeded");
        expect(res.body).toMatchObject({
          feature: "kolekts",
          used: 10,
          limit: 10,
          remaining: 0,
          resets_at: expect.any(String),
          upgrade_plan: expect.any(String),
          upgrade_url: expect.stringContaining(`/orgs/${org}/billing?feature=kolekts`),
        });
        expect(res.headers.get("ratelimit-policy")).toBe('"kolekts";q=10, "api_requests";q=10;w=60');
        expect(res.headers.get("ratelimit")).toMatch(/^"kolekts";r=0;t=\d+, "api_requests";r=10;t=\d+$/);
        const resetIn = Math.ceil((Date.parse(res.body.resets_at) - Date.now()) / 1000);
        expect(Number(res.headers.get("retry-after"))).toBeGreaterThanOrEqual(resetIn - 5);
        expect(Number(res.headers.get("retry-after"))).toBeLessThanOrEqual(resetIn + 5);
      }
      // Neither the rate nor the quota was consumed by the denied requests.
      expect(await peek(org, "api_requests")).toMatchObject({ remaining: 10 });
      expect(await peek(org, "kolekts")).toMatchObject({ used: 10 });
    });

    it("answers 413 too_many_units for more than 1,000 units computed from the request, consuming nothing", async () => {
      const org = await newOrg();
      const key = await issueKey(org);
      const { client, call } = await app();
      const res = await call("POST", "/kolekts", { ...bearer(key.key), "x-amount": "5000" });
      expectProblem(res, 413, "too_many_units");
      expect(res.body).toMatchObject({ feature: "kolekts", amount: 5000, max_amount: 1000 });
      // A bad key is still told so first.
      const unknown = await call("POST", "/kolekts", {
        ...bearer(`${key.key.slice(0, -4)}zzzz`),
        "x-amount": "5000",
      });
      expectProblem(unknown, 401, "unauthenticated");
      expect(await client.flush()).toEqual({ pending: 0 });
      expect(await peek(org, "api_requests")).toMatchObject({ remaining: 10 });
      expect(await peek(org, "kolekts")).toMatchObject({ used: 0 });
      expect(client.stats).toMatchObject({ tracked: 0 });
    });

    it("takes the rate per request and answers 429 rate_limited with Retry-After past it", async () => {
      const org = await newOrg();
      const key = await issueKey(org);
      const { client, call } = await app();
      for (let i = 1; i <= 10; i++) {
        const res = await call("POST", "/kolekts", bearer(key.key));
        expect(res.status, JSON.stringify(res.body)).toBe(201);
        expect(res.body.source).toBe("tollgate");
        expect(res.headers.get("ratelimit-policy")).toBe('"api_requests";q=10;w=60');
        expect(res.headers.get("ratelimit")).toMatch(new RegExp(`^"api_requests";r=${10 - i};t=\\d+$`));
      }
      const limited = await call("POST", "/kolekts", bearer(key.key));
      expectProblem(limited, 429, "rate_limited");
      expect(limited.body).toMatchObject({
        feature: "api_requests",
        limit: 10,
        remaining: 0,
        retry_after_ms: expect.any(Number),
        upgrade_plan: expect.any(String),
        upgrade_url: expect.stringContaining(`/orgs/${org}/billing?feature=api_requests`),
      });
      expect(Number(limited.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      expect(Number(limited.headers.get("retry-after"))).toBeLessThanOrEqual(7);
      expect(limited.headers.get("ratelimit")).toMatch(/^"api_requests";r=0;t=\d+$/);
      // The ten that passed are metered (delivered by flush), the denied one is not.
      expect(await client.flush()).toEqual({ pending: 0 });
      expect(await usageOf(org, "kolekts")).toBe(10);
    });

    it("tracks the quota after a 2xx only, never after a 4xx, a 5xx or a throw; usage() sets the amount", async () => {
      const org = await newOrg();
      const key = await issueKey(org);
      const { client, call } = await app();
      const post = (query: string, headers: Record<string, string> = {}) =>
        call("POST", `/kolekts${query}`, { ...bearer(key.key), ...headers });

      expect((await post("")).status).toBe(201);
      expect((await post("?outcome=fail")).status).toBe(400);
      expect((await post("?outcome=error")).status).toBe(500);
      expect((await post("?outcome=throw")).status).toBe(500);
      expect((await post("", { "x-amount": "3" })).status).toBe(201);
      expect((await post("?units=5")).status).toBe(201);
      // An amount larger than what is left is refused before the handler runs.
      const tooMany = await post("", { "x-amount": "50" });
      expectProblem(tooMany, 429, "quota_exceeded");
      expect(await client.flush()).toEqual({ pending: 0 });
      expect(await usageOf(org, "kolekts")).toBe(1 + 3 + 5);
      // kolekts is a count meter: n units are n events.
      expect(client.stats).toMatchObject({ tracked: 9, rejected: 0, dropped: 0 });
    });

    it("when Tollgate is slow: fails closed with a 503 within the timeout, or lets the request through", async () => {
      const org = await newOrg("pro");
      const key = await issueKey(org);
      const proxy = await new FaultProxy("127.0.0.1", server.port).start();
      cleanups.push(() => proxy.close());
      const { client, call } = await app({
        baseUrl: proxy.url(server.url),
        timeoutMs: 400,
        keyCacheTtlMs: 100,
        track: { flushIntervalMs: 60_000, onError: () => {} },
      });
      expect((await call("POST", "/closed/kolekts", bearer(key.key))).status).toBe(201);
      proxy.stall();
      const closed = await call("POST", "/closed/kolekts", bearer(key.key));
      expectProblem(closed, 503, "unavailable");
      expect(closed.headers.get("retry-after")).toBe("5");
      expect(closed.ms).toBeGreaterThanOrEqual(350);
      expect(closed.ms).toBeLessThan(400 + 1500);
      const open = await call("POST", "/open/kolekts", bearer(key.key));
      expect(open.status, JSON.stringify(open.body)).toBe(201);
      expect(open.body.source).toBe("fail-open");
      proxy.cut();
      proxy.restore();
      expect(await client.flush()).toEqual({ pending: 0 });
    });

    it("when Tollgate is stopped mid-run: behaves as configured, and loses no tracked usage", async () => {
      const org = await newOrg("pro");
      const key = await issueKey(org);
      const problems: TrackProblem[] = [];
      const { client, call } = await app({
        timeoutMs: 500,
        keyCacheTtlMs: 200,
        track: {
          flushIntervalMs: 100,
          initialBackoffMs: 50,
          maxBackoffMs: 400,
          timeoutMs: 1000,
          onError: (p) => problems.push(p),
        },
      });
      let allowed = 0;
      for (let i = 0; i < 5; i++) {
        const res = await call("POST", "/open/kolekts", bearer(key.key));
        expect(res.status).toBe(201);
        expect(res.body.source).toBe("tollgate");
        allowed++;
      }
      expect((await call("POST", "/closed/kolekts", bearer(key.key))).status).toBe(201);
      allowed++;

      await server.kill9();
      await sleep(250);
      // Fail-open: let through (the key was verified valid recently), and tracked for later.
      for (let i = 0; i < 20; i++) {
        const res = await call("POST", "/open/kolekts", { ...bearer(key.key), "x-amount": "2" });
        expect(res.status, JSON.stringify(res.body)).toBe(201);
        expect(res.body.source).toBe("fail-open");
        allowed += 2;
      }
      // A request that fails is not tracked, Tollgate or not.
      expect((await call("POST", "/open/kolekts?outcome=error", bearer(key.key))).status).toBe(500);
      // Fail-closed: 503 within the timeout (refused at once here: the process is gone).
      const closed = await call("POST", "/closed/kolekts", bearer(key.key));
      expectProblem(closed, 503, "unavailable");
      expect(closed.headers.get("retry-after")).toBe("5");
      expect(closed.ms).toBeLessThan(500 + 1500);
      // A key Tollgate never confirmed cannot be let through: there is no org to give it.
      expectProblem(await call("POST", "/open/kolekts", bearer(generateKey().key)), 503, "unavailable");

      server = await startTollgate(env);
      expect(await client.flush()).toEqual({ pending: 0 });
      expect(problems.some((p) => p.kind === "retrying")).toBe(true);
      expect(problems.filter((p) => p.kind !== "retrying")).toEqual([]);
      expect(client.stats).toMatchObject({ tracked: allowed, queued: 0, rejected: 0, dropped: 0 });
      expect(client.stats.accepted + client.stats.duplicates).toBeGreaterThanOrEqual(allowed);
      // Every tracked unit arrived, each counted once.
      expect(await usageOf(org, "kolekts")).toBe(allowed);
      // Back to normal (with Redis, the first check rebuilds the counters after a grace of 1.5 s).
      let back: Answer | undefined;
      await until(async () => {
        back = await call("POST", "/closed/kolekts", bearer(key.key));
        return back.status !== 503;
      }, 20_000);
      expect(back?.status, JSON.stringify(back?.body)).toBe(201);
      expect(back?.body.source).toBe("tollgate");
    }, 120_000);
  });
}
