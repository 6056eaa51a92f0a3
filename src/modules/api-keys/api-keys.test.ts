import { and, eq } from "drizzle-orm";
import { PgDialect } from "drizzle-orm/pg-core";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { appModes, createTestApp, deleteRedisPrefix, type TestApp } from "../../../test/support/app.js";
import { createTestDatabase, type TestDatabase, uniquePrefix } from "../../../test/support/storage.js";
import { apiKeys, auditLog, orgs, subscriptions } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { newId } from "../../lib/ids.js";
import { defaultSubscription } from "../plans/subscriptions.js";
import { generateKey, KEY_PATTERN } from "./format.js";
import { closeApiKeys, flushKeyUsage, verifyApiKey } from "./verify.js";

const hour = 3_600_000;

/** An org made directly in the database, with the subscription every org has. */
async function newOrg(t: TestApp, name: string): Promise<string> {
  const id = newId("org");
  await t.database.db.insert(orgs).values({ id, name });
  await t.database.db.insert(subscriptions).values(defaultSubscription(t.deps, id, t.deps.clock.now()));
  return id;
}

/** One character changed, keeping the alphabet: exactly what a typo does. */
function typo(key: string): string {
  const i = 20;
  return key.slice(0, i) + (key[i] === "a" ? "b" : "a") + key.slice(i + 1);
}

