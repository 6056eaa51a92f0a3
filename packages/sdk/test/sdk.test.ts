import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  FaultProxy,
  freePort,
  killAllTollgates,
  startTollgate,
  type TollgateProcess,
} from "../../../test/support/tollgate-process.js";
import {
  type CheckResult,
  Tollgate,
  TollgateError,
  type TollgateOptions,
  TollgateUnavailableError,
  TollgateWebhookError,
  type TrackProblem,
} from "../src/index.js";
import {
  ADMIN_KEY,
  type Delivery,
  operatorHelpers,
  recordingFetch,
  SECRET,
  type Storage,
  sleep,
  startReceiver,
  storageModes,
  until,
} from "./support.js";

/**
 * The SDK against a real Tollgate child process (`tollgate start`), in each storage mode: embedded
 * (PGlite, counters in process) and Postgres + Redis. The catalog is the bundled demo (Kolekt): free
 * has 10 kolekts a month, 10 API requests a minute, one team member and no premium templates; pro
 * has premium templates.
 */

/** 128 random bits per client (base64url), then a counter. */
const EVENT_ID = /^[A-Za-z0-9_-]{22}\.[0-9a-z]+$/;

describe.each(storageModes)("@tollgate/sdk against a real Tollgate ($name)", (mode) => {
  let server: TollgateProcess;
  let env: Record<string, string>;
  let storage: Storage;
  let receiver: Awaited<ReturnType<typeof startReceiver>>;
  /** For admin calls: the typed API of a client of its own. */
  let admin: Tollgate;
  const orgs: string[] = [];
  const clients: Tollgate[] = [];

  beforeAll(async () => {
    receiver = await startReceiver();
    storage = await mode.setup();
    env = {
      ...storage.env,
      TOLLGATE_ADMIN_KEY: ADMIN_KEY,
      TOLLGATE_SECRET: SECRET,
      TOLLGATE_WEBHOOK_ALLOWED_TARGETS: `127.0.0.1:${receiver.port}`,
      TOLLGATE_LOG_LEVEL: "warn",
      // Fixed, so a restarted server is at the same address.
      PORT: String(await freePort()),
    };
    server = await startTollgate(env);
    admin = new Tollgate({ baseUrl: server.url, apiKey: ADMIN_KEY, track: { onError: () => {} } });
  }, 120_000);

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.shutdown().catch(() => {})));
  });

  afterAll(async () => {
    await killAllTollgates();
    await receiver?.close();
    await storage?.cleanup(orgs);
  });

  const client = (options: Partial<TollgateOptions> = {}) => {
    const created = new Tollgate({ baseUrl: server.url, apiKey: ADMIN_KEY, ...options });
    clients.push(created);
    return created;
  };

  const { newOrg, setPlan, usageOf } = operatorHelpers(() => admin, orgs);

  const usedOf = async (org: string, feature: string): Promise<number | null | undefined> => {
    const { data } = await admin.api.GET("/v1/orgs/{org}/entitlements", { params: { path: { org } } });
    return data?.features.find((f) => f.feature === feature)?.used;
  };

  /** Strips the SDK's own fields, leaving what Tollgate answered. */
  const serverFields = ({ source: _source, error: _error, ...rest }: CheckResult) => rest;

  describe("check()", () => {
    it("answers allowed and denied with the reason, usage and upgrade URL", async () => {
      const org = await newOrg();
      const tollgate = client();
      const first = await tollgate.check(org, "kolekts", { amount: 10 });
      expect(first).toMatchObject({
        allowed: true,
        feature: "kolekts",
        type: "metered",
        limit: 10,
        used: 10,
        remaining: 0,
        resets_at: expect.any(String),
        source: "tollgate",
      });
      expect(first.error).toBeUndefined();
      const denied = await tollgate.check(org, "kolekts");
      expect(denied).toMatchObject({
        allowed: false,
        reason: "quota_exceeded",
        used: 10,
        upgrade_plan: expect.any(String),
        upgrade_url: expect.stringContaining(`/orgs/${org}/billing?feature=kolekts`),
        source: "tollgate",
      });
      expect(await usedOf(org, "kolekts")).toBe(10);
    });

    it("throws a TollgateError with the problem's fields for requests Tollgate refuses", async () => {
      const org = await newOrg();
      const tollgate = client();
      const unknownOrg = await tollgate.check("org_01jdz8m6v8x4h6q3b9k2n7c5rt", "kolekts").catch((e) => e);
      expect(unknownOrg).toBeInstanceOf(TollgateError);
      expect(unknownOrg).toMatchObject({ status: 404, code: "not_found" });
      const badAmount = await tollgate.check(org, "kolekts", { amount: 1.5 }).catch((e) => e);
      expect(badAmount).toBeInstanceOf(TollgateError);
      expect(badAmount).toMatchObject({ status: 400, code: "validation_failed" });
      expect(badAmount.errors).toEqual([
        expect.objectContaining({ field: "amount", code: "invalid_amount" }),
      ]);
      expect(badAmount.requestId).toEqual(expect.any(String));
      const unknownFeature = await tollgate.check(org, "nope").catch((e) => e);
      expect(unknownFeature.errors).toEqual([
        expect.objectContaining({ field: "feature", code: "unknown_feature" }),
      ]);
      const wrongKey = new Tollgate({ baseUrl: server.url, apiKey: "not-the-key", cacheTtlMs: 0 });
      await expect(wrongKey.check(org, "kolekts")).rejects.toMatchObject({
        status: 401,
        code: "unauthenticated",
      });
    });

    it("decides several features all or nothing", async () => {
      const org = await newOrg();
      const tollgate = client();
      const denied = await tollgate.check(org, [
        { feature: "api_requests" },
        { feature: "kolekts", amount: 11 },
      ]);
      expect(denied.allowed).toBe(false);
      expect(denied.source).toBe("tollgate");
      expect(denied.results).toEqual([
        expect.objectContaining({ feature: "api_requests", type: "rate", allowed: true, source: "tollgate" }),
        expect.objectContaining({ feature: "kolekts", allowed: false, reason: "quota_exceeded", used: 0 }),
      ]);
      const allowed = await tollgate.check(org, [
        { feature: "api_requests" },
        { feature: "kolekts", amount: 4 },
      ]);
      expect(allowed.allowed).toBe(true);
      // The denied call consumed nothing: one request of ten, four kolekts.
      expect(allowed.results[0]).toMatchObject({ feature: "api_requests", limit: 10, remaining: 9 });
      expect(allowed.results[1]).toMatchObject({ feature: "kolekts", used: 4, remaining: 6 });
      expect(await usedOf(org, "kolekts")).toBe(4);
    });

    it("consumes once per idempotency key and refuses the key with other parameters", async () => {
      const org = await newOrg();
      const tollgate = client();
      const first = await tollgate.check(org, "kolekts", { amount: 2, idempotencyKey: "job-381" });
      const again = await tollgate.check(org, "kolekts", { amount: 2, idempotencyKey: "job-381" });
      expect(again).toEqual(first);
      expect(await usedOf(org, "kolekts")).toBe(2);
      await expect(
        tollgate.check(org, "kolekts", { amount: 3, idempotencyKey: "job-381" }),
      ).rejects.toMatchObject({ status: 409, code: "conflict" });
    });
  });

  describe("the entitlement cache", () => {
    it("answers boolean and limit reads locally, exactly as Tollgate would", async () => {
      const org = await newOrg();
      const { fetch, calls } = recordingFetch();
      const tollgate = client({ fetch });
      expect(tollgate.checkCached(org, "premium_templates")).toBeUndefined();
      expect(calls).toEqual([]);

      // The first read fills the org: its entitlements and one dry-run check of its booleans and limits.
      const first = await tollgate.check(org, "premium_templates");
      expect(first).toMatchObject({
        allowed: false,
        feature: "premium_templates",
        type: "boolean",
        reason: "feature_not_in_plan",
        upgrade_plan: expect.any(String),
        upgrade_url: expect.stringContaining(`feature=premium_templates`),
        source: "cache",
      });
      expect(calls.map((c) => `${c.method} ${c.path}`)).toEqual([
        `GET /v1/orgs/${org}/entitlements`,
        "POST /v1/check",
      ]);
      expect(calls[1]?.body).toMatchObject({ org_id: org, consume: false });
      const direct = (await server.call("POST", "/v1/check", {
        auth: ADMIN_KEY,
        body: { org_id: org, feature: "premium_templates", consume: false },
      })) as { body: unknown };
      expect(serverFields(first)).toEqual(direct.body);

      calls.length = 0;
      for (let i = 0; i < 1000; i++) {
        expect((await tollgate.check(org, "premium_templates")).allowed).toBe(false);
        expect((await tollgate.check(org, "zapier_integration")).allowed).toBe(true);
        expect(tollgate.checkCached(org, "premium_templates")).toBe(first);
      }
      const seats = await tollgate.check(org, "team_members", { consume: false });
      expect(seats).toMatchObject({
        type: "limit",
        allowed: true,
        limit: 1,
        used: 0,
        remaining: 1,
        source: "cache",
      });
      expect(tollgate.checkCached(org, "team_members")).toBe(seats);
      const many = await tollgate.check(org, [{ feature: "zapier_integration" }, { feature: "analytics" }], {
        consume: false,
      });
      expect(many).toMatchObject({ allowed: false, source: "cache" });
      expect(many.results.map((r) => [r.feature, r.allowed])).toEqual([
        ["zapier_integration", true],
        ["analytics", false],
      ]);
      expect(calls).toEqual([]);

      // Metered and rate features, consuming limit checks and idempotent calls always ask Tollgate.
      expect((await tollgate.check(org, "kolekts", { consume: false })).source).toBe("tollgate");
      expect((await tollgate.check(org, "api_requests", { consume: false })).source).toBe("tollgate");
      expect((await tollgate.check(org, "analytics", { idempotencyKey: "k1" })).source).toBe("tollgate");
      const hired = await tollgate.check(org, "team_members");
      expect(hired).toMatchObject({ allowed: true, used: 1, remaining: 0, source: "tollgate" });
      expect(calls).toHaveLength(4);
      // The allocation changed, so that read is asked again once, then cached again.
      const full = await tollgate.check(org, "team_members", { consume: false });
      expect(full).toMatchObject({ allowed: false, reason: "limit_exceeded", used: 1, source: "tollgate" });
      expect(await tollgate.check(org, "team_members", { consume: false })).toBe(
        tollgate.checkCached(org, "team_members"),
      );
      expect(tollgate.checkCached(org, "team_members")).toMatchObject({
        allowed: false,
        used: 1,
        source: "cache",
      });
      expect(calls).toHaveLength(5);
      // None of these answers looked like a plan change: the org is still cached.
      expect(tollgate.checkCached(org, "premium_templates")).toBe(first);
    });

    it("is dropped by a subscription webhook (handleWebhook), verified with its real signature", async () => {
      const org = await newOrg();
      const { data: endpoint } = await admin.api.POST("/v1/orgs/{org}/webhook-endpoints", {
        params: { path: { org } },
        body: { url: receiver.url, events: ["subscription.*"] },
      });
      const secret = endpoint?.secret as string;
      expect(secret).toMatch(/^whsec_/);
      const tollgate = client();
      expect(await tollgate.check(org, "premium_templates")).toMatchObject({
        allowed: false,
        source: "cache",
      });

      await setPlan(org, "pro");
      // Until told, the cache answers what it holds: that is what the webhook is for.
      expect(tollgate.checkCached(org, "premium_templates")?.allowed).toBe(false);
      const delivery = await deliveryFor(org, endpoint?.id as string, "subscription.updated");

      const forged = { ...delivery.headers, "webhook-signature": "v1,bm90IGEgc2lnbmF0dXJl" };
      expect(() => tollgate.handleWebhook(delivery.body, forged, secret)).toThrow(TollgateWebhookError);
      expect(() => tollgate.handleWebhook(`${delivery.body} `, delivery.headers, secret)).toThrow(
        TollgateWebhookError,
      );
      expect(tollgate.checkCached(org, "premium_templates")?.allowed).toBe(false);

      const event = tollgate.handleWebhook(delivery.body, delivery.headers, secret);
      expect(event).toMatchObject({
        id: expect.stringMatching(/^msg_/),
        type: "subscription.updated",
        data: { org_id: org, plan: "pro" },
      });
      expect(tollgate.checkCached(org, "premium_templates")).toBeUndefined();
      expect(await tollgate.check(org, "premium_templates")).toMatchObject({
        allowed: true,
        source: "cache",
      });
    });

    it("is dropped by invalidate(), and by any answer showing another plan", async () => {
      const org = await newOrg("pro");
      const tollgate = client();
      expect((await tollgate.check(org, "premium_templates")).allowed).toBe(true);
      await setPlan(org, "free");
      expect(tollgate.checkCached(org, "premium_templates")?.allowed).toBe(true);
      tollgate.invalidate(org);
      expect(tollgate.checkCached(org, "premium_templates")).toBeUndefined();
      expect(await tollgate.check(org, "premium_templates")).toMatchObject({
        allowed: false,
        source: "cache",
      });

      // A key verification names the plan: another one drops the org's entry.
      await setPlan(org, "pro");
      const key = await issueKey(org);
      expect(await tollgate.verifyKey(key.key)).toMatchObject({ valid: true, plan: "pro" });
      expect(tollgate.checkCached(org, "premium_templates")).toBeUndefined();
      expect(await tollgate.check(org, "premium_templates")).toMatchObject({
        allowed: true,
        source: "cache",
      });

      // So does a boolean Tollgate answers differently, or another limit.
      await setPlan(org, "free");
      expect(await tollgate.check(org, "premium_templates", { idempotencyKey: "plan-probe" })).toMatchObject({
        allowed: false,
        source: "tollgate",
      });
      expect(tollgate.checkCached(org, "premium_templates")).toBeUndefined();
      await tollgate.check(org, "premium_templates");
      await setPlan(org, "pro");
      expect(await tollgate.check(org, "kolekts", { consume: false })).toMatchObject({ limit: 100 });
      expect(tollgate.checkCached(org, "premium_templates")).toBeUndefined();

      // invalidate() with no org drops everything.
      await tollgate.check(org, "premium_templates");
      tollgate.invalidate();
      expect(tollgate.checkCached(org, "premium_templates")).toBeUndefined();
    });
  });

  describe("track()", () => {
    it("sends a batch as soon as it is full, and the rest on the interval", async () => {
      const org = await newOrg();
      const { fetch, calls } = recordingFetch();
      const batches = () => calls.filter((c) => c.path === "/v1/events").map((c) => c.body.events.length);
      const bySize = client({ fetch, track: { batchSize: 10, flushIntervalMs: 60_000 } });
      const ids = Array.from({ length: 25 }, () => bySize.track({ orgId: org, meter: "api_calls" }));
      expect(new Set(ids).size).toBe(25);
      for (const id of ids) expect(id).toMatch(EVENT_ID);
      // Another client (another process, a restart) never makes the same ids.
      const other = client({ fetch: recordingFetch().fetch, track: { flushIntervalMs: 60_000 } });
      expect(other.track({ orgId: org, meter: "api_calls" }).split(".")[0]).not.toBe(ids[0]?.split(".")[0]);
      await other.shutdown();
      await until(() => batches().length === 2);
      expect(batches()).toEqual([10, 10]);
      await sleep(200);
      expect(bySize.stats).toMatchObject({ tracked: 25, accepted: 20, queued: 5 });
      expect(calls.find((c) => c.path === "/v1/events")?.body.events[0]).toEqual({
        id: ids[0],
        org_id: org,
        meter: "api_calls",
        value: 1,
        timestamp: expect.any(String),
      });

      const byInterval = client({ fetch, track: { batchSize: 100, flushIntervalMs: 250 } });
      const started = Date.now();
      for (let i = 0; i < 3; i++) byInterval.track({ orgId: org, meter: "api_calls" });
      await sleep(100);
      expect(batches()).toEqual([10, 10]);
      await until(() => batches().length === 3);
      expect(batches()).toEqual([10, 10, 3]);
      expect(Date.now() - started).toBeGreaterThanOrEqual(200);

      expect(await bySize.flush()).toEqual({ pending: 0 });
      expect(batches()).toEqual([10, 10, 3, 5]);
      // api_calls counts events (the other client's one included).
      expect(await usageOf(org, "api_calls")).toBe(25 + 3 + 1);
    });

    it("flushes, reports rejected events, counts an id once, and stops on shutdown", async () => {
      const org = await newOrg();
      const problems: TrackProblem[] = [];
      const tollgate = client({ track: { flushIntervalMs: 60_000, onError: (p) => problems.push(p) } });
      const id = tollgate.track({ orgId: org, meter: "api_calls", properties: { endpoint: "/search" } });
      tollgate.track({ orgId: org, meter: "no_such_meter" });
      tollgate.track({ orgId: org, meter: "api_calls", id });
      expect(tollgate.track({ orgId: org, meter: "api_calls", id: "my-own-id" })).toBe("my-own-id");
      expect(await tollgate.flush()).toEqual({ pending: 0 });
      expect(problems).toEqual([
        {
          kind: "rejected",
          events: [expect.objectContaining({ meter: "no_such_meter", code: "unknown_meter" })],
        },
      ]);
      expect(tollgate.stats).toMatchObject({ tracked: 4, rejected: 1, queued: 0, requests: 1 });
      expect(tollgate.stats.accepted + tollgate.stats.duplicates).toBe(3);
      // api_calls counts events: the repeated id once.
      expect(await usageOf(org, "api_calls")).toBe(2);

      // Sent again later (a retry after a lost answer): counted once.
      tollgate.track({ orgId: org, meter: "api_calls", id });
      tollgate.track({ orgId: org, meter: "api_calls" });
      expect(await tollgate.shutdown()).toEqual({ pending: 0 });
      expect(await usageOf(org, "api_calls")).toBe(3);
      expect(() => tollgate.track({ orgId: org, meter: "api_calls" })).toThrow(/shut down/);
    });
  });

  describe("track() when an answer is lost", () => {
    it("sends the batch again with the same ids, and Tollgate counts it once", async () => {
      const org = await newOrg();
      // Between the SDK and Tollgate: requests go through, answers are dropped until restore().
      const proxy = await new FaultProxy("127.0.0.1", server.port).start();
      try {
        const tollgate = client({
          baseUrl: proxy.url(server.url),
          track: { timeoutMs: 300, initialBackoffMs: 50, maxBackoffMs: 200, flushIntervalMs: 60_000 },
        });
        proxy.dropReplies();
        for (let i = 0; i < 50; i++) tollgate.track({ orgId: org, meter: "api_calls" });
        const flushed = tollgate.flush();
        await until(() => tollgate.stats.requests >= 2);
        proxy.restore();
        expect(await flushed).toEqual({ pending: 0 });
        // Tollgate recorded the first copy; the answer that said so never arrived.
        expect(tollgate.stats).toMatchObject({ accepted: 0, duplicates: 50, queued: 0 });
        expect(await usageOf(org, "api_calls")).toBe(50);
      } finally {
        await proxy.close();
      }
    });
  });

  describe("verifyKey()", () => {
    it("verifies a key, reuses the verdict briefly, and checks features in the same round trip", async () => {
      const org = await newOrg();
      const key = await issueKey(org);
      const { fetch, calls } = recordingFetch();
      const tollgate = client({ fetch, keyCacheTtlMs: 2000 });

      const verdict = await tollgate.verifyKey(key.key);
      expect(verdict).toEqual({
        valid: true,
        org_id: org,
        key_id: key.id,
        scopes: ["usage:read"],
        plan: "free",
        source: "tollgate",
      });
      expect(await tollgate.verifyKey(key.key)).toMatchObject({ valid: true, org_id: org, source: "cache" });
      expect(calls).toHaveLength(1);

      // Checks are never cached: one round trip each, all or nothing for several.
      const many = await tollgate.verifyKey(key.key, {
        features: [{ feature: "kolekts", amount: 2 }, { feature: "api_requests" }],
      });
      expect(many).toMatchObject({ valid: true, org_id: org, source: "tollgate" });
      expect(many.valid && many.checks).toMatchObject({
        allowed: true,
        source: "tollgate",
        results: [
          { feature: "kolekts", allowed: true, used: 2, source: "tollgate" },
          { feature: "api_requests", allowed: true, remaining: 9 },
        ],
      });
      const one = await tollgate.verifyKey(key.key, { feature: "kolekts" });
      expect(one.valid && one.check).toMatchObject({ feature: "kolekts", allowed: true, used: 3 });
      const over = await tollgate.verifyKey(key.key, { features: [{ feature: "kolekts", amount: 100 }] });
      expect(over.valid && over.checks).toMatchObject({
        allowed: false,
        results: [{ allowed: false, reason: "quota_exceeded", used: 3 }],
      });
      expect(calls).toHaveLength(4);
      await expect(
        tollgate.verifyKey(key.key, { feature: "kolekts", features: [{ feature: "kolekts" }] }),
      ).rejects.toMatchObject({ status: 400, errors: [expect.objectContaining({ field: "features" })] });

      // Boolean and limit reads the entitlement cache holds need no request with a fresh verdict.
      await tollgate.preload(org);
      await tollgate.verifyKey(key.key);
      calls.length = 0;
      const read = await tollgate.verifyKey(key.key, { feature: "premium_templates" });
      expect(read).toMatchObject({ valid: true, source: "cache" });
      expect(read.valid && read.check).toMatchObject({
        allowed: false,
        reason: "feature_not_in_plan",
        source: "cache",
      });
      expect(calls).toEqual([]);

      expect(await tollgate.verifyKey("tg_not-a-key")).toEqual({
        valid: false,
        reason: "malformed",
        source: "tollgate",
      });
    });

    it("stops accepting a revoked key once the verdict's TTL has passed", async () => {
      const org = await newOrg();
      const key = await issueKey(org);
      const tollgate = client({ keyCacheTtlMs: 2000 });
      expect(await tollgate.verifyKey(key.key)).toMatchObject({ valid: true, source: "tollgate" });
      const { response } = await admin.api.DELETE("/v1/orgs/{org}/api-keys/{id}", {
        params: { path: { org, id: key.id } },
      });
      expect(response.status).toBe(200);
      // Within the TTL the verdict is reused (documented: revocation takes up to keyCacheTtlMs more).
      expect(await tollgate.verifyKey(key.key)).toMatchObject({ valid: true, source: "cache" });
      await sleep(2100);
      expect(await tollgate.verifyKey(key.key)).toEqual({
        valid: false,
        reason: "revoked",
        source: "tollgate",
      });
      // A fresh client sees it at once.
      expect(await client().verifyKey(key.key)).toMatchObject({ valid: false, reason: "revoked" });
    });
  });

  describe("the typed api", () => {
    it("reaches every endpoint with the operator key", async () => {
      const org = await newOrg();
      const { data, error, response } = await admin.api.GET("/v1/orgs/{org}/entitlements", {
        params: { path: { org } },
      });
      expect(response.status).toBe(200);
      expect(error).toBeUndefined();
      expect(data).toMatchObject({ org_id: org, plan: "free" });
      const missing = await admin.api.GET("/v1/orgs/{org}", { params: { path: { org: "org_nope" } } });
      expect(missing.response.status).toBe(404);
      expect(missing.error).toMatchObject({ code: "not_found" });
    });
  });

  describe("when Tollgate stops mid-run", () => {
    it("answers by failMode within the timeout, keeps tracking, and loses no usage once it returns", async () => {
      const org = await newOrg();
      const key = await issueKey(org);
      const problems: TrackProblem[] = [];
      const tollgate = client({
        timeoutMs: 500,
        keyCacheTtlMs: 200,
        track: {
          batchSize: 20,
          flushIntervalMs: 100,
          initialBackoffMs: 50,
          maxBackoffMs: 400,
          timeoutMs: 1000,
          onError: (p) => problems.push(p),
        },
      });
      expect((await tollgate.check(org, "premium_templates")).source).toBe("cache");
      expect(await tollgate.verifyKey(key.key)).toMatchObject({ valid: true });

      const tracked: string[] = [];
      let tracking = true;
      const producer = (async () => {
        while (tracking) {
          tracked.push(tollgate.track({ orgId: org, meter: "api_calls" }));
          await sleep(2);
        }
      })();
      await sleep(1000);
      await server.kill9();
      await sleep(300);

      const started = Date.now();
      const open = await tollgate.check(org, "kolekts", { failMode: "open" });
      const closed = await tollgate.check(org, "kolekts");
      const many = await tollgate.check(org, [{ feature: "kolekts" }, { feature: "api_requests" }], {
        failMode: "open",
      });
      // Three calls of a 500 ms budget each (the process is gone: refused at once, in fact).
      expect(Date.now() - started).toBeLessThan(3 * 500 + 2000);
      expect(open).toMatchObject({ allowed: true, feature: "kolekts", type: "metered", source: "fail-open" });
      expect(open.error).toBeInstanceOf(TollgateUnavailableError);
      expect(open.error?.kind).toBe("network");
      expect(closed).toMatchObject({ allowed: false, reason: "unavailable", source: "fail-closed" });
      expect(many).toMatchObject({ allowed: true, source: "fail-open" });
      expect(many.results.map((r) => r.source)).toEqual(["fail-open", "fail-open"]);
      // What the cache holds is still answered.
      expect(await tollgate.check(org, "premium_templates")).toMatchObject({
        allowed: false,
        source: "cache",
      });
      // A key verified valid recently stays valid only when failing open.
      await sleep(250);
      expect(await tollgate.verifyKey(key.key, { failMode: "open" })).toMatchObject({
        valid: true,
        org_id: org,
        source: "fail-open",
      });
      expect(await tollgate.verifyKey(key.key)).toMatchObject({
        valid: false,
        reason: "unavailable",
        source: "fail-closed",
      });

      await sleep(500);
      server = await startTollgate(env);
      await sleep(300);
      tracking = false;
      await producer;
      expect(await tollgate.flush()).toEqual({ pending: 0 });

      expect(problems.some((p) => p.kind === "retrying")).toBe(true);
      expect(problems.filter((p) => p.kind !== "retrying")).toEqual([]);
      expect(tollgate.stats).toMatchObject({ tracked: tracked.length, queued: 0, rejected: 0, dropped: 0 });
      expect(tollgate.stats.accepted + tollgate.stats.duplicates).toBeGreaterThanOrEqual(tracked.length);
      expect(await usageOf(org, "api_calls")).toBe(tracked.length);
      // The first check after a restart rebuilds counters (with Redis, after a grace of 1.5 s).
      const back = await tollgate.check(org, "kolekts", { timeoutMs: 10_000 });
      expect(back.error).toBeUndefined();
      expect(back).toMatchObject({ allowed: true, source: "tollgate" });
    }, 120_000);
  });

  async function issueKey(org: string): Promise<{ id: string; key: string }> {
    const { data, error } = await admin.api.POST("/v1/orgs/{org}/api-keys", {
      params: { path: { org } },
      body: { name: "Backend", scopes: ["usage:read"] },
    });
    expect(error).toBeUndefined();
    return { id: data?.id as string, key: data?.key as string };
  }

  /**
   * The delivery of the org's event of this type. Jobs of real servers sharing one Redis share one
   * queue, so another test's server may take ours: past a few seconds it is sent again by hand.
   */
  async function deliveryFor(org: string, endpoint: string, type: string): Promise<Delivery> {
    const deadline = Date.now() + 60_000;
    let nudged = Date.now();
    for (;;) {
      const found = receiver.deliveries.find((d) => {
        const body = JSON.parse(d.body) as { type: string; data: { org_id?: string } };
        return body.type === type && body.data.org_id === org;
      });
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`no ${type} delivery for ${org}`);
      if (Date.now() - nudged > 5000) {
        nudged = Date.now();
        const { data } = await admin.api.GET("/v1/orgs/{org}/webhook-endpoints/{id}/deliveries", {
          params: { path: { org, id: endpoint } },
        });
        for (const delivery of data?.data ?? []) {
          if (delivery.status !== "succeeded") {
            await admin.api.POST("/v1/orgs/{org}/webhook-endpoints/{id}/deliveries/{delivery}/retry", {
              params: { path: { org, id: endpoint, delivery: delivery.id } },
            });
          }
        }
      }
      await sleep(100);
    }
  }
});
