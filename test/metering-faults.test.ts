import { and, eq, sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { usagePeriods } from "../src/db/schema.js";
import { ADMIN_KEY, createTestApp, deleteRedisPrefix, type TestApp } from "./support/app.js";
import { createTestDatabase, type TestDatabase, uniquePrefix } from "./support/storage.js";
import {
  deleteRedisKeys,
  eventually,
  FaultProxy,
  killAllTollgates,
  readRedis,
  scanRedisKeys,
  startTollgate,
  type TollgateProcess,
  writeCatalog,
} from "./support/tollgate-process.js";

/**
 * The hot path through failures: Redis going away and coming back (each feature's on_unavailable
 * policy meanwhile, counters rebuilt from Postgres after, no restart of Tollgate), Redis coming back
 * empty, and kill -9 of a real server process in the middle of an ingest or of consumes — nothing
 * acknowledged may be lost.
 */

const postgresUrl = process.env.DATABASE_URL;
const redisUrl = process.env.REDIS_URL;

const catalog = writeCatalog(`
currency: USD
default_plan: metered
meters:
  - { key: closed_calls, name: Closed calls, aggregation: count }
  - { key: open_calls, name: Open calls, aggregation: count }
  - { key: events, name: Events, aggregation: count }
features:
  - { key: closed_calls, type: metered, meter: closed_calls }
  - { key: open_calls, type: metered, meter: open_calls, on_unavailable: open }
  - { key: events, type: metered, meter: events }
plans:
  - key: metered
    name: Metered
    price: { month: "0" }
    entitlements:
      closed_calls: { limit: 100 }
      open_calls: { limit: 100 }
      events: { limit: null }
  - key: unlimited
    name: Unlimited
    price: { month: "50" }
    entitlements:
      closed_calls: { limit: null }
      open_calls: { limit: null }
      events: { limit: null }
`);

const env = { TOLLGATE_CATALOG: catalog, TOLLGATE_LOG_LEVEL: "warn" };

async function newOrg(t: TestApp): Promise<string> {
  const res = await t.call("POST", "/v1/orgs", { auth: "operator", body: { name: "Acme" } });
  expect(res.status, res.text).toBe(201);
  return res.body.id as string;
}

const check = (t: TestApp, body: Record<string, unknown>) =>
  t.call("POST", "/v1/check", { auth: "operator", body });

/** What the org's entitlements say is used (an app in-process, or a real server). */
async function used(t: { call: TestApp["call"] }, org: string, feature: string): Promise<number> {
  const res = await t.call("GET", `/v1/orgs/${org}/entitlements`, { auth: ADMIN_KEY });
  expect(res.status, res.text).toBe(200);
  return (res.body.features as { feature: string; used: number }[]).find((f) => f.feature === feature)
    ?.used as number;
}

async function periodQuantity(db: TestDatabase, org: string, meter: string): Promise<number> {
  const [row] = await db.handle.db
    .select({ quantity: usagePeriods.quantity })
    .from(usagePeriods)
    .where(and(eq(usagePeriods.orgId, org), eq(usagePeriods.meter, meter)));
  return row ? Number(row.quantity) : 0;
}

const redisPort = () => {
  const target = new URL(redisUrl as string);
  return { host: target.hostname, port: Number(target.port || 6379) };
};

describe.runIf(postgresUrl && redisUrl)("Redis goes away mid-load and comes back (postgres + redis)", () => {
  let proxy: FaultProxy;
  let t: TestApp;
  const prefix = uniquePrefix();

  beforeAll(async () => {
    proxy = await new FaultProxy(redisPort().host, redisPort().port).start();
    t = await createTestApp({
      database: "postgres",
      redis: true,
      redisPrefix: prefix,
      env: { ...env, REDIS_URL: proxy.url(redisUrl as string) },
    });
  });
  afterAll(async () => {
    proxy?.restore();
    await t?.close();
    await proxy?.close();
    await deleteRedisPrefix(prefix);
  });

  const redisDown = async () => {
    const res = await t.call("GET", "/readyz");
    return res.status === 503 && res.body.checks.redis.status === "down";
  };

  it("follows each feature's policy while Redis is away, and recovers by itself with exact counters", async () => {
    const org = await newOrg(t);
    const consume = (feature: string, extra: Record<string, unknown> = {}) =>
      check(t, { org_id: org, feature, ...extra });
    const before = await Promise.all([
      ...Array.from({ length: 5 }, () => consume("closed_calls")),
      ...Array.from({ length: 5 }, () => consume("open_calls")),
    ]);
    expect(before.every((r) => r.body.allowed === true)).toBe(true);

    proxy.cut();
    await eventually(redisDown);

    // closed (the default): no counters, no consumption.
    const closed = await consume("closed_calls");
    expect(closed.status, closed.text).toBe(200);
    expect(closed.body).toMatchObject({ allowed: false, reason: "unavailable", feature: "closed_calls" });
    expect(closed.body.upgrade_url).toBeUndefined();
    // open: allowed, and the consumption is still recorded in Postgres.
    const open = await Promise.all(Array.from({ length: 3 }, () => consume("open_calls")));
    for (const res of open) {
      expect(res.status, res.text).toBe(200);
      expect(res.body).toMatchObject({ allowed: true, feature: "open_calls" });
    }
    // All or nothing still: a call naming both is denied, and consumes neither.
    const both = await check(t, {
      org_id: org,
      features: [{ feature: "open_calls" }, { feature: "closed_calls" }],
    });
    expect(both.body.allowed).toBe(false);
    expect(both.body.results[1]).toMatchObject({ allowed: false, reason: "unavailable" });
    // A dry run consumes nothing either way.
    expect((await consume("open_calls", { consume: false })).body.allowed).toBe(true);
    expect(await used(t, org, "open_calls")).toBe(8);
    expect(await used(t, org, "closed_calls")).toBe(5);

    const metrics = (await t.call("GET", "/metrics")).text;
    const degraded = (component: string, decision: string) =>
      Number(
        new RegExp(
          `^tollgate_degraded_decisions_total\\{component="${component}",decision="${decision}"\\} (\\d+)`,
          "m",
        ).exec(metrics)?.[1] ?? 0,
      );
    expect(degraded("check:closed_calls", "closed")).toBeGreaterThanOrEqual(2);
    expect(degraded("check:open_calls", "open")).toBeGreaterThanOrEqual(4);

    proxy.restore();
    // No restart: the first answer from the counters again already counts what was consumed while
    // they were away (the stale counter is rebuilt from Postgres, not trusted).
    let recovered: { body: any } | undefined;
    await eventually(async () => {
      const res = await consume("open_calls", { consume: false });
      if (res.body.used === null) return false;
      recovered = res;
      return true;
    });
    expect(recovered?.body).toMatchObject({ allowed: true, used: 8, remaining: 92 });
    expect((await consume("open_calls")).body).toMatchObject({ allowed: true, used: 9 });
    expect((await consume("closed_calls")).body).toMatchObject({ allowed: true, used: 6 });
    expect(await used(t, org, "open_calls")).toBe(9);
    expect(await used(t, org, "closed_calls")).toBe(6);
    expect((await t.call("GET", "/readyz")).status).toBe(200);
  }, 60_000);

  it("counts a call whose answer was lost with the connection once if acknowledged, else not at all", async () => {
    const org = await newOrg(t);
    for (let i = 0; i < 5; i++) {
      expect((await check(t, { org_id: org, feature: "closed_calls" })).body.allowed).toBe(true);
    }
    const counterKeys = await scanRedisKeys(`${prefix}c:m:${org}:closed_calls:*`);
    expect(counterKeys.length).toBe(1);
    const counter = async () => Number(await readRedis(counterKeys[0] as string));
    expect(await counter()).toBe(5);

    // Redis runs the call, but its answer never reaches Tollgate; then the connection drops.
    proxy.dropReplies();
    const lost = check(t, { org_id: org, feature: "closed_calls" });
    await eventually(async () => (await counter()) === 6, 5000);
    proxy.cut();
    await new Promise((r) => setTimeout(r, 300));
    proxy.restore();
    const answer = await lost;
    expect(answer.status, answer.text).toBe(200);
    await eventually(
      async () =>
        (await check(t, { org_id: org, feature: "closed_calls", consume: false })).body.used !== null,
    );

    // Whatever Tollgate answered, Postgres agrees with it, and the counters agree with Postgres.
    const truth = await used(t, org, "closed_calls");
    expect(truth).toBe(answer.body.allowed ? 6 : 5);
    const asked = await check(t, { org_id: org, feature: "closed_calls", consume: false });
    expect(asked.body).toMatchObject({ allowed: true, used: truth, remaining: 100 - truth });
  }, 60_000);
});

/**
 * A load of concurrent consumes against a quota of 100 from two processes, while Redis goes away and
 * comes back empty; returns every answer. `disrupt` runs once 40 units are consumed, while the load
 * goes on; the load stops once the quota is seen used up after it.
 */
async function loadThrough(
  apps: TestApp[],
  org: string,
  disrupt: (answers: { status: number; body: any }[]) => Promise<void>,
): Promise<{ status: number; body: any }[]> {
  const answers: { status: number; body: any }[] = [];
  const first = await Promise.all(
    Array.from({ length: 40 }, (_, i) =>
      check(apps[i % 2] as TestApp, { org_id: org, feature: "closed_calls" }),
    ),
  );
  answers.push(...first);
  let recovered = false;
  let deniedAfter = 0;
  let stop = false;
  const worker = async (app: TestApp) => {
    while (!stop) {
      const res = await check(app, { org_id: org, feature: "closed_calls" });
      answers.push(res);
      // As over a real socket, each request yields to I/O; a client backs off a little when told
      // the service is unavailable. (In-process calls that fail fast would otherwise spin on
      // microtasks and starve the Redis client's reconnection.)
      await new Promise((r) => setTimeout(r, res.body?.reason === "unavailable" ? 5 : 0));
      if (recovered && res.body?.reason === "quota_exceeded" && ++deniedAfter >= 30) stop = true;
    }
  };
  const workers = Array.from({ length: 8 }, (_, i) => worker(apps[i % 2] as TestApp));
  const guard = setTimeout(() => {
    stop = true;
  }, 30_000);
  await new Promise((r) => setTimeout(r, 5));
  await disrupt(answers);
  recovered = true;
  await Promise.all(workers);
  clearTimeout(guard);
  return answers;
}

describe.runIf(postgresUrl && redisUrl)("Redis restarted empty under load (two processes)", () => {
  let db: TestDatabase;
  let proxy: FaultProxy;
  const prefix = uniquePrefix();
  let apps: TestApp[] = [];

  beforeAll(async () => {
    db = await createTestDatabase("postgres");
    proxy = await new FaultProxy(redisPort().host, redisPort().port).start();
    const build = () =>
      createTestApp({
        database: "postgres",
        redis: true,
        sharedDatabase: db.handle,
        redisPrefix: prefix,
        env: { ...env, REDIS_URL: proxy.url(redisUrl as string) },
      });
    apps = await Promise.all([build(), build()]);
  });
  afterAll(async () => {
    proxy?.restore();
    for (const app of apps) await app.close();
    await proxy?.close();
    await db?.drop();
    await deleteRedisPrefix(prefix);
  });

  const expectQuotaHeld = async (answers: { status: number; body: any }[], org: string) => {
    for (const answer of answers) {
      expect(answer.status, JSON.stringify(answer.body)).toBe(200);
      if (!answer.body.allowed) expect(["quota_exceeded", "unavailable"]).toContain(answer.body.reason);
    }
    expect(answers.filter((a) => a.body.allowed).length).toBe(100);
    expect(await used(apps[0] as TestApp, org, "closed_calls")).toBe(100);
    expect(await periodQuantity(db, org, "closed_calls")).toBe(100);
  };

  it("keeps answering, reseeds counters from Postgres, and never allows past the quota", async () => {
    const org = await newOrg(apps[0] as TestApp);
    const answers = await loadThrough(apps, org, async (sofar) => {
      // Redis stops (connections drop, checks follow the closed policy), comes back empty.
      proxy.cut();
      await eventually(async () => sofar.some((a) => a.body.reason === "unavailable"));
      await deleteRedisPrefix(prefix);
      proxy.restore();
    });
    await expectQuotaHeld(answers, org);
  }, 60_000);
});

describe.runIf(postgresUrl && redisUrl)("kill -9 of a real server process (postgres + redis)", () => {
  let db: TestDatabase;
  const orgs: string[] = [];
  let serverEnv: Record<string, string>;

  beforeAll(async () => {
    db = await createTestDatabase("postgres");
    serverEnv = {
      DATABASE_URL: db.url as string,
      REDIS_URL: redisUrl as string,
      TOLLGATE_ADMIN_KEY: ADMIN_KEY,
      TOLLGATE_SECRET: "test-secret-0123456789abcdef0123456789",
      TOLLGATE_CATALOG: catalog,
    };
  });
  afterAll(async () => {
    await killAllTollgates();
    await db?.drop();
    // The real server uses the default prefix; only these orgs' keys are ours.
    for (const org of orgs) await deleteRedisKeys(`tg:*${org}*`);
  });

  const createOrg = async (proc: TollgateProcess, plan?: string) => {
    const res = await proc.call("POST", "/v1/orgs", { auth: ADMIN_KEY, body: { name: "Acme" } });
    expect(res.status, res.text).toBe(201);
    const org = res.body.id as string;
    orgs.push(org);
    if (plan) {
      const set = await proc.call("POST", `/v1/orgs/${org}/subscription`, {
        auth: ADMIN_KEY,
        body: { plan, skip_payment: true },
      });
      expect(set.status, set.text).toBe(200);
    }
    return org;
  };

  it("loses no acknowledged event when killed during a sustained ingest", async () => {
    const first = await startTollgate(serverEnv);
    const org = await createOrg(first);
    const acknowledged: string[] = [];
    const sent = new Set<string>();
    let killed = false;
    const ingest = async (worker: number) => {
      for (let batch = 0; !killed; batch++) {
        const ids = Array.from({ length: 100 }, (_, i) => `w${worker}-b${batch}-e${i}`);
        for (const id of ids) sent.add(id);
        let res: Awaited<ReturnType<TollgateProcess["call"]>>;
        try {
          res = await first.call("POST", "/v1/events", {
            auth: ADMIN_KEY,
            body: { events: ids.map((id) => ({ id, org_id: org, meter: "events" })) },
          });
        } catch {
          return; // the connection died with the process
        }
        if (res.status === 202) {
          expect(res.body).toEqual({ accepted: 100, duplicates: 0, rejected: [] });
          acknowledged.push(...ids);
        }
      }
    };
    const workers = Array.from({ length: 4 }, (_, w) => ingest(w));
    await new Promise((r) => setTimeout(r, 3000));
    await first.kill9(); // mid-loop: every worker has a batch in flight
    killed = true;
    await Promise.all(workers);
    expect(acknowledged.length).toBeGreaterThan(0);

    const second = await startTollgate(serverEnv);
    const stored = await db.handle.query<{ event_id: string }>(
      sql`select event_id from usage_events where org_id = ${org}`,
    );
    const storedIds = new Set(stored.map((r) => r.event_id));
    const lost = acknowledged.filter((id) => !storedIds.has(id));
    expect(lost).toEqual([]);
    expect([...storedIds].filter((id) => !sent.has(id))).toEqual([]);

    // Usage reads agree with the events stored: rollups and period totals were in the same commit.
    const usage = await second.call("GET", `/v1/orgs/${org}/usage?meter=events`, { auth: ADMIN_KEY });
    expect(usage.status, usage.text).toBe(200);
    const total = (usage.body.series as { value: string }[]).reduce((n, p) => n + Number(p.value), 0);
    expect(total).toBe(storedIds.size);
    expect(await used(second, org, "events")).toBe(storedIds.size);
    expect(await periodQuantity(db, org, "events")).toBe(storedIds.size);

    // Replaying every acknowledged batch after the crash counts nothing twice.
    const replay = await second.call("POST", "/v1/events", {
      auth: ADMIN_KEY,
      body: { events: acknowledged.slice(0, 1000).map((id) => ({ id, org_id: org, meter: "events" })) },
    });
    expect(replay.body).toMatchObject({ accepted: 0, duplicates: Math.min(1000, acknowledged.length) });
    expect(await used(second, org, "events")).toBe(storedIds.size);
    await second.kill9();
  }, 90_000);

  it("keeps the quota counter whole when killed between committing events and counting them", async () => {
    // The process's Redis connection goes through a proxy that can freeze it: events commit to
    // Postgres, then the Redis increment that follows is held, and the process dies right there.
    const proxy = await new FaultProxy(redisPort().host, redisPort().port).start();
    try {
      const first = await startTollgate({ ...serverEnv, REDIS_URL: proxy.url(redisUrl as string) });
      const org = await createOrg(first);
      const events = (from: number, n: number) =>
        Array.from({ length: n }, (_, i) => ({ id: `e${from + i}`, org_id: org, meter: "closed_calls" }));
      const ask = (proc: TollgateProcess) =>
        proc.call("POST", "/v1/check", {
          auth: ADMIN_KEY,
          body: { org_id: org, feature: "closed_calls", consume: false },
        });
      expect((await ask(first)).body).toMatchObject({ allowed: true, used: 0 });
      const batch = await first.call("POST", "/v1/events", {
        auth: ADMIN_KEY,
        body: { events: events(0, 60) },
      });
      expect(batch.body).toMatchObject({ accepted: 60 });
      expect((await ask(first)).body).toMatchObject({ allowed: true, used: 60, remaining: 40 });

      proxy.stall();
      const pending = first
        .call("POST", "/v1/events", { auth: ADMIN_KEY, body: { events: events(60, 60) } })
        .catch(() => undefined);
      const stored = async () =>
        (
          await db.handle.query<{ n: number }>(
            sql`select count(*)::int as n from usage_events where org_id = ${org}`,
          )
        )[0]?.n;
      await eventually(async () => (await stored()) === 120, 10_000);
      await first.kill9();
      await pending;

      // Postgres, the source of truth, has 120 of a quota of 100: the quota is used up.
      const second = await startTollgate(serverEnv);
      expect(await used(second, org, "closed_calls")).toBe(120);
      const after = await second.call("POST", "/v1/check", {
        auth: ADMIN_KEY,
        body: { org_id: org, feature: "closed_calls" },
      });
      expect(after.body).toMatchObject({ allowed: false, reason: "quota_exceeded", used: 120 });
      await second.kill9();
    } finally {
      await proxy.close();
    }
  }, 90_000);

  it.each(["commit", "journal"])(
    "loses no acknowledged consumption when killed during concurrent consumes (ack: %s)",
    async (ack) => {
      const first = await startTollgate({ ...serverEnv, TOLLGATE_CHECK_ACK: ack });
      const org = await createOrg(first, "unlimited");
      let allowed = 0;
      let attempted = 0;
      let killed = false;
      const consume = async () => {
        while (!killed) {
          attempted++;
          try {
            const res = await first.call("POST", "/v1/check", {
              auth: ADMIN_KEY,
              body: { org_id: org, feature: "closed_calls" },
            });
            if (res.status === 200 && res.body.allowed === true) allowed++;
          } catch {
            return;
          }
        }
      };
      const workers = Array.from({ length: 8 }, () => consume());
      await new Promise((r) => setTimeout(r, 2000));
      await first.kill9();
      killed = true;
      await Promise.all(workers);
      expect(allowed).toBeGreaterThan(0);

      const second = await startTollgate({ ...serverEnv, TOLLGATE_CHECK_ACK: ack });
      const recorded = await used(second, org, "closed_calls");
      expect(recorded).toBeGreaterThanOrEqual(allowed);
      expect(recorded).toBeLessThanOrEqual(attempted);
      await second.kill9();
    },
    90_000,
  );
});