describe.each(appModes)("API keys ($name)", (mode) => {
  let t: TestApp;
  let org: string;
  let otherOrg: string;
  /** Every key issued in this suite, to prove none reached the logs. */
  const issued: string[] = [];

  beforeAll(async () => {
    t = await createTestApp({ ...mode, env: { TOLLGATE_TEST_CLOCK: "1" } });
    org = await newOrg(t, "Acme");
    otherOrg = await newOrg(t, "Globex");
  });
  afterAll(async () => {
    await closeApiKeys(t.deps);
    await t.close();
  });

  const create = async (body: Record<string, unknown>, orgId = org, auth = "operator") => {
    const res = await t.call("POST", `/v1/orgs/${orgId}/api-keys`, { auth, body });
    if (typeof res.body?.key === "string") issued.push(res.body.key);
    return res;
  };
  const newKey = async (
    scopes: string[] = ["keys:read"],
    orgId = org,
    extra: Record<string, unknown> = {},
  ) => {
    const res = await create({ name: "Backend", scopes, ...extra }, orgId);
    expect(res.status, res.text).toBe(201);
    return res.body as { id: string; key: string; prefix: string };
  };
  const rotate = async (id: string, body?: Record<string, unknown>) => {
    const res = await t.call("POST", `/v1/orgs/${org}/api-keys/${id}/rotate`, { auth: "operator", body });
    if (typeof res.body?.key === "string") issued.push(res.body.key);
    return res;
  };
  const verify = (key: string) => t.call("POST", "/v1/keys/verify", { auth: "operator", body: { key } });
  const list = (orgId = org, auth = "operator") => t.call("GET", `/v1/orgs/${orgId}/api-keys`, { auth });
  const advance = async (ms: number) => {
    const to = new Date(t.deps.clock.nowMs() + ms).toISOString();
    const res = await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: { to } });
    expect(res.status, res.text).toBe(200);
  };

  describe("happy paths", () => {
    it("issues a key once and never shows it again", async () => {
      const expiresAt = new Date(t.deps.clock.nowMs() + 24 * hour).toISOString();
      const res = await create({ name: "CI", scopes: ["keys:read", "usage:read"], expires_at: expiresAt });
      expect(res.status, res.text).toBe(201);
      expect(res.body).toMatchObject({
        name: "CI",
        scopes: ["keys:read", "usage:read"],
        expires_at: expiresAt,
      });
      expect(res.body.id).toMatch(/^key_/);
      expect(res.body.key).toMatch(KEY_PATTERN);
      expect(res.body.prefix).toBe(res.body.key.slice(0, 12));

      const listed = await list();
      expect(listed.status).toBe(200);
      const item = listed.body.data.find((k: { id: string }) => k.id === res.body.id);
      expect(item).toEqual({
        id: res.body.id,
        name: "CI",
        prefix: res.body.prefix,
        scopes: ["keys:read", "usage:read"],
        created_at: expect.any(String),
        expires_at: expiresAt,
        last_used_at: null,
        revoked_at: null,
        replaced_by: null,
      });
      const [row] = await t.database.db.select().from(apiKeys).where(eq(apiKeys.id, res.body.id));
      expect(row?.keyHash).toMatch(/^[0-9a-f]{64}$/);
      expect(listed.text).not.toContain(res.body.key);
      expect(listed.text).not.toContain(row?.keyHash);
    });

    it("verifies a valid key with its org, scopes and plan", async () => {
      const key = await newKey(["keys:read", "org:read"]);
      const res = await verify(key.key);
      expect(res.status).toBe(200);
      expect(res.body).toEqual({
        valid: true,
        org_id: org,
        key_id: key.id,
        scopes: ["keys:read", "org:read"],
        plan: t.deps.catalog.default_plan,
      });
      // Again, from the cache.
      expect((await verify(key.key)).body.valid).toBe(true);
    });

    it("lets a key with keys:read list its own org's keys as a Bearer credential", async () => {
      const key = await newKey(["keys:read"]);
      const res = await list(org, key.key);
      expect(res.status, res.text).toBe(200);
      expect(res.body.data.map((k: { id: string }) => k.id)).toContain(key.id);
    });

    it("rotates with a grace period: the old key works until it ends, then is revoked", async () => {
      const old = await newKey(["keys:read"]);
      const res = await rotate(old.id, { grace_period_seconds: 600 });
      expect(res.status, res.text).toBe(201);
      expect(res.body.key).toMatch(KEY_PATTERN);
      expect(res.body.key).not.toBe(old.key);
      expect(res.body).toMatchObject({ name: "Backend", scopes: ["keys:read"], revoked_at: null });
      expect(res.body.replaced).toMatchObject({
        id: old.id,
        replaced_by: res.body.id,
        revoked_at: new Date(t.deps.clock.nowMs() + 600_000).toISOString(),
      });

      expect((await verify(old.key)).body).toMatchObject({ valid: true, key_id: old.id });
      expect((await verify(res.body.key)).body).toMatchObject({ valid: true, key_id: res.body.id });
      await advance(599_000);
      expect((await verify(old.key)).body.valid).toBe(true);
      await advance(2_000);
      expect((await verify(old.key)).body).toEqual({ valid: false, reason: "revoked" });
      expect((await verify(res.body.key)).body.valid).toBe(true);
    });

    it("rotates without a grace period (and without a body): the old key stops at once", async () => {
      const old = await newKey(["keys:read"]);
      expect((await verify(old.key)).body.valid).toBe(true);
      const res = await rotate(old.id);
      expect(res.status, res.text).toBe(201);
      expect((await verify(old.key)).body).toEqual({ valid: false, reason: "revoked" });
      expect((await verify(res.body.key)).body.valid).toBe(true);
    });

    it("revokes: verify says revoked and the key no longer authenticates", async () => {
      const key = await newKey(["keys:read"]);
      expect((await list(org, key.key)).status).toBe(200);
      const res = await t.call("DELETE", `/v1/orgs/${org}/api-keys/${key.id}`, { auth: "operator" });
      expect(res.status, res.text).toBe(200);
      expect(res.body.revoked_at).toBe(t.deps.clock.now().toISOString());
      expect((await verify(key.key)).body).toEqual({ valid: false, reason: "revoked" });
      const refused = await list(org, key.key);
      expect(refused.status).toBe(401);
      expect(refused.body.code).toBe("unauthenticated");
      // Revoking again changes nothing.
      const again = await t.call("DELETE", `/v1/orgs/${org}/api-keys/${key.id}`, { auth: "operator" });
      expect(again.status).toBe(200);
      expect(again.body.revoked_at).toBe(res.body.revoked_at);
    });

    it("revoking during a rotation's grace period ends it at once", async () => {
      const old = await newKey(["keys:read"]);
      expect((await rotate(old.id, { grace_period_seconds: 3600 })).status).toBe(201);
      expect((await verify(old.key)).body.valid).toBe(true);
      expect(
        (await t.call("DELETE", `/v1/orgs/${org}/api-keys/${old.id}`, { auth: "operator" })).status,
      ).toBe(200);
      expect((await verify(old.key)).body).toEqual({ valid: false, reason: "revoked" });
    });

    it("expires keys by the app clock", async () => {
      const key = await newKey(["keys:read"], org, {
        expires_at: new Date(t.deps.clock.nowMs() + hour).toISOString(),
      });
      expect((await verify(key.key)).body.valid).toBe(true);
      await advance(2 * hour);
      expect((await verify(key.key)).body).toEqual({ valid: false, reason: "expired" });
      expect((await list(org, key.key)).status).toBe(401);
    });

    it("writes the audit log for creation, rotation and revocation, without the key", async () => {
      const key = await newKey(["keys:read", "usage:read"]);
      const rotated = await rotate(key.id, { grace_period_seconds: 60 });
      await t.call("DELETE", `/v1/orgs/${org}/api-keys/${rotated.body.id}`, { auth: "operator" });
      const rows = await t.database.db.select().from(auditLog).where(eq(auditLog.orgId, org));
      const about = (target: string) => rows.filter((r) => r.targetId === target).map((r) => r.action);
      expect(about(key.id).sort()).toEqual(["api_key.created", "api_key.rotated"]);
      // The replacement is named in the rotation entry (metadata.replaced_by), not created on its own.
      expect(about(rotated.body.id)).toEqual(["api_key.revoked"]);
      expect(
        rows.find((r) => r.action === "api_key.rotated" && r.targetId === key.id)?.metadata,
      ).toMatchObject({
        replaced_by: rotated.body.id,
        grace_period_seconds: 60,
      });
      const created = rows.find((r) => r.targetId === key.id && r.action === "api_key.created");
      expect(created).toMatchObject({
        orgId: org,
        actorType: "operator",
        actorId: null,
        targetType: "api_key",
        metadata: { name: "Backend", scopes: ["keys:read", "usage:read"] },
      });
      const text = JSON.stringify(rows);
      for (const k of issued) expect(text).not.toContain(k);
    });

    it("records last use in memory and writes it in one UPDATE per flush", async () => {
      const first = await newKey(["keys:read"]);
      const second = await newKey(["keys:read"]);
      await flushKeyUsage(t.deps);
      const query = vi.spyOn(t.deps.database, "query");
      try {
        for (let i = 0; i < 3; i++) expect((await verify(first.key)).body.valid).toBe(true);
        for (let i = 0; i < 2; i++) expect((await list(org, second.key)).status).toBe(200);
        const dialect = new PgDialect();
        const updates = () =>
          query.mock.calls.filter(([statement]) =>
            dialect.sqlToQuery(statement).sql.includes("update api_keys"),
          );
        expect(updates()).toHaveLength(0);
        await flushKeyUsage(t.deps);
        expect(updates()).toHaveLength(1);
        await flushKeyUsage(t.deps);
        expect(updates()).toHaveLength(1);
      } finally {
        query.mockRestore();
      }
      const rows = await t.database.db.select().from(apiKeys).where(eq(apiKeys.orgId, org));
      const lastUsed = (id: string) => rows.find((r) => r.id === id)?.lastUsedAt?.toISOString();
      expect(lastUsed(first.id)).toBe(t.deps.clock.now().toISOString());
      expect(lastUsed(second.id)).toBe(t.deps.clock.now().toISOString());
      const listed = (await list()).body.data.find((k: { id: string }) => k.id === first.id);
      expect(listed.last_used_at).toBe(t.deps.clock.now().toISOString());
    });
  });

  describe("errors", () => {
    it("answers malformed to a mistyped key, without touching storage", async () => {
      const key = await newKey(["keys:read"]);
      const mistyped = typo(key.key);
      expect((await verify(mistyped)).body).toEqual({ valid: false, reason: "malformed" });
      const noStorage = new Proxy(
        {},
        {
          get() {
            throw new Error("storage was touched");
          },
        },
      );
      const deps = { ...t.deps, database: noStorage, pubsub: noStorage } as unknown as Deps;
      expect(await verifyApiKey(deps, mistyped)).toEqual({ valid: false, reason: "malformed" });
      expect((await verify("not a key")).body).toEqual({ valid: false, reason: "malformed" });
    });

    it("answers unknown to a well-formed key that was never issued", async () => {
      const { key } = generateKey();
      expect((await verify(key)).body).toEqual({ valid: false, reason: "unknown" });
      expect((await verify(key)).body).toEqual({ valid: false, reason: "unknown" });
      expect((await list(org, key)).status).toBe(401);
    });

    it("refuses scopes that are not API key scopes, naming them, and an empty list", async () => {
      const bad = await create({ name: "x", scopes: ["keys:read", "keys:manage"] });
      expect(bad.status).toBe(400);
      expect(bad.body.code).toBe("validation_failed");
      expect(bad.body.detail).toContain('"keys:manage" is not an API key scope');
      expect(bad.body.errors).toEqual([expect.objectContaining({ field: "scopes.1", location: "body" })]);
      const empty = await create({ name: "x", scopes: [] });
      expect(empty.status).toBe(400);
      expect(empty.body.errors[0].field).toBe("scopes");
    });

    it("refuses an expiry that is not in the future by the app clock", async () => {
      const res = await create({
        name: "x",
        scopes: ["keys:read"],
        expires_at: t.deps.clock.now().toISOString(),
      });
      expect(res.status).toBe(400);
      expect(res.body.errors).toEqual([expect.objectContaining({ field: "expires_at" })]);
    });

    it("refuses unknown fields, on create and on verify", async () => {
      const res = await create({ name: "x", scopes: ["keys:read"], admin: true });
      expect(res.status).toBe(400);
      expect(res.body.errors[0]).toMatchObject({ field: "admin", code: "unknown_field" });
      const key = await newKey();
      const check = await t.call("POST", "/v1/keys/verify", {
        auth: "operator",
        body: { key: key.key, feature: "kolekts", amont: 1 },
      });
      expect(check.status).toBe(400);
      expect(check.body.errors.map((e: { field: string }) => e.field)).toEqual(["amont"]);
    });

    it("verifies a key and checks a feature for its org in one call", async () => {
      const key = await newKey();
      const res = await t.call("POST", "/v1/keys/verify", {
        auth: "operator",
        body: { key: key.key, feature: "kolekts", amount: 3 },
      });
      expect(res.status, res.text).toBe(200);
      expect(res.body).toMatchObject({ valid: true, org_id: org, plan: "free" });
      expect(res.body.check).toMatchObject({
        allowed: true,
        feature: "kolekts",
        limit: 10,
        used: 3,
        remaining: 7,
      });
      const over = await t.call("POST", "/v1/keys/verify", {
        auth: "operator",
        body: { key: key.key, feature: "kolekts", amount: 8 },
      });
      expect(over.body.check).toMatchObject({ allowed: false, reason: "quota_exceeded", used: 3 });
    });

    it("verifies a key and checks several features in one call, all consumed or none", async () => {
      const own = await newOrg(t, "Initech");
      const key = await newKey(["usage:read"], own);
      const verifyMany = (features: unknown[], extra: Record<string, unknown> = {}) =>
        t.call("POST", "/v1/keys/verify", { auth: "operator", body: { key: key.key, features, ...extra } });

      const res = await verifyMany([{ feature: "api_requests" }, { feature: "kolekts", amount: 4 }]);
      expect(res.status, res.text).toBe(200);
      expect(res.body).toMatchObject({ valid: true, org_id: own, key_id: key.id, plan: "free" });
      expect(res.body.check).toBeUndefined();
      expect(res.body.checks).toEqual({
        allowed: true,
        results: [
          expect.objectContaining({ allowed: true, feature: "api_requests", type: "rate", limit: 10 }),
          expect.objectContaining({ allowed: true, feature: "kolekts", used: 4, remaining: 6 }),
        ],
      });
      // The same RateLimit headers as /v1/check.
      expect(res.headers.get("ratelimit-policy")).toBe('"api_requests";q=10;w=60');
      expect(res.headers.get("ratelimit")).toMatch(/^"api_requests";r=9;t=\d+$/);

      // One denied feature denies the call: nothing is consumed, the rate limiter included.
      const denied = await verifyMany([{ feature: "api_requests" }, { feature: "kolekts", amount: 7 }]);
      expect(denied.status, denied.text).toBe(200);
      expect(denied.body.checks.allowed).toBe(false);
      expect(denied.body.checks.results[1]).toMatchObject({
        allowed: false,
        feature: "kolekts",
        reason: "quota_exceeded",
        used: 4,
        upgrade_plan: expect.any(String),
        upgrade_url: expect.stringContaining(`/orgs/${own}/billing?feature=kolekts`),
      });
      expect(denied.headers.get("ratelimit")).toMatch(/^"api_requests";r=9;t=\d+$/);
      const dry = await verifyMany([{ feature: "kolekts" }, { feature: "premium_templates" }], {
        consume: false,
      });
      expect(dry.body.checks.allowed).toBe(false);
      expect(dry.body.checks.results).toEqual([
        expect.objectContaining({ allowed: true, feature: "kolekts", used: 4 }),
        expect.objectContaining({
          allowed: false,
          feature: "premium_templates",
          reason: "feature_not_in_plan",
        }),
      ]);

      // Idempotent as /v1/check: the repeat replays the first answer and consumes nothing more.
      const body = { features: [{ feature: "kolekts", amount: 2 }], idempotency_key: "verify-many-1" };
      const first = await verifyMany(body.features, { idempotency_key: body.idempotency_key });
      const again = await verifyMany(body.features, { idempotency_key: body.idempotency_key });
      expect(first.body.checks.results[0]).toMatchObject({ allowed: true, used: 6 });
      expect(again.body.checks).toEqual(first.body.checks);
      expect(again.headers.get("idempotent-replayed")).toBe("true");
      const after = await t.call("GET", `/v1/orgs/${own}/entitlements`, { auth: "operator" });
      expect(after.body.features.find((f: { feature: string }) => f.feature === "kolekts").used).toBe(6);

      // An invalid key is still just a verdict, whatever the features.
      const invalid = await t.call("POST", "/v1/keys/verify", {
        auth: "operator",
        body: { key: typo(key.key), features: [{ feature: "kolekts" }] },
      });
      expect(invalid.body).toEqual({ valid: false, reason: "malformed" });
    });

    it("verifies a key, takes the rate and only checks the quota in one call (features[].consume)", async () => {
      const own = await newOrg(t, "Umbrella");
      const key = await newKey(["usage:read"], own);
      const verify = (kolekts: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
        t.call("POST", "/v1/keys/verify", {
          auth: "operator",
          body: {
            key: key.key,
            features: [{ feature: "api_requests" }, { feature: "kolekts", consume: false, ...kolekts }],
            ...extra,
          },
        });
      const used = async (feature: string) => {
        const res = await t.call("GET", `/v1/orgs/${own}/entitlements`, { auth: "operator" });
        return res.body.features.find((f: { feature: string }) => f.feature === feature);
      };

      const ok = await verify({ amount: 4 });
      expect(ok.status, ok.text).toBe(200);
      expect(ok.body.checks).toEqual({
        allowed: true,
        results: [
          expect.objectContaining({ feature: "api_requests", allowed: true, remaining: 9 }),
          expect.objectContaining({ feature: "kolekts", allowed: true, used: 0, remaining: 10 }),
        ],
      });
      expect(ok.headers.get("ratelimit")).toMatch(/^"api_requests";r=9;t=\d+$/);
      // The quota item is never consumed.
      expect((await used("kolekts")).used).toBe(0);

      // The quota exhausted: denied, and the rate item is not consumed either.
      const fill = await t.call("POST", "/v1/check", {
        auth: "operator",
        body: { org_id: own, feature: "kolekts", amount: 10 },
      });
      expect(fill.body.allowed).toBe(true);
      const denied = await verify({});
      expect(denied.status, denied.text).toBe(200);
      expect(denied.body).toMatchObject({ valid: true, org_id: own });
      expect(denied.body.checks).toEqual({
        allowed: false,
        results: [
          expect.objectContaining({ feature: "api_requests", allowed: true, remaining: 9 }),
          expect.objectContaining({
            feature: "kolekts",
            allowed: false,
            reason: "quota_exceeded",
            used: 10,
            upgrade_url: expect.stringContaining(`/orgs/${own}/billing?feature=kolekts`),
          }),
        ],
      });
      expect(denied.headers.get("ratelimit")).toMatch(/^"api_requests";r=9;t=\d+$/);
      expect((await used("api_requests")).remaining).toBe(9);
      expect((await used("kolekts")).used).toBe(10);

      // A boolean only checked (consume: false on the request, the rate item consumed by its own flag).
      const withBoolean = await t.call("POST", "/v1/keys/verify", {
        auth: "operator",
        body: {
          key: key.key,
          consume: false,
          features: [{ feature: "api_requests", consume: true }, { feature: "zapier_integration" }],
        },
      });
      expect(withBoolean.body.checks).toMatchObject({
        allowed: true,
        results: [
          { feature: "api_requests", remaining: 8 },
          { feature: "zapier_integration", allowed: true },
        ],
      });
      const badField = await verify({ consume: "no" });
      expect(badField.status).toBe(400);
      expect(badField.body.errors.map((e: { field: string }) => e.field)).toEqual(["features.1.consume"]);
    });

    it("refuses feature with features, amount with features, and names a bad feature by index", async () => {
      const key = await newKey();
      const call = (body: Record<string, unknown>) =>
        t.call("POST", "/v1/keys/verify", { auth: "operator", body: { key: key.key, ...body } });
      const both = await call({ feature: "kolekts", features: [{ feature: "kolekts" }] });
      expect(both.status).toBe(400);
      expect(both.body.code).toBe("validation_failed");
      expect(both.body.errors).toEqual([
        expect.objectContaining({ field: "features", message: expect.stringContaining("feature") }),
      ]);
      const amount = await call({ amount: 2, features: [{ feature: "kolekts" }] });
      expect(amount.status).toBe(400);
      expect(amount.body.errors.map((e: { field: string }) => e.field)).toEqual(["amount"]);
      const empty = await call({ features: [] });
      expect(empty.status).toBe(400);
      expect(empty.body.errors.map((e: { field: string }) => e.field)).toEqual(["features"]);
      const unknown = await call({ features: [{ feature: "kolekts" }, { feature: "nope" }] });
      expect(unknown.status).toBe(400);
      expect(unknown.body.errors).toEqual([
        expect.objectContaining({ field: "features.1.feature", code: "unknown_feature" }),
      ]);
      const extra = await call({ features: [{ feature: "kolekts", amont: 1 }] });
      expect(extra.status).toBe(400);
      expect(extra.body.errors.map((e: { field: string }) => e.field)).toEqual(["features.0.amont"]);
    });

    it("refuses a grace period over a week, and rotating a key twice or after revocation", async () => {
      const key = await newKey();
      expect((await rotate(key.id, { grace_period_seconds: 8 * 86_400 })).status).toBe(400);
      expect((await rotate(key.id, { grace_period_seconds: 60 })).status).toBe(201);
      const twice = await rotate(key.id, { grace_period_seconds: 60 });
      expect(twice.status).toBe(409);
      expect(twice.body.code).toBe("conflict");
      const revoked = await newKey();
      await t.call("DELETE", `/v1/orgs/${org}/api-keys/${revoked.id}`, { auth: "operator" });
      expect((await rotate(revoked.id)).status).toBe(409);
    });

    it("answers 404 for keys and orgs that do not exist", async () => {
      const missing = newId("key");
      expect(
        (await t.call("DELETE", `/v1/orgs/${org}/api-keys/${missing}`, { auth: "operator" })).status,
      ).toBe(404);
      expect((await rotate(missing)).status).toBe(404);
      expect((await list(newId("org"))).status).toBe(404);
    });
  });

  describe("security", () => {
    it("refuses a key without the keys:read scope (403)", async () => {
      const key = await newKey(["org:read"]);
      const res = await list(org, key.key);
      expect(res.status).toBe(403);
      expect(res.body.code).toBe("forbidden");
    });

    it("answers 404 when a key reaches for another org's keys", async () => {
      const key = await newKey(["keys:read"]);
      const res = await list(otherOrg, key.key);
      expect(res.status).toBe(404);
      expect(res.body.code).toBe("not_found");
    });

    it("never lets a key manage keys: keys:manage cannot be granted", async () => {
      const key = await newKey(["keys:read"]);
      const res = await create({ name: "escalate", scopes: ["keys:read"] }, org, key.key);
      expect(res.status).toBe(403);
      const target = await newKey(["keys:read"]);
      const revoke = await t.call("DELETE", `/v1/orgs/${org}/api-keys/${target.id}`, { auth: key.key });
      expect(revoke.status).toBe(403);
      expect((await verify(target.key)).body.valid).toBe(true);
    });

    it("keeps one org's key ids out of another org's routes", async () => {
      const theirs = await newKey(["keys:read"], otherOrg);
      const revoke = await t.call("DELETE", `/v1/orgs/${org}/api-keys/${theirs.id}`, { auth: "operator" });
      expect(revoke.status).toBe(404);
      expect((await rotate(theirs.id)).status).toBe(404);
      expect((await verify(theirs.key)).body.valid).toBe(true);
      expect((await list(org)).body.data.map((k: { id: string }) => k.id)).not.toContain(theirs.id);
    });

    it("keeps /v1/keys/verify for the operator: an API key gets 403, nothing gets 401", async () => {
      const key = await newKey(["keys:read"]);
      const asKey = await t.call("POST", "/v1/keys/verify", { auth: key.key, body: { key: key.key } });
      expect(asKey.status).toBe(403);
      const anonymous = await t.call("POST", "/v1/keys/verify", { body: { key: key.key } });
      expect(anonymous.status).toBe(401);
    });

    it("never writes a key to the logs", async () => {
      expect(issued.length).toBeGreaterThan(10);
      expect(t.logs.lines.length).toBeGreaterThan(0);
      for (const key of issued) expect(t.logs.text).not.toContain(key);
    });
  });
});

