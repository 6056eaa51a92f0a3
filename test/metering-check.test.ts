import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { usageJournal } from "../src/modules/metering/check.js";
import { appModes, createTestApp, deleteRedisPrefix, type TestApp } from "./support/app.js";
import { createTestDatabase, type TestDatabase, uniquePrefix } from "./support/storage.js";

/**
 * `POST /v1/check`, subscriptions, plan versions and API-key rate limits, through HTTP, on the
 * kolekt demo catalog (free: 10 kolekts a month, 10 API requests a minute, 1 team member).
 */

const KOLEKT_PATH = fileURLToPath(new URL("../catalogs/kolekt.yaml", import.meta.url));
const KOLEKT = readFileSync(KOLEKT_PATH, "utf8");
const PASSWORD = "correct horse battery staple";
const second = 1000;

/** Writes a variant of the kolekt catalog to a temporary file; returns its path. */
function catalogFile(dir: string, name: string, edit: (yaml: string) => string): string {
  const text = edit(KOLEKT);
  const file = path.join(dir, `${name}.yaml`);
  writeFileSync(file, text);
  return file;
}

/** Pro's monthly kolekts, the line a catalog change edits. */
const PRO_KOLEKTS = /(- key: pro\n(?:.*\n)*?\s+kolekts: \{ limit: )100( \})/;
/** Whatever the bundled catalog says, these variants name no API rate feature, or api_requests. */
const withoutApiRate = (yaml: string) => yaml.replace(/^api_rate_feature:.*\n/m, "");
const withApiRate = (yaml: string) =>
  withoutApiRate(yaml).replace(
    "default_plan: free\n",
    "default_plan: free\napi_rate_feature: api_requests\n",
  );

/** The calls every suite makes, bound to one app. */
function client(t: TestApp) {
  let users = 0;
  const api = {
    async newOrg(name = "Acme"): Promise<string> {
      const res = await t.call("POST", "/v1/orgs", { auth: "operator", body: { name } });
      expect(res.status, res.text).toBe(201);
      return res.body.id as string;
    },
    setPlan(org: string, body: Record<string, unknown>, auth = "operator") {
      return t.call("POST", `/v1/orgs/${org}/subscription`, { auth, body });
    },
    async putOn(org: string, plan: string) {
      const res = await api.setPlan(org, { plan, skip_payment: true });
      expect(res.status, res.text).toBe(200);
      return res.body;
    },
    async subscription(org: string, auth = "operator") {
      const res = await t.call("GET", `/v1/orgs/${org}/subscription`, { auth });
      expect(res.status, res.text).toBe(200);
      return res.body;
    },
    check(body: Record<string, unknown>) {
      return t.call("POST", "/v1/check", { auth: "operator", body });
    },
    /** A single-feature check that must answer 200; returns the body with the headers. */
    async use(org: string, feature: string, extra: Record<string, unknown> = {}) {
      const res = await api.check({ org_id: org, feature, ...extra });
      expect(res.status, res.text).toBe(200);
      return res;
    },
    /** `consume: false`: usage as it stands. */
    async peek(org: string, feature: string, amount?: number) {
      return (await api.use(org, feature, { consume: false, ...(amount === undefined ? {} : { amount }) }))
        .body;
    },
    async advance(ms: number) {
      await api.advanceTo(t.deps.clock.nowMs() + ms);
    },
    async advanceTo(ms: number) {
      const to = new Date(ms).toISOString();
      const res = await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: { to } });
      expect(res.status, res.text).toBe(200);
    },
    async thresholds(org: string) {
      const res = await t.call("GET", `/v1/orgs/${org}/threshold-events`, { auth: "operator" });
      expect(res.status, res.text).toBe(200);
      return (res.body.data as { threshold: number; feature: string; period_start: string }[])
        .map((e) => ({ feature: e.feature, threshold: e.threshold, period_start: e.period_start }))
        .sort((a, b) => a.period_start.localeCompare(b.period_start) || a.threshold - b.threshold);
    },
    async signUp() {
      const email = `metering.${Date.now()}.${users++}@example.com`;
      const res = await t.call("POST", "/v1/auth/register", {
        body: { email, password: PASSWORD, name: "Ada" },
      });
      expect(res.status, res.text).toBe(201);
      return { orgId: res.body.org.id as string, access: res.body.access_token as string };
    },
    async apiKey(org: string, scopes = ["usage:read"]) {
      const res = await t.call("POST", `/v1/orgs/${org}/api-keys`, {
        auth: "operator",
        body: { name: "Backend", scopes },
      });
      expect(res.status, res.text).toBe(201);
      return res.body.key as string;
    },
  };
  return api;
}

/** `"feature";r=3;t=60` → {r: 3, t: 60} */
function rateLimitHeader(value: string | null): { name: string; r: number; t: number } {
  const match = /^"([^"]+)";r=(\d+);t=(\d+)$/.exec(value ?? "");
  if (!match) throw new Error(`not a RateLimit header: ${value}`);
  return { name: match[1] as string, r: Number(match[2]), t: Number(match[3]) };
}

function expectProblem(res: { status: number; headers: Headers; body: any }, status: number, code: string) {
  expect(res.status).toBe(status);
  expect(res.headers.get("content-type")).toMatch(/^application\/problem\+json/);
  expect(res.body).toMatchObject({ status, code });
}

