import { and, eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { usagePeriods } from "../src/db/schema.js";
import { createTestApp, deleteRedisPrefix, type TestApp } from "./support/app.js";
import { createTestDatabase, hasRedis, type TestDatabase, uniquePrefix } from "./support/storage.js";
import { deleteRedisKeys, writeCatalog } from "./support/tollgate-process.js";

/**
 * The hot path's judged guarantees under concurrency: with N concurrent consumes against k remaining,
 * exactly min(N, k) are allowed, across two Tollgate "processes" (two apps on one Postgres database
 * and one Redis namespace); an event replayed concurrently and after a restart counts once; the rate
 * limiter follows GCRA to the millisecond; counters lost from Redis are rebuilt from Postgres.
 */

const postgresUrl = process.env.DATABASE_URL;
const redisUrl = process.env.REDIS_URL;

const catalog = writeCatalog(`
currency: USD
default_plan: metered
meters:
  - { key: calls, name: Calls, aggregation: count }
  - { key: credits, name: Credits, aggregation: sum }
features:
  - { key: calls, type: metered, meter: calls }
  - { key: credits, type: metered, meter: credits }
  - { key: burst, type: rate }
  - { key: trickle, type: rate }
plans:
  - key: metered
    name: Metered
    price: { month: "0" }
    entitlements:
      calls: { limit: 100 }
      credits: { limit: 600 }
      burst: { limit: 7, window: 1m }
      trickle: { limit: 3, window: 10s }
  - key: bigger
    name: Bigger
    price: { month: "10" }
    entitlements:
      calls: { limit: 1000 }
      credits: { limit: 6000 }
      burst: { limit: 70, window: 1m }
      trickle: { limit: 30, window: 10s }
`);

const baseEnv = { TOLLGATE_CATALOG: catalog, TOLLGATE_LOG_LEVEL: "warn" };

async function newOrg(t: TestApp, name = "Acme"): Promise<string> {
  const res = await t.call("POST", "/v1/orgs", { auth: "operator", body: { name } });
  expect(res.status, res.text).toBe(201);
  return res.body.id as string;
}

const check = (t: TestApp, body: Record<string, unknown>) =>
  t.call("POST", "/v1/check", { auth: "operator", body });

async function entitlement(t: TestApp, org: string, feature: string) {
  const res = await t.call("GET", `/v1/orgs/${org}/entitlements`, { auth: "operator" });
  expect(res.status, res.text).toBe(200);
  return (res.body.features as { feature: string; used: number; remaining: number }[]).find(
    (f) => f.feature === feature,
  );
}

async function periodQuantity(t: TestApp, org: string, meter: string): Promise<string | undefined> {
  const rows = await t.database.db
    .select({ quantity: usagePeriods.quantity })
    .from(usagePeriods)
    .where(and(eq(usagePeriods.orgId, org), eq(usagePeriods.meter, meter)));
  expect(rows.length).toBeLessThanOrEqual(1);
  return rows[0] ? String(Number(rows[0].quantity)) : undefined;
}

/** 500 concurrent consumes of 1 against a quota of 100, spread over `apps`: exactly 100 allowed. */
async function fiveHundredAgainstHundred(apps: TestApp[], org: string) {
  const answers = await Promise.all(
    Array.from({ length: 500 }, (_, i) =>
      check(apps[i % apps.length] as TestApp, { org_id: org, feature: "calls" }),
    ),
  );
  for (const answer of answers) expect(answer.status, answer.text).toBe(200);
  const allowed = answers.filter((a) => a.body.allowed === true);
  const denied = answers.filter((a) => a.body.allowed === false);
  expect(allowed.length).toBe(100);
  expect(denied.length).toBe(400);
  for (const d of denied)
    expect(d.body).toMatchObject({ reason: "quota_exceeded", limit: 100, remaining: 0 });
  // Each allowed call took its own unit: the usages they report are exactly 1..100.
  expect(allowed.map((a) => a.body.used as number).sort((x, y) => x - y)).toEqual(
    Array.from({ length: 100 }, (_, i) => i + 1),
  );
}

/** Five concurrent requests of 500 against a balance of 600: exactly one is allowed. */
async function fiveOfFiveHundred(apps: TestApp[], org: string) {
  const answers = await Promise.all(
    Array.from({ length: 5 }, (_, i) =>
      check(apps[i % apps.length] as TestApp, { org_id: org, feature: "credits", amount: "500" }),
    ),
  );
  for (const answer of answers) expect(answer.status, answer.text).toBe(200);
  const allowed = answers.filter((a) => a.body.allowed === true);
  expect(allowed.length).toBe(1);
  expect(allowed[0]?.body).toMatchObject({ used: 500, remaining: 100 });
  for (const d of answers.filter((a) => a.body.allowed === false)) {
    expect(d.body).toMatchObject({ reason: "quota_exceeded", limit: 600 });
    expect([0, 500]).toContain(d.body.used);
  }
}

describe.runIf(postgresUrl && redisUrl)("two Tollgate processes on one Postgres and one Redis", () => {
  let db: TestDatabase;
  const prefix = uniquePrefix();
  let apps: TestApp[] = [];
  const build = () =>
    createTestApp({
      database: "postgres",
      redis: true,
      sharedDatabase: db.handle,
      redisPrefix: prefix,
      env: baseEnv,
    });

  beforeAll(async () => {
    db = await createTestDatabase("postgres");
    apps = await Promise.all([build(), build()]);
  });
  afterAll(async () => {
    for (const app of apps) await app.close();
    await db?.drop();
    await deleteRedisPrefix(prefix);
  });
  const [first, second] = [() => apps[0] as TestApp, () => apps[1] as TestApp];

  it("500 concurrent consumes against a limit of 100 allow exactly 100, and Postgres says 100", async () => {
    const org = await newOrg(first());
    await fiveHundredAgainstHundred(apps, org);
    expect(await entitlement(second(), org, "calls")).toMatchObject({ used: 100, remaining: 0 });
    expect(await periodQuantity(first(), org, "calls")).toBe("100");
    // And the next one, from either process, is still denied.
    for (const app of apps) {
      const again = await check(app, { org_id: org, feature: "calls" });
      expect(again.body).toMatchObject({ allowed: false, reason: "quota_exceeded", used: 100 });
    }
  });

  it("a balance of 600 with five concurrent requests of 500 allows exactly one", async () => {
    const org = await newOrg(first());
    await fiveOfFiveHundred(apps, org);
    expect(await entitlement(first(), org, "credits")).toMatchObject({ used: 500, remaining: 100 });
    expect(await periodQuantity(second(), org, "credits")).toBe("500");
  });

  it("rebuilds a counter lost from Redis from Postgres, instead of starting again from zero", async () => {
    const org = await newOrg(first());
    const consumed = await Promise.all(
      Array.from({ length: 40 }, (_, i) => check(apps[i % 2] as TestApp, { org_id: org, feature: "calls" })),
    );
    expect(consumed.filter((c) => c.body.allowed === true).length).toBe(40);
    // The org's counters live under `<prefix>c:`; Redis losing them (eviction, restart) is simulated here.
    expect(await deleteRedisKeys(`${prefix}c:*${org}*`)).toBeGreaterThan(0);
    const next = await check(second(), { org_id: org, feature: "calls" });
    expect(next.body).toMatchObject({ allowed: true, used: 41, remaining: 59 });
    // The rebuilt counter enforces the rest of the quota exactly: 59 more, not 60.
    const rest = await Promise.all(
      Array.from({ length: 100 }, (_, i) => check(apps[i % 2] as TestApp, { org_id: org, feature: "calls" })),
    );
    expect(rest.filter((c) => c.body.allowed === true).length).toBe(59);
    expect(await entitlement(first(), org, "calls")).toMatchObject({ used: 100 });
  });

  it("an event sent ten times concurrently, and again after a restart, counts once", async () => {
    const org = await newOrg(first());
    const event = { id: "evt_duplicate_1", org_id: org, meter: "calls" };
    const sent = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        (apps[i % 2] as TestApp).call("POST", "/v1/events", { auth: "operator", body: { events: [event] } }),
      ),
    );
    for (const res of sent) {
      expect(res.status, res.text).toBe(202);
      expect(res.body.rejected).toEqual([]);
    }
    expect(sent.reduce((n, r) => n + r.body.accepted, 0)).toBe(1);
    expect(sent.reduce((n, r) => n + r.body.duplicates, 0)).toBe(9);

    // "Restart": both processes go away; a new one starts on the same database and Redis namespace.
    for (const app of apps) await app.close();
    apps = [await build()];
    const again = await first().call("POST", "/v1/events", { auth: "operator", body: { events: [event] } });
    expect(again.status, again.text).toBe(202);
    expect(again.body).toEqual({ accepted: 0, duplicates: 1, rejected: [] });

    const usage = await first().call("GET", `/v1/orgs/${org}/usage?meter=calls`, { auth: "operator" });
    expect(usage.status, usage.text).toBe(200);
    const total = (usage.body.series as { value: string }[]).reduce((n, p) => n + Number(p.value), 0);
    expect(total).toBe(1);
    expect(await entitlement(first(), org, "calls")).toMatchObject({ used: 1 });
    expect(await periodQuantity(first(), org, "calls")).toBe("1");
    const asked = await check(first(), { org_id: org, feature: "calls", consume: false });
    expect(asked.body).toMatchObject({ allowed: true, used: 1 });
    apps.push(await build());
  });
});