describe.each(appModes.filter((m) => m.database === "postgres"))(
  "API key revocation across processes ($name)",
  (mode) => {
    let db: TestDatabase;
    beforeAll(async () => {
      db = await createTestDatabase("postgres");
    });
    afterAll(() => db.drop());

    // With Redis the broadcast evicts at once; without it (one in-process bus per app) the other
    // process's periodic re-read of revoked_at still honours the revocation within the bound.
    it("is honoured by a second process within 2 seconds", async () => {
      const prefix = uniquePrefix();
      const options = { ...mode, sharedDatabase: db.handle, redisPrefix: prefix };
      const a = await createTestApp(options);
      const b = await createTestApp(options);
      try {
        const org = await newOrg(a, "Shared");
        const created = await a.call("POST", `/v1/orgs/${org}/api-keys`, {
          auth: "operator",
          body: { name: "shared", scopes: ["keys:read"] },
        });
        expect(created.status, created.text).toBe(201);
        const { id, key } = created.body;
        const verifyAtB = async () =>
          (await b.call("POST", "/v1/keys/verify", { auth: "operator", body: { key } })).body;
        expect(await verifyAtB()).toMatchObject({ valid: true, key_id: id });
        expect((await b.call("GET", `/v1/orgs/${org}/api-keys`, { auth: key })).status).toBe(200);

        const revoked = await a.call("DELETE", `/v1/orgs/${org}/api-keys/${id}`, { auth: "operator" });
        expect(revoked.status).toBe(200);
        const started = performance.now();
        await expect
          .poll(verifyAtB, { timeout: 2000, interval: 25 })
          .toEqual({ valid: false, reason: "revoked" });
        expect(performance.now() - started).toBeLessThan(2000);
        expect((await b.call("GET", `/v1/orgs/${org}/api-keys`, { auth: key })).status).toBe(401);
        const [row] = await a.database.db
          .select()
          .from(apiKeys)
          .where(and(eq(apiKeys.id, id), eq(apiKeys.orgId, org)));
        expect(row?.revokedAt).not.toBeNull();
      } finally {
        await closeApiKeys(a.deps);
        await closeApiKeys(b.deps);
        await a.close();
        await b.close();
        if (mode.redis) await deleteRedisPrefix(prefix);
      }
    });
  },
);