describe.each(appModes)("POST /v1/check, subscriptions and API keys ($name)", (mode) => {
  let dir: string;
  /** On kolekt naming `api_rate_feature: api_requests` (free: 10 a minute), whatever the bundled file says. */
  let t: TestApp;
  let api: ReturnType<typeof client>;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "tollgate-catalog-"));
    const catalog = catalogFile(dir, "api-rate", withApiRate);
    t = await createTestApp({ ...mode, env: { TOLLGATE_TEST_CLOCK: "1", TOLLGATE_CATALOG: catalog } });
    api = client(t);
  });
  afterAll(async () => {
    await t?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  describe("boolean features", () => {
    it("follow the plan, and a denial names the cheapest plan that grants the feature", async () => {
      const org = await api.newOrg();
      const off = await api.use(org, "premium_templates");
      expect(off.body).toEqual({
        allowed: false,
        feature: "premium_templates",
        type: "boolean",
        limit: null,
        used: null,
        remaining: null,
        resets_at: null,
        reason: "feature_not_in_plan",
        upgrade_url: expect.any(String),
        // The cheapest listed plan granting it: pay-as-you-go has no base fee (pro costs 9.99).
        upgrade_plan: "pay_as_you_go",
      });
      const url = new URL(off.body.upgrade_url);
      expect(url.pathname).toBe(`/dashboard/orgs/${org}/billing`);
      expect(Object.fromEntries(url.searchParams)).toEqual({
        feature: "premium_templates",
        plan: "pay_as_you_go",
      });
      // Only business and up have custom webhooks: business is the cheapest.
      expect((await api.use(org, "custom_webhook")).body).toMatchObject({
        allowed: false,
        reason: "feature_not_in_plan",
        upgrade_plan: "business",
      });
      expect((await api.use(org, "zapier_integration")).body).toMatchObject({ allowed: true });

      await api.putOn(org, "pro");
      const on = await api.use(org, "premium_templates");
      expect(on.body).toEqual({
        allowed: true,
        feature: "premium_templates",
        type: "boolean",
        limit: null,
        used: null,
        remaining: null,
        resets_at: null,
      });
      expect((await api.use(org, "custom_webhook")).body).toMatchObject({
        allowed: false,
        upgrade_plan: "business",
      });
    });
  });

  describe("metered features", () => {
    it("allow 10 kolekts on free, then deny the 11th until the period ends", async () => {
      const org = await api.newOrg();
      const sub = await api.subscription(org);
      expect(sub).toMatchObject({ plan: "free", plan_version: 1, interval: "month", status: "active" });
      for (let i = 1; i <= 10; i++) {
        const res = await api.use(org, "kolekts");
        expect(res.body).toEqual({
          allowed: true,
          feature: "kolekts",
          type: "metered",
          limit: 10,
          used: i,
          remaining: 10 - i,
          resets_at: sub.current_period_end,
        });
      }
      const denied = await api.use(org, "kolekts");
      expect(denied.body).toMatchObject({
        allowed: false,
        feature: "kolekts",
        reason: "quota_exceeded",
        used: 10,
        limit: 10,
        remaining: 0,
        resets_at: sub.current_period_end,
        upgrade_url: expect.stringContaining(`/dashboard/orgs/${org}/billing?feature=kolekts`),
      });
      // Free's kolekts are more on every paid plan; the cheapest by base fee is pay-as-you-go.
      expect(denied.body.upgrade_plan).toBe("pay_as_you_go");
      // A metered check sets no RateLimit headers.
      expect(denied.headers.get("ratelimit")).toBeNull();
      expect((await api.peek(org, "kolekts")).used).toBe(10);
    });

    it("deny an amount that would cross the limit, consuming nothing", async () => {
      const org = await api.newOrg();
      expect((await api.use(org, "kolekts", { amount: 8 })).body).toMatchObject({ allowed: true, used: 8 });
      expect((await api.use(org, "kolekts", { amount: 3 })).body).toMatchObject({
        allowed: false,
        reason: "quota_exceeded",
        used: 8,
        remaining: 2,
      });
      expect((await api.use(org, "kolekts", { amount: "2" })).body).toMatchObject({
        allowed: true,
        used: 10,
        remaining: 0,
      });
    });

    it("consume: false reports usage before the call and consumes nothing", async () => {
      const org = await api.newOrg();
      expect(await api.peek(org, "kolekts")).toMatchObject({ allowed: true, used: 0, remaining: 10 });
      expect(await api.peek(org, "kolekts", 10)).toMatchObject({ allowed: true, used: 0, remaining: 10 });
      expect(await api.peek(org, "kolekts", 11)).toMatchObject({
        allowed: false,
        reason: "quota_exceeded",
        used: 0,
      });
      await api.use(org, "kolekts", { amount: 4 });
      for (let i = 0; i < 3; i++) {
        expect(await api.peek(org, "kolekts", 6)).toMatchObject({ allowed: true, used: 4, remaining: 6 });
      }
      expect(await api.peek(org, "kolekts", 7)).toMatchObject({ allowed: false, used: 4, remaining: 6 });
      expect((await api.use(org, "kolekts")).body.used).toBe(5);
    });

    it("validate amounts, features and the org", async () => {
      const org = await api.newOrg();
      const fractional = await api.check({ org_id: org, feature: "kolekts", amount: 1.5 });
      expectProblem(fractional, 400, "validation_failed");
      expect(fractional.body.errors).toEqual([expect.objectContaining({ field: "amount" })]);

      const negative = await api.check({ org_id: org, feature: "kolekts", amount: -1 });
      expectProblem(negative, 400, "validation_failed");
      expect(negative.body.errors).toEqual([expect.objectContaining({ field: "amount" })]);

      const negativeRate = await api.check({ org_id: org, feature: "api_requests", amount: -1 });
      expectProblem(negativeRate, 400, "validation_failed");

      const unknown = await api.check({ org_id: org, feature: "teleportation" });
      expectProblem(unknown, 400, "validation_failed");
      expect(unknown.body.errors).toEqual([expect.objectContaining({ field: "feature" })]);

      // In a multi-feature call every bad item is named by its index.
      const many = await api.check({
        org_id: org,
        features: [{ feature: "kolekts" }, { feature: "kolekts", amount: "0.5" }, { feature: "nope" }],
      });
      expectProblem(many, 400, "validation_failed");
      expect(many.body.errors.map((e: { field: string }) => e.field).sort()).toEqual([
        "features.1.amount",
        "features.2.feature",
      ]);

      const nobody = await api.check({ org_id: "org_01jdz8m6v8x4h6q3b9k2n7c5rt", feature: "kolekts" });
      expectProblem(nobody, 404, "not_found");

      // None of the refused calls consumed anything.
      expect((await api.peek(org, "kolekts")).used).toBe(0);
    });

    it("name the bad field even when the body is neither a single nor a multi-feature check", async () => {
      const org = await api.newOrg();
      const fields = async (body: Record<string, unknown>) => {
        const res = await api.check({ org_id: org, ...body });
        expectProblem(res, 400, "validation_failed");
        return res.body.errors.map((e: { field: string }) => e.field);
      };
      expect(await fields({ feature: "kolekts", amount: true })).toEqual(["amount"]);
      expect(await fields({ feature: "kolekts", amount: null })).toEqual(["amount"]);
      expect(await fields({ features: [{ feature: "kolekts", amount: [1] }] })).toEqual([
        "features.0.amount",
      ]);
      expect(await fields({ feature: "kolekts", consum: false })).toEqual(["consum"]);
      expect(await fields({ feature: "kolekts", consume: "no" })).toEqual(["consume"]);
      expect((await api.peek(org, "kolekts")).used).toBe(0);
    });

    it("reset at the billing period boundary, with thresholds recorded once per period", async () => {
      const org = await api.newOrg();
      const first = await api.subscription(org);
      const end = Date.parse(first.current_period_end);

      await api.use(org, "kolekts", { amount: 7 });
      expect(await api.thresholds(org)).toEqual([]);
      await api.use(org, "kolekts"); // 8: 80 %
      await api.use(org, "kolekts"); // 9
      expect(await api.thresholds(org)).toEqual([
        { feature: "kolekts", threshold: 80, period_start: first.current_period_start },
      ]);
      await api.use(org, "kolekts"); // 10: 100 %
      for (let i = 0; i < 3; i++) expect((await api.use(org, "kolekts")).body.allowed).toBe(false);
      expect((await api.peek(org, "kolekts")).used).toBe(10);
      const once = [
        { feature: "kolekts", threshold: 80, period_start: first.current_period_start },
        { feature: "kolekts", threshold: 100, period_start: first.current_period_start },
      ];
      expect(await api.thresholds(org)).toEqual(once);

      // The last millisecond of the period still belongs to it.
      await api.advanceTo(end - 1);
      expect((await api.use(org, "kolekts")).body).toMatchObject({ allowed: false, used: 10 });

      await api.advanceTo(end);
      const next = await api.subscription(org);
      expect(next.current_period_start).toBe(first.current_period_end);
      expect((await api.use(org, "kolekts")).body).toMatchObject({
        allowed: true,
        used: 1,
        remaining: 9,
        resets_at: next.current_period_end,
      });
      expect(await api.thresholds(org)).toEqual(once);
      await api.use(org, "kolekts", { amount: 9 });
      expect((await api.use(org, "kolekts")).body).toMatchObject({ allowed: false, used: 10 });
      expect(await api.thresholds(org)).toEqual([
        ...once,
        { feature: "kolekts", threshold: 80, period_start: next.current_period_start },
        { feature: "kolekts", threshold: 100, period_start: next.current_period_start },
      ]);
    });
  });

  describe("thresholds", () => {
    it("are both recorded when one call crosses 80 % and 100 %", async () => {
      const org = await api.newOrg();
      const sub = await api.subscription(org);
      await api.use(org, "kolekts", { amount: 10 });
      expect(await api.thresholds(org)).toEqual([
        { feature: "kolekts", threshold: 80, period_start: sub.current_period_start },
        { feature: "kolekts", threshold: 100, period_start: sub.current_period_start },
      ]);
      // Asking never records one.
      const asked = await api.newOrg();
      expect(await api.peek(asked, "kolekts", 10)).toMatchObject({ allowed: true });
      expect(await api.thresholds(asked)).toEqual([]);
    });

    it("are crossed again at the new limit after a plan change mid-period, once each", async () => {
      const org = await api.newOrg();
      const sub = await api.subscription(org);
      const limits = async () => {
        const res = await t.call("GET", `/v1/orgs/${org}/threshold-events`, { auth: "operator" });
        return (res.body.data as { threshold: number; limit: string }[])
          .map((e) => `${e.threshold}% of ${e.limit}`)
          .sort();
      };
      await api.use(org, "kolekts", { amount: 8 });
      expect(await limits()).toEqual(["80% of 10"]);
      // Pro allows 100 a month: the 8 used so far count, and 80 % now means 80.
      await api.putOn(org, "pro");
      expect((await api.subscription(org)).current_period_start).toBe(sub.current_period_start);
      await api.use(org, "kolekts", { amount: 70 });
      expect(await limits()).toEqual(["80% of 10"]);
      await api.use(org, "kolekts", { amount: 2 });
      expect(await limits()).toEqual(["80% of 10", "80% of 100"]);
      await api.use(org, "kolekts", { amount: 20 });
      expect(await limits()).toEqual(["100% of 100", "80% of 10", "80% of 100"]);
      // Back on free and up to pro again: what was crossed at a limit is not crossed twice.
      await api.putOn(org, "free");
      await api.putOn(org, "pro");
      expect(await limits()).toEqual(["100% of 100", "80% of 10", "80% of 100"]);
    });
  });

  describe("limit features", () => {
    it("are allocations: consume takes a seat, a negative amount gives it back, never below 0", async () => {
      const org = await api.newOrg();
      expect((await api.use(org, "team_members")).body).toEqual({
        allowed: true,
        feature: "team_members",
        type: "limit",
        limit: 1,
        used: 1,
        remaining: 0,
        resets_at: null,
      });
      expect((await api.use(org, "team_members")).body).toMatchObject({
        allowed: false,
        reason: "limit_exceeded",
        used: 1,
        limit: 1,
        remaining: 0,
        upgrade_plan: "business",
      });
      expect((await api.use(org, "team_members", { amount: -1 })).body).toMatchObject({
        allowed: true,
        used: 0,
        remaining: 1,
      });
      // Releasing what is not held leaves 0, not -1 (that would be a free extra seat).
      expect((await api.use(org, "team_members", { amount: -1 })).body).toMatchObject({
        allowed: true,
        used: 0,
      });
      expect((await api.use(org, "team_members")).body).toMatchObject({ allowed: true, used: 1 });
      expect((await api.use(org, "team_members")).body).toMatchObject({ allowed: false, used: 1 });
    });

    it("are unlimited on a plan without a limit", async () => {
      const org = await api.newOrg();
      await api.putOn(org, "business");
      expect((await api.use(org, "team_members", { amount: 250 })).body).toMatchObject({
        allowed: true,
        limit: null,
        used: 250,
        remaining: null,
      });
    });
  });

  describe("rate features", () => {
    it("allow 10 a minute on free, then deny with RateLimit headers; GCRA frees one every 6 s", async () => {
      const org = await api.newOrg();
      for (let i = 1; i <= 10; i++) {
        const res = await api.use(org, "api_requests");
        expect(res.body).toMatchObject({
          allowed: true,
          feature: "api_requests",
          type: "rate",
          limit: 10,
          remaining: 10 - i,
        });
        expect(res.headers.get("ratelimit-policy")).toBe('"api_requests";q=10;w=60');
        expect(rateLimitHeader(res.headers.get("ratelimit"))).toMatchObject({
          name: "api_requests",
          r: 10 - i,
        });
        expect(res.headers.get("retry-after")).toBeNull();
      }
      const denied = await api.use(org, "api_requests");
      expect(denied.body).toMatchObject({
        allowed: false,
        reason: "rate_limited",
        limit: 10,
        remaining: 0,
        upgrade_plan: expect.any(String),
      });
      expect(denied.body.retry_after_ms).toBeGreaterThan(0);
      expect(denied.body.retry_after_ms).toBeLessThanOrEqual(6000);
      expect(denied.headers.get("ratelimit-policy")).toBe('"api_requests";q=10;w=60');
      const header = rateLimitHeader(denied.headers.get("ratelimit"));
      expect(header.r).toBe(0);
      expect(header.t).toBe(60);
      expect(denied.headers.get("retry-after")).toBe(String(Math.ceil(denied.body.retry_after_ms / 1000)));

      // The clock stands still: 6 s less a millisecond is not enough, 6 s frees exactly one.
      await api.advance(6 * second - 1);
      expect((await api.use(org, "api_requests")).body.allowed).toBe(false);
      await api.advance(1);
      expect((await api.use(org, "api_requests")).body).toMatchObject({ allowed: true, remaining: 0 });
      expect((await api.use(org, "api_requests")).body).toMatchObject({
        allowed: false,
        retry_after_ms: 6000,
      });
      // A whole window later the full burst is back.
      await api.advance(60 * second);
      expect(await api.peek(org, "api_requests")).toMatchObject({ allowed: true, remaining: 10 });
    });

    it("give an honest retry_after_ms: waiting it makes the same request pass", async () => {
      const org = await api.newOrg();
      await api.use(org, "api_requests", { amount: 10 });
      await api.advance(1 * second);
      const denied = (await api.use(org, "api_requests", { amount: 3 })).body;
      expect(denied).toMatchObject({ allowed: false, reason: "rate_limited" });
      // One request per 6 s: 1 s of the 18 s three need has passed.
      expect(denied.retry_after_ms).toBe(17 * second);
      await api.advance(denied.retry_after_ms - 1);
      expect((await api.use(org, "api_requests", { amount: 3 })).body.allowed).toBe(false);
      await api.advance(1);
      expect((await api.use(org, "api_requests", { amount: 3 })).body).toMatchObject({
        allowed: true,
        remaining: 0,
      });

      // More than the whole burst can never pass: no wait would help, so none may be promised.
      const fresh = await api.newOrg();
      const never = await api.check({ org_id: fresh, feature: "api_requests", amount: 11 });
      if (never.status === 200) {
        expect(never.body.allowed).toBe(false);
        if (never.body.retry_after_ms !== undefined || never.headers.get("retry-after") !== null) {
          await api.advance(never.body.retry_after_ms ?? Number(never.headers.get("retry-after")) * second);
          const retried = await api.use(fresh, "api_requests", { amount: 11 });
          expect(retried.body, "the promised retry was denied again").toMatchObject({ allowed: true });
        }
      } else {
        expectProblem(never, 400, "validation_failed");
      }
      expect(await api.peek(fresh, "api_requests")).toMatchObject({ remaining: 10 });
    });

    it("follow the plan: pro allows 100 a minute", async () => {
      const org = await api.newOrg();
      await api.putOn(org, "pro");
      const res = await api.use(org, "api_requests", { amount: 100 });
      expect(res.body).toMatchObject({ allowed: true, limit: 100, remaining: 0 });
      expect(res.headers.get("ratelimit-policy")).toBe('"api_requests";q=100;w=60');
      expect((await api.use(org, "api_requests")).body).toMatchObject({
        allowed: false,
        reason: "rate_limited",
      });
    });
  });

  describe("several features in one call", () => {
    const both = (org: string, order: string[] = ["api_requests", "kolekts"]) =>
      api.check({ org_id: org, features: order.map((feature) => ({ feature })) });

    it("consume all of them together, results in the order asked", async () => {
      const org = await api.newOrg();
      const res = await both(org);
      expect(res.status, res.text).toBe(200);
      expect(res.body).toEqual({
        allowed: true,
        results: [
          expect.objectContaining({ feature: "api_requests", allowed: true, remaining: 9 }),
          expect.objectContaining({ feature: "kolekts", allowed: true, used: 1 }),
        ],
      });
      expect(rateLimitHeader(res.headers.get("ratelimit")).r).toBe(9);
      const reversed = await both(org, ["kolekts", "api_requests"]);
      expect(reversed.body.results.map((r: { feature: string }) => r.feature)).toEqual([
        "kolekts",
        "api_requests",
      ]);
      expect(reversed.body.results[0]).toMatchObject({ used: 2 });
      expect(reversed.body.results[1]).toMatchObject({ remaining: 8 });
    });

    it("consume no rate when the quota is exhausted", async () => {
      const org = await api.newOrg();
      await api.use(org, "kolekts", { amount: 10 });
      for (const order of [
        ["api_requests", "kolekts"],
        ["kolekts", "api_requests"],
      ]) {
        const res = await both(org, order);
        expect(res.status, res.text).toBe(200);
        expect(res.body.allowed).toBe(false);
        expect(res.body.results.map((r: { feature: string }) => r.feature)).toEqual(order);
        const kolekts = res.body.results[order.indexOf("kolekts")];
        expect(kolekts).toMatchObject({ allowed: false, reason: "quota_exceeded", used: 10 });
        // Nothing consumed: the whole burst is still there.
        expect(rateLimitHeader(res.headers.get("ratelimit")).r).toBe(10);
      }
      expect(await api.peek(org, "api_requests")).toMatchObject({ remaining: 10 });
      expect(await api.peek(org, "kolekts")).toMatchObject({ used: 10 });
    });

    it("release nothing when another feature denies the call", async () => {
      const org = await api.newOrg();
      await api.use(org, "team_members");
      await api.use(org, "kolekts", { amount: 10 });
      const res = await api.check({
        org_id: org,
        features: [
          { feature: "team_members", amount: -1 },
          { feature: "kolekts", amount: 1 },
        ],
      });
      expect(res.body).toMatchObject({
        allowed: false,
        results: [{ feature: "team_members" }, { feature: "kolekts", reason: "quota_exceeded" }],
      });
      expect(await api.peek(org, "team_members")).toMatchObject({ used: 1 });
    });

    it("consume no quota when the rate is exhausted", async () => {
      const org = await api.newOrg();
      await api.use(org, "api_requests", { amount: 10 });
      const res = await both(org);
      expect(res.body).toMatchObject({
        allowed: false,
        results: [
          { feature: "api_requests", allowed: false, reason: "rate_limited" },
          { feature: "kolekts", used: 0 },
        ],
      });
      expect(res.body.results[0].retry_after_ms).toBeGreaterThan(0);
      expect(res.headers.get("retry-after")).not.toBeNull();
      expect(await api.peek(org, "kolekts")).toMatchObject({ used: 0, remaining: 10 });
      // A boolean the plan lacks blocks the rest too.
      await api.advance(60 * second);
      const withBoolean = await api.check({
        org_id: org,
        features: [{ feature: "kolekts" }, { feature: "premium_templates" }, { feature: "api_requests" }],
      });
      expect(withBoolean.body.allowed).toBe(false);
      expect(withBoolean.body.results[1]).toMatchObject({ reason: "feature_not_in_plan" });
      expect(await api.peek(org, "kolekts")).toMatchObject({ used: 0 });
      expect(await api.peek(org, "api_requests")).toMatchObject({ remaining: 10 });
    });
  });

  describe("items checked without being consumed (features[].consume)", () => {
    /** The request rate taken now, the monthly quota only checked (tracked later by the caller). */
    const rateAndQuota = (org: string, extra: Record<string, unknown> = {}, quota: object = {}) =>
      api.check({
        org_id: org,
        features: [{ feature: "api_requests" }, { feature: "kolekts", consume: false, ...quota }],
        ...extra,
      });

    it("consume the consumed items only, and never the checked ones", async () => {
      const org = await api.newOrg();
      const res = await rateAndQuota(org, {}, { amount: 3 });
      expect(res.status, res.text).toBe(200);
      expect(res.body).toEqual({
        allowed: true,
        results: [
          expect.objectContaining({ feature: "api_requests", allowed: true, remaining: 9 }),
          expect.objectContaining({ feature: "kolekts", allowed: true, used: 0, remaining: 10 }),
        ],
      });
      expect(rateLimitHeader(res.headers.get("ratelimit")).r).toBe(9);
      expect(await api.peek(org, "kolekts")).toMatchObject({ used: 0 });
      // The request's consume is the default an item overrides, both ways.
      const inverted = await api.check({
        org_id: org,
        consume: false,
        features: [{ feature: "api_requests", consume: true }, { feature: "kolekts" }],
      });
      expect(inverted.body.allowed).toBe(true);
      expect(inverted.body.results[0]).toMatchObject({ feature: "api_requests", remaining: 8 });
      expect(await api.peek(org, "api_requests")).toMatchObject({ remaining: 8 });
      expect(await api.peek(org, "kolekts")).toMatchObject({ used: 0 });
    });

    it("consume nothing when a checked item is denied: all or nothing", async () => {
      const org = await api.newOrg();
      await api.use(org, "kolekts", { amount: 10 });
      for (const quota of [{}, { amount: 1 }]) {
        const res = await rateAndQuota(org, {}, quota);
        expect(res.status, res.text).toBe(200);
        expect(res.body.allowed).toBe(false);
        expect(res.body.results).toEqual([
          expect.objectContaining({ feature: "api_requests", allowed: true, remaining: 10 }),
          expect.objectContaining({
            feature: "kolekts",
            allowed: false,
            reason: "quota_exceeded",
            used: 10,
            upgrade_url: expect.stringContaining(`/orgs/${org}/billing?feature=kolekts`),
          }),
        ]);
        // The rate was not taken: the whole burst is still there.
        expect(rateLimitHeader(res.headers.get("ratelimit")).r).toBe(10);
      }
      expect(await api.peek(org, "api_requests")).toMatchObject({ remaining: 10 });
      expect(await api.peek(org, "kolekts")).toMatchObject({ used: 10 });
      // A boolean the plan lacks, checked, blocks the rate as well.
      const other = await api.newOrg();
      const withBoolean = await api.check({
        org_id: other,
        features: [{ feature: "api_requests" }, { feature: "premium_templates", consume: false }],
      });
      expect(withBoolean.body).toMatchObject({
        allowed: false,
        results: [{ remaining: 10 }, { reason: "feature_not_in_plan" }],
      });
      expect(await api.peek(other, "api_requests")).toMatchObject({ remaining: 10 });
    });

    it("deny with Retry-After when the consumed rate is exhausted, the quota untouched", async () => {
      const org = await api.newOrg();
      await api.use(org, "api_requests", { amount: 10 });
      const res = await rateAndQuota(org);
      expect(res.body).toMatchObject({
        allowed: false,
        results: [
          { feature: "api_requests", allowed: false, reason: "rate_limited" },
          { feature: "kolekts", allowed: true, used: 0 },
        ],
      });
      expect(res.body.results[0].retry_after_ms).toBeGreaterThan(0);
      expect(Number(res.headers.get("retry-after"))).toBeGreaterThan(0);
      expect(await api.peek(org, "kolekts")).toMatchObject({ used: 0 });
    });

    it("apply an idempotency key to the whole request: a repeat replays the first answer", async () => {
      const org = await api.newOrg();
      const first = await rateAndQuota(org, { idempotency_key: "req-1" });
      expect(first.body.results[0]).toMatchObject({ remaining: 9 });
      // The handler ran and its usage was tracked: the quota is used up before the client, which
      // lost the first answer, repeats the request.
      await api.use(org, "kolekts", { amount: 10 });
      const again = await rateAndQuota(org, { idempotency_key: "req-1" });
      expect(again.headers.get("idempotent-replayed")).toBe("true");
      expect(again.body).toEqual(first.body);
      expect(await api.peek(org, "api_requests")).toMatchObject({ remaining: 9 });
    });

    it("refuse the key reused for a different request with 409, whichever part differs", async () => {
      const org = await api.newOrg();
      const first = await rateAndQuota(org, { idempotency_key: "req-2" }, { amount: 1 });
      expect(first.body.allowed).toBe(true);
      // The checked amount, an item's own consume, or the plain form of the same items.
      const variants = [
        () => rateAndQuota(org, { idempotency_key: "req-2" }, { amount: 5 }),
        () => rateAndQuota(org, { idempotency_key: "req-2" }, { amount: 1, consume: true }),
        () =>
          api.check({
            org_id: org,
            idempotency_key: "req-2",
            features: [{ feature: "api_requests" }, { feature: "kolekts" }],
          }),
      ];
      for (const variant of variants) expectProblem(await variant(), 409, "conflict");
      expect(await api.peek(org, "api_requests")).toMatchObject({ remaining: 9 });
      expect(await api.peek(org, "kolekts")).toMatchObject({ used: 0 });
    });

    it("store no denial by a checked item: nothing was consumed, so a repeat asks again", async () => {
      const org = await api.newOrg();
      await api.use(org, "kolekts", { amount: 10 });
      const denied = await rateAndQuota(org, { idempotency_key: "req-3" });
      expect(denied.body).toMatchObject({ allowed: false, results: [{}, { reason: "quota_exceeded" }] });
      expect(await api.peek(org, "api_requests")).toMatchObject({ remaining: 10 });
      // A new period: the quota is back, and the repeat is decided (and then stored) as a first call.
      await api.advance(32 * 86_400 * second);
      const later = await rateAndQuota(org, { idempotency_key: "req-3" });
      expect(later.headers.get("idempotent-replayed")).toBeNull();
      expect(later.body.allowed).toBe(true);
      const again = await rateAndQuota(org, { idempotency_key: "req-3" });
      expect(again.headers.get("idempotent-replayed")).toBe("true");
      expect(again.body).toEqual(later.body);
    });

    it("validate every item at once, named by its index", async () => {
      const org = await api.newOrg();
      const res = await api.check({
        org_id: org,
        features: [
          { feature: "kolekts", amount: 1.5 },
          { feature: "nope", consume: false },
        ],
      });
      expectProblem(res, 400, "validation_failed");
      expect(res.body.errors.map((e: { field: string }) => e.field)).toEqual([
        "features.0.amount",
        "features.1.feature",
      ]);
      const wrongType = await api.check({ org_id: org, features: [{ feature: "kolekts", consume: "no" }] });
      expectProblem(wrongType, 400, "validation_failed");
      expect(wrongType.body.errors.map((e: { field: string }) => e.field)).toEqual(["features.0.consume"]);
    });
  });

  describe("idempotency keys", () => {
    it("make a retry return the first answer and consume once", async () => {
      const org = await api.newOrg();
      const body = { org_id: org, feature: "kolekts", amount: 2, idempotency_key: "order-1" };
      const first = await api.check(body);
      expect(first.status, first.text).toBe(200);
      expect(first.body).toMatchObject({ allowed: true, used: 2 });
      expect(first.headers.get("idempotent-replayed")).toBeNull();
      const again = await api.check(body);
      expect(again.status).toBe(200);
      expect(again.body).toEqual(first.body);
      expect(again.headers.get("idempotent-replayed")).toBe("true");
      expect((await api.peek(org, "kolekts")).used).toBe(2);

      // The same key for a different request is a conflict, not a replay.
      const changed = await api.check({ ...body, amount: 3 });
      expectProblem(changed, 409, "conflict");
      expect((await api.peek(org, "kolekts")).used).toBe(2);
      // Keys are per org.
      const otherOrg = await api.newOrg();
      expect((await api.check({ ...body, org_id: otherOrg })).body).toMatchObject({ allowed: true, used: 2 });
    });

    it("consume once under ten concurrent calls with one key", async () => {
      const org = await api.newOrg();
      const body = {
        org_id: org,
        features: [{ feature: "kolekts" }, { feature: "api_requests" }],
        idempotency_key: "burst",
      };
      const answers = await Promise.all(Array.from({ length: 10 }, () => api.check(body)));
      for (const res of answers) {
        expect(res.status, res.text).toBe(200);
        expect(res.body).toEqual(answers[0]?.body);
      }
      expect(answers.filter((r) => r.headers.get("idempotent-replayed") !== "true")).toHaveLength(1);
      expect(answers[0]?.body.results).toEqual([
        expect.objectContaining({ feature: "kolekts", used: 1 }),
        expect.objectContaining({ feature: "api_requests", remaining: 9 }),
      ]);
      expect((await api.peek(org, "kolekts")).used).toBe(1);
      expect((await api.peek(org, "api_requests")).remaining).toBe(9);
    });

    it("let one request win a key used concurrently with different amounts; the rest replay or conflict", async () => {
      const org = await api.newOrg();
      const answers = await Promise.all(
        Array.from({ length: 8 }, (_, i) =>
          api.check({
            org_id: org,
            feature: "kolekts",
            amount: i % 2 === 0 ? 1 : 2,
            idempotency_key: "race",
          }),
        ),
      );
      const ok = answers.filter((r) => r.status === 200);
      for (const res of answers) if (res.status !== 200) expectProblem(res, 409, "conflict");
      expect(ok.filter((r) => r.headers.get("idempotent-replayed") !== "true")).toHaveLength(1);
      const used = ok[0]?.body.used as number;
      expect([1, 2]).toContain(used);
      for (const res of ok) expect(res.body).toEqual(ok[0]?.body);
      expect((await api.peek(org, "kolekts")).used).toBe(used);
    });

    it("are remembered for 24 hours of the app's clock", async () => {
      const org = await api.newOrg();
      const body = { org_id: org, feature: "kolekts", idempotency_key: "daily-digest" };
      expect((await api.check(body)).body).toMatchObject({ allowed: true, used: 1 });
      await api.advance(24 * 3600 * second - 60 * second);
      const replay = await api.check(body);
      expect(replay.body).toMatchObject({ used: 1 });
      expect(replay.headers.get("idempotent-replayed")).toBe("true");
      await api.advance(2 * 60 * second);
      const fresh = await api.check(body);
      expect(fresh.headers.get("idempotent-replayed"), "a day later the key is a new request").toBeNull();
      expect(fresh.body).toMatchObject({ allowed: true, used: 2 });
    });

    it("replay a denial even after room was made", async () => {
      const org = await api.newOrg();
      await api.use(org, "team_members");
      const body = { org_id: org, feature: "team_members", idempotency_key: "invite-bob" };
      expect((await api.check(body)).body).toMatchObject({ allowed: false, reason: "limit_exceeded" });
      await api.use(org, "team_members", { amount: -1 });
      const replay = await api.check(body);
      expect(replay.body).toMatchObject({ allowed: false, reason: "limit_exceeded" });
      expect(replay.headers.get("idempotent-replayed")).toBe("true");
      expect((await api.peek(org, "team_members")).used).toBe(0);
    });

    it("are ignored by consume: false", async () => {
      const org = await api.newOrg();
      const key = "ask-first";
      const asked = await api.check({
        org_id: org,
        feature: "kolekts",
        consume: false,
        idempotency_key: key,
      });
      expect(asked.body).toMatchObject({ allowed: true, used: 0 });
      expect(asked.headers.get("idempotent-replayed")).toBeNull();
      // The key was not taken by asking: the consuming call uses it.
      const consumed = await api.check({ org_id: org, feature: "kolekts", amount: 3, idempotency_key: key });
      expect(consumed.body).toMatchObject({ allowed: true, used: 3 });
      expect(consumed.headers.get("idempotent-replayed")).toBeNull();
      // Asking again with the key (and another amount) is no conflict and no replay.
      const again = await api.check({
        org_id: org,
        feature: "kolekts",
        consume: false,
        idempotency_key: key,
      });
      expect(again.status).toBe(200);
      expect(again.body).toMatchObject({ allowed: true, used: 3 });
      expect(again.headers.get("idempotent-replayed")).toBeNull();
    });
  });

  describe("subscriptions", () => {
    it("keep the period's usage across a plan change", async () => {
      const org = await api.newOrg();
      const before = await api.subscription(org);
      await api.use(org, "kolekts", { amount: 10 });
      expect((await api.use(org, "kolekts")).body.allowed).toBe(false);
      const pro = await api.putOn(org, "pro");
      expect(pro).toMatchObject({
        org_id: org,
        plan: "pro",
        plan_name: "Pro",
        interval: "month",
        price: "9.99",
        current_period_start: before.current_period_start,
        current_period_end: before.current_period_end,
      });
      expect(await api.peek(org, "kolekts")).toMatchObject({
        allowed: true,
        used: 10,
        limit: 100,
        remaining: 90,
      });
      expect((await api.use(org, "kolekts")).body).toMatchObject({ allowed: true, used: 11 });
      // Back to free: over the limit, so denied, and the usage is still there.
      await api.putOn(org, "free");
      expect((await api.use(org, "kolekts")).body).toMatchObject({
        allowed: false,
        reason: "quota_exceeded",
        used: 11,
        limit: 10,
        remaining: 0,
      });
    });

    it("refuse an interval the plan is not sold by and an unknown plan; without skip_payment a change is paid for", async () => {
      const org = await api.newOrg();
      const year = await api.setPlan(org, { plan: "pro", interval: "year", skip_payment: true });
      expectProblem(year, 400, "validation_failed");
      expect(year.body.errors).toEqual([expect.objectContaining({ field: "interval" })]);
      const unknown = await api.setPlan(org, { plan: "platinum", skip_payment: true });
      expectProblem(unknown, 400, "validation_failed");
      expect(unknown.body.errors).toEqual([expect.objectContaining({ field: "plan" })]);
      // A paid change: the org has no card, so it is sent to checkout and nothing changes yet.
      const unpaid = await api.setPlan(org, { plan: "pro" });
      expect(unpaid.status, unpaid.text).toBe(200);
      expect(unpaid.body.checkout_url).toMatch(/\/checkout\/chk_/);
      expect((await api.subscription(org)).plan).toBe("free");
    });

    it("can be read by the org's owner, but only the operator sets a plan", async () => {
      const owner = await api.signUp();
      const sub = await api.subscription(owner.orgId, owner.access);
      expect(sub).toMatchObject({ org_id: owner.orgId, plan: "free", plan_version: 1, status: "active" });
      expectProblem(
        await api.setPlan(owner.orgId, { plan: "pro", skip_payment: true }, owner.access),
        403,
        "forbidden",
      );
      expect((await api.subscription(owner.orgId)).plan).toBe("free");
      // Another tenant's subscription does not exist for this user.
      const stranger = await api.signUp();
      expectProblem(
        await t.call("GET", `/v1/orgs/${owner.orgId}/subscription`, { auth: stranger.access }),
        404,
        "not_found",
      );
      // Nor may a user call the check endpoint.
      expectProblem(
        await t.call("POST", "/v1/check", {
          auth: owner.access,
          body: { org_id: owner.orgId, feature: "kolekts" },
        }),
        403,
        "forbidden",
      );
    });

    it("end with the org: a deleted org's checks are 404", async () => {
      const org = await api.newOrg();
      expect((await api.use(org, "kolekts")).body.allowed).toBe(true);
      const deleted = await t.call("DELETE", `/v1/orgs/${org}`, { auth: "operator" });
      expect(deleted.status, deleted.text).toBe(204);
      expectProblem(await api.check({ org_id: org, feature: "kolekts" }), 404, "not_found");
      expectProblem(
        await api.check({ org_id: org, feature: "premium_templates", consume: false }),
        404,
        "not_found",
      );
      expectProblem(
        await t.call("GET", `/v1/orgs/${org}/subscription`, { auth: "operator" }),
        404,
        "not_found",
      );
      expectProblem(await api.setPlan(org, { plan: "pro", skip_payment: true }), 404, "not_found");
    });
  });

  describe("GET /v1/plans", () => {
    it("is public and lists the plans with prices and entitlements", async () => {
      const res = await t.call("GET", "/v1/plans");
      expect(res.status, res.text).toBe(200);
      const plans = res.body.data as any[];
      expect(plans.map((p) => p.key)).toEqual(["free", "pro", "business", "enterprise", "pay_as_you_go"]);
      expect(plans.filter((p) => p.default).map((p) => p.key)).toEqual(["free"]);
      // What the pricing page needs to name the entitlements and the usage charges.
      expect(res.body.features).toContainEqual({
        key: "kolekts",
        name: "Kolekts per month",
        description: null,
        type: "metered",
        meter: "kolekts",
      });
      expect(res.body.meters.map((m: any) => m.key)).toContain("api_calls");
      // With how each meter aggregates (the SDK's middleware tracks a quota's amount by it).
      expect(res.body.meters).toContainEqual({
        key: "kolekts",
        name: "Kolekts formatted",
        aggregation: "count",
      });
      const free = plans[0];
      expect(free).toMatchObject({
        name: "Free",
        version: 1,
        price: { month: "0" },
        currency: "USD",
        default: true,
      });
      expect(free.entitlements).toMatchObject({
        kolekts: { limit: 10 },
        api_requests: { limit: 10, window: "1m" },
        premium_templates: false,
        team_members: 1,
      });
      expect(plans[1]).toMatchObject({ key: "pro", price: { month: "9.99" }, default: false });
      expect(plans[2].entitlements.team_members).toBeNull();
      expect(plans[4].charges).toHaveLength(2);
      expect(res.text).not.toContain("window_ms");
    });
  });

  describe("org API keys", () => {
    it("default to 600 a minute when the catalog names no API rate feature", async () => {
      // A second process on the same database, whose catalog names no API rate feature.
      const plain = await createTestApp({
        ...mode,
        sharedDatabase: t.database,
        env: { TOLLGATE_TEST_CLOCK: "1", TOLLGATE_CATALOG: catalogFile(dir, "plain", withoutApiRate) },
      });
      try {
        const org = await client(plain).newOrg();
        const key = await client(plain).apiKey(org);
        const first = await plain.call("GET", `/v1/orgs/${org}/entitlements`, { auth: key });
        expect(first.status, first.text).toBe(200);
        expect(first.headers.get("ratelimit-policy")).toBe('"api";q=600;w=60');
        expect(rateLimitHeader(first.headers.get("ratelimit"))).toMatchObject({ name: "api", r: 599 });
        // The operator is not rate limited this way.
        const operator = await plain.call("GET", `/v1/orgs/${org}/entitlements`, { auth: "operator" });
        expect(operator.status).toBe(200);
        expect(operator.headers.get("ratelimit")).toBeNull();
      } finally {
        await plain.close();
      }
    });

    it("allows free's 10 a minute, then answers 429 rate_limited; other orgs are unaffected", async () => {
      const org = await api.newOrg();
      const other = await api.newOrg("Globex");
      const key = await api.apiKey(org);
      const otherKey = await api.apiKey(other);
      const entitlements = (k: string, o = org) => t.call("GET", `/v1/orgs/${o}/entitlements`, { auth: k });

      for (let i = 1; i <= 10; i++) {
        const res = await entitlements(key);
        expect(res.status, res.text).toBe(200);
        expect(res.headers.get("ratelimit-policy")).toBe('"api_requests";q=10;w=60');
        expect(rateLimitHeader(res.headers.get("ratelimit")).r).toBe(10 - i);
      }
      const denied = await entitlements(key);
      expectProblem(denied, 429, "rate_limited");
      expect(Number(denied.headers.get("retry-after"))).toBeGreaterThan(0);
      expect(denied.headers.get("ratelimit-policy")).toBe('"api_requests";q=10;w=60');
      expect(rateLimitHeader(denied.headers.get("ratelimit")).r).toBe(0);

      // Another org's key has its own budget; the operator has none.
      const fine = await entitlements(otherKey, other);
      expect(fine.status, fine.text).toBe(200);
      expect(rateLimitHeader(fine.headers.get("ratelimit")).r).toBe(9);
      expect((await entitlements("operator")).status).toBe(200);
      // Checks of the api_requests feature are a separate budget from the keys' own.
      expect(await api.peek(org, "api_requests")).toMatchObject({ allowed: true, remaining: 10 });

      // GCRA: one more every 6 s.
      await api.advance(6 * second);
      expect((await entitlements(key)).status).toBe(200);
      expect((await entitlements(key)).status).toBe(429);
    });

    it("follows a plan change: pro's keys get 100 a minute", async () => {
      const org = await api.newOrg();
      const key = await api.apiKey(org);
      await api.putOn(org, "pro");
      const res = await t.call("GET", `/v1/orgs/${org}/entitlements`, { auth: key });
      expect(res.status, res.text).toBe(200);
      expect(res.headers.get("ratelimit-policy")).toBe('"api_requests";q=100;w=60');
      expect(res.body).toMatchObject({ plan: "pro" });
    });
  });
});