describe("one embedded process (PGlite + in-process counters)", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ database: "pglite", redis: false, env: baseEnv });
  });
  afterAll(() => t?.close());

  it("500 concurrent consumes against a limit of 100 allow exactly 100", async () => {
    const org = await newOrg(t);
    await fiveHundredAgainstHundred([t], org);
    expect(await entitlement(t, org, "calls")).toMatchObject({ used: 100, remaining: 0 });
    expect(await periodQuantity(t, org, "calls")).toBe("100");
  });

  it("a balance of 600 with five concurrent requests of 500 allows exactly one", async () => {
    const org = await newOrg(t);
    await fiveOfFiveHundred([t], org);
    expect(await entitlement(t, org, "credits")).toMatchObject({ used: 500 });
  });
});

// ---------------------------------------------------------------------------------------------
// GCRA, checked against an independent reference over a long randomized schedule.

/** mulberry32: a small seeded PRNG, so a failure can be replayed. */
function prng(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The reference: GCRA as written in the literature, T = window / limit, a theoretical arrival time
 * `tat`; a request of cost c at `now` is allowed iff max(tat, now) + T·c − now <= window, and then
 * tat = max(tat, now) + T·c. Kept exact by counting time in units of 1/limit ms (BigInt), so the
 * reference itself never rounds. retry_after = ceil(new_tat − now − window) when denied.
 */
class ReferenceGcra {
  /** tat × limit, in ms × limit; undefined = idle. */
  private tat: bigint | undefined;
  constructor(
    readonly limit: number,
    readonly windowMs: number,
  ) {}

  decide(
    nowMs: number,
    cost: number,
  ): { allowed: boolean; retryAfterMs: number | undefined; commit: () => void } {
    // More than the whole burst can never pass: denied, with no time at which it would.
    if (cost > this.limit) return { allowed: false, retryAfterMs: undefined, commit: () => {} };
    const L = BigInt(this.limit);
    const W = BigInt(this.windowMs);
    const now = BigInt(nowMs) * L;
    const start = this.tat !== undefined && this.tat > now ? this.tat : now;
    const newTat = start + W * BigInt(cost); // T·c = (W / L)·c, i.e. W·c in units of 1/L ms
    if (newTat - now <= W * L) {
      return { allowed: true, retryAfterMs: 0, commit: () => (this.tat = newTat) };
    }
    const over = newTat - now - W * L;
    return { allowed: false, retryAfterMs: Number((over + L - 1n) / L), commit: () => {} };
  }

  /** Requests of cost 1 allowed right now: floor((window − (tat − now)) / T), at least 0. */
  remaining(nowMs: number): number {
    const L = BigInt(this.limit);
    const W = BigInt(this.windowMs);
    const now = BigInt(nowMs) * L;
    const ahead = this.tat !== undefined && this.tat > now ? this.tat - now : 0n;
    const r = (W * L - ahead) / W;
    return r < 0n ? 0 : Number(r);
  }

  /** ms until fully replenished: ceil(tat − now). */
  resetMs(nowMs: number): number {
    const L = BigInt(this.limit);
    const now = BigInt(nowMs) * L;
    const ahead = this.tat !== undefined && this.tat > now ? this.tat - now : 0n;
    return Number((ahead + L - 1n) / L);
  }
}

const gcraStores = [
  { name: "in-process store", redis: false },
  ...(hasRedis ? [{ name: "Redis store", redis: true }] : []),
];

describe.each(gcraStores)("rate limits follow GCRA exactly ($name)", ({ redis }) => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({
      database: "pglite",
      redis,
      env: { ...baseEnv, TOLLGATE_TEST_CLOCK: "1" },
    });
  });
  afterAll(() => t?.close());

  it("matches a reference GCRA on every decision of a randomized schedule", async () => {
    const org = await newOrg(t);
    const clock = await t.call("GET", "/v1/test-clock", { auth: "operator" });
    let now = Date.parse(clock.body.now as string);
    const random = prng(0x7011_6a7e);
    const refs = { burst: new ReferenceGcra(7, 60_000), trickle: new ReferenceGcra(3, 10_000) };
    const pick = <T>(choices: [number, T][]): T => {
      let r = random();
      for (const [weight, value] of choices) {
        if (r < weight) return value;
        r -= weight;
      }
      return (choices[choices.length - 1] as [number, T])[1];
    };
    let allowedSeen = 0;
    let deniedSeen = 0;

    for (let step = 0; step < 300; step++) {
      const dt = pick<() => number>([
        [0.4, () => 0],
        [0.3, () => 1 + Math.floor(random() * 2000)],
        [0.2, () => 2000 + Math.floor(random() * 13_000)],
        [0.1, () => 15_000 + Math.floor(random() * 60_000)],
      ])();
      if (dt > 0) {
        now += dt;
        const moved = await t.call("POST", "/v1/test-clock/advance", {
          auth: "operator",
          body: { to: new Date(now).toISOString() },
        });
        expect(moved.status, moved.text).toBe(200);
      }
      const cost = () =>
        pick([
          [0.05, 0],
          [0.6, 1],
          [0.2, 2],
          [0.12, 3],
          [0.03, 8],
        ] as [number, number][]);
      const features = pick<(keyof typeof refs)[]>([
        [0.45, ["burst"]],
        [0.4, ["trickle"]],
        [0.15, ["burst", "trickle"]],
      ]);
      const items = features.map((feature) => ({ feature, amount: cost() }));
      // One call in ten only asks (consume: false): decided the same, nothing taken.
      const consume = random() >= 0.1;
      const res =
        items.length === 1
          ? await check(t, { org_id: org, feature: items[0]?.feature, amount: items[0]?.amount, consume })
          : await check(t, { org_id: org, features: items, consume });
      expect(res.status, res.text).toBe(200);
      const results = (items.length === 1 ? [res.body] : res.body.results) as Record<string, unknown>[];

      const decisions = items.map((item) => refs[item.feature].decide(now, item.amount));
      const all = decisions.every((d) => d.allowed);
      if (all && consume) for (const d of decisions) d.commit();
      const where = `step ${step} at +${dt} ms: ${JSON.stringify(items)} consume=${consume} → ${res.text}`;
      expect(res.body.allowed, where).toBe(all);
      items.forEach((item, i) => {
        const ref = refs[item.feature];
        const decision = decisions[i] as (typeof decisions)[number];
        const result = results[i] as Record<string, unknown>;
        expect(result.feature, where).toBe(item.feature);
        expect(result.allowed, where).toBe(decision.allowed);
        if (decision.allowed) expect(result.retry_after_ms, where).toBeUndefined();
        else {
          expect(result.reason, where).toBe("rate_limited");
          expect(result.retry_after_ms, where).toBe(decision.retryAfterMs);
        }
        if (item.amount > ref.limit) return; // never fits: what it reports of the limiter is not GCRA's
        expect(result.remaining, where).toBe(ref.remaining(now));
        expect(result.resets_at, where).toBe(new Date(now + ref.resetMs(now)).toISOString());
      });
      if (
        items.length === 1 &&
        (items[0]?.amount as number) <= refs[items[0]?.feature as keyof typeof refs].limit
      ) {
        const only = decisions[0] as (typeof decisions)[number];
        const ref = refs[items[0]?.feature as keyof typeof refs];
        expect(res.headers.get("ratelimit"), where).toBe(
          `"${items[0]?.feature}";r=${ref.remaining(now)};t=${Math.ceil(ref.resetMs(now) / 1000)}`,
        );
        expect(res.headers.get("retry-after"), where).toBe(
          only.allowed ? null : String(Math.max(1, Math.ceil((only.retryAfterMs as number) / 1000))),
        );
      }
      if (all) allowedSeen++;
      else deniedSeen++;
    }
    // The schedule exercised both outcomes plenty.
    expect(allowedSeen).toBeGreaterThan(60);
    expect(deniedSeen).toBeGreaterThan(60);
  });

  it("reports the limiter as it stands to a call that only asks (remaining and reset before the call)", async () => {
    const org = await newOrg(t);
    const clock = await t.call("GET", "/v1/test-clock", { auth: "operator" });
    const now = Date.parse(clock.body.now as string);
    const ask = () => check(t, { org_id: org, feature: "burst", consume: false });
    const idle = await ask();
    expect(idle.body).toMatchObject({ allowed: true, remaining: 7, resets_at: new Date(now).toISOString() });
    expect(idle.headers.get("ratelimit")).toBe('"burst";r=7;t=0');

    // Two taken: T = 60000 / 7 ms each, so full again ceil(2T) = 17143 ms from now.
    const taken = await check(t, { org_id: org, feature: "burst", amount: 2 });
    const resetsAt = new Date(now + 17_143).toISOString();
    expect(taken.body).toMatchObject({ allowed: true, remaining: 5, resets_at: resetsAt });
    expect(taken.headers.get("ratelimit")).toBe('"burst";r=5;t=18');
    const asked = await ask();
    expect(asked.body).toMatchObject({ allowed: true, remaining: 5, resets_at: resetsAt });
    expect(asked.headers.get("ratelimit")).toBe('"burst";r=5;t=18');
  });
});