describe.each(appModes)("plan versions and grandfathering ($name)", (mode) => {
  let dir: string;
  let db: TestDatabase;
  const prefix = uniquePrefix();

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "tollgate-catalog-"));
    db = await createTestDatabase(mode.database);
  });
  afterAll(async () => {
    await db?.drop();
    if (mode.redis) await deleteRedisPrefix(prefix);
    rmSync(dir, { recursive: true, force: true });
  });

  it("keeps subscribers on the version they bought until the operator migrates them", async () => {
    const v2 = catalogFile(dir, "v2", (yaml) =>
      yaml.replace(PRO_KOLEKTS, (_, head, tail) => `${head}50${tail}`),
    );
    const options = { ...mode, sharedDatabase: db.handle, redisPrefix: prefix };

    const a = await createTestApp({ ...options, env: { TOLLGATE_CATALOG: KOLEKT_PATH } });
    let early: string;
    try {
      const api = client(a);
      early = await api.newOrg("Early");
      expect(await api.putOn(early, "pro")).toMatchObject({ plan: "pro", plan_version: 1 });
      expect((await api.use(early, "kolekts", { amount: 60 })).body).toMatchObject({
        allowed: true,
        limit: 100,
        used: 60,
      });
    } finally {
      await a.close();
    }

    // The next deploy lowers pro's quota; a second process on the same database.
    const b = await createTestApp({ ...options, env: { TOLLGATE_CATALOG: v2 } });
    try {
      const api = client(b);
      const plans = (await b.call("GET", "/v1/plans")).body.data as any[];
      expect(plans.find((p) => p.key === "pro")).toMatchObject({
        version: 2,
        entitlements: { kolekts: { limit: 50 } },
      });
      expect(plans.find((p) => p.key === "free")).toMatchObject({ version: 1 });

      // The early subscriber keeps what they bought.
      expect(await api.subscription(early)).toMatchObject({ plan: "pro", plan_version: 1 });
      expect(await api.peek(early, "kolekts")).toMatchObject({ allowed: true, limit: 100, used: 60 });

      const late = await api.newOrg("Late");
      expect(await api.putOn(late, "pro")).toMatchObject({ plan: "pro", plan_version: 2 });
      expect(await api.peek(late, "kolekts")).toMatchObject({ limit: 50, used: 0 });
      expect((await api.use(late, "kolekts", { amount: 51 })).body).toMatchObject({
        allowed: false,
        reason: "quota_exceeded",
      });

      const migrated = await b.call("POST", "/v1/admin/plans/pro/migrate", { auth: "operator", body: {} });
      expect(migrated.status, migrated.text).toBe(200);
      expect(migrated.body).toEqual({ plan: "pro", migrated: 1, to_version: 2 });
      expect(await api.subscription(early)).toMatchObject({ plan: "pro", plan_version: 2 });
      // 60 used of the new 50: nothing left, and nothing lost.
      expect(await api.peek(early, "kolekts")).toMatchObject({
        allowed: false,
        reason: "quota_exceeded",
        limit: 50,
        used: 60,
        remaining: 0,
      });

      const audit = await b.call("GET", `/v1/orgs/${early}/audit-log`, { auth: "operator" });
      expect(audit.status, audit.text).toBe(200);
      expect(audit.body.data).toContainEqual(
        expect.objectContaining({
          action: "subscription.plan_migrated",
          metadata: expect.objectContaining({ plan: "pro", to_version: 2 }),
        }),
      );
      // Nothing left to move; an unknown plan is a 404; user sessions may not migrate.
      expect(
        (await b.call("POST", "/v1/admin/plans/pro/migrate", { auth: "operator", body: {} })).body,
      ).toMatchObject({ migrated: 0 });
      expectProblem(
        await b.call("POST", "/v1/admin/plans/platinum/migrate", { auth: "operator", body: {} }),
        404,
        "not_found",
      );
      const user = await api.signUp();
      expectProblem(
        await b.call("POST", "/v1/admin/plans/pro/migrate", { auth: user.access, body: {} }),
        403,
        "forbidden",
      );
    } finally {
      await b.close();
    }
  });
});

describe.each(appModes)("inputs that once went wrong ($name)", (mode) => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ database: mode.database, redis: mode.redis });
  });
  afterAll(() => t.close());

  const newOrg = async (plan: string) => {
    const org = (await t.call("POST", "/v1/orgs", { auth: "operator", body: { name: "Acme" } })).body
      .id as string;
    const set = await t.call("POST", `/v1/orgs/${org}/subscription`, {
      auth: "operator",
      body: { plan, skip_payment: true },
    });
    expect(set.status, set.text).toBe(200);
    return org;
  };
  const periodTotal = async (org: string, meter: string) => {
    await usageJournal(t.deps)?.awaitCommitted();
    const [row] = await t.database.query<{ quantity: string }>(
      sql`select quantity::text as quantity from usage_periods where org_id = ${org} and meter = ${meter}`,
    );
    return Number(row?.quantity ?? 0);
  };

  it("records a feature named twice in one call once per unit, in the counter and in Postgres", async () => {
    const org = await newOrg("pro");
    const res = await t.call("POST", "/v1/check", {
      auth: "operator",
      body: {
        org_id: org,
        features: [
          { feature: "kolekts", amount: 3 },
          { feature: "kolekts", amount: 2 },
        ],
      },
    });
    expect(res.status, res.text).toBe(200);
    expect(res.body.allowed).toBe(true);
    expect(res.body.results[1]).toMatchObject({ used: 5 });
    expect(await periodTotal(org, "kolekts")).toBe(5);
    const ent = await t.call("GET", `/v1/orgs/${org}/entitlements`, { auth: "operator" });
    expect(ent.body.features.find((f: { feature: string }) => f.feature === "kolekts")).toMatchObject({
      used: 5,
    });
  });

  it("refuses the NUL character per event and per field, never as a database error", async () => {
    const org = await newOrg("free");
    const res = await t.call("POST", "/v1/events", {
      auth: "operator",
      body: {
        events: [
          { id: "fine", org_id: org, meter: "api_calls" },
          { id: "bad-props", org_id: org, meter: "api_calls", properties: { a: "x\u0000y" } },
          { id: "bad\u0000id", org_id: org, meter: "api_calls" },
          { id: "bad-org", org_id: `${org}\u0000`, meter: "api_calls" },
          { id: "bad-key", org_id: org, meter: "api_calls", properties: { nested: [{ "k\u0000": 1 }] } },
          // The six characters \u0000 as text are not a NUL: stored as sent.
          { id: "escaped", org_id: org, meter: "api_calls", properties: { a: "\\u0000", "\\u0000": "b" } },
        ],
      },
    });
    expect(res.status, res.text).toBe(202);
    expect(res.body.accepted).toBe(2);
    expect(res.body.rejected.map((r: { index: number; code: string }) => [r.index, r.code])).toEqual([
      [1, "invalid_properties"],
      [2, "invalid_id"],
      [3, "invalid_org"],
      [4, "invalid_properties"],
    ]);
    const [escaped] = await t.database.query<{ properties: unknown }>(
      sql`select properties from usage_events where org_id = ${org} and event_id = 'escaped'`,
    );
    expect(escaped?.properties).toEqual({ a: "\\u0000", "\\u0000": "b" });
    const check = await t.call("POST", "/v1/check", {
      auth: "operator",
      body: { org_id: org, feature: "kolekts", idempotency_key: "a\u0000b" },
    });
    expect(check.status).toBe(400);
    expect(check.body.errors.map((e: { field: string }) => e.field)).toEqual(["idempotency_key"]);
    const read = await t.call("GET", `/v1/orgs/${encodeURIComponent(`${org}\u0000`)}/entitlements`, {
      auth: "operator",
    });
    expect(read.status).toBe(404);
  });
});
