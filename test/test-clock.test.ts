import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jobs } from "../src/db/schema.js";
import { emailDeliverJob } from "../src/modules/jobs/email-job.js";
import { appModes, createTestApp, deleteRedisPrefix, type TestApp } from "./support/app.js";
import { createTestDatabase, type TestDatabase, uniquePrefix } from "./support/storage.js";

const day = 86_400_000;

describe.each(appModes)("test clock ($name)", (mode) => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ ...mode, env: { TOLLGATE_TEST_CLOCK: "1" } });
  });
  afterAll(() => t.close());

  it("is frozen: time does not move by itself", async () => {
    const first = (await t.call("GET", "/v1/test-clock", { auth: "operator" })).body.now;
    await new Promise((r) => setTimeout(r, 30));
    const second = (await t.call("GET", "/v1/test-clock", { auth: "operator" })).body;
    expect(second).toEqual({ now: first, frozen: true });
    expect(t.deps.clock.now().toISOString()).toBe(first);
  });

  it("moves forward to the given time and reports what ran", async () => {
    const before = t.deps.clock.nowMs();
    const to = new Date(before + 30 * day).toISOString();
    const res = await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: { to } });
    expect(res.status).toBe(200);
    expect(res.body.previous).toBe(new Date(before).toISOString());
    expect(res.body.now).toBe(to);
    expect(t.deps.clock.now().toISOString()).toBe(to);
    expect(Array.isArray(res.body.ran)).toBe(true);
  });

  it("accepts a time with an offset", async () => {
    const target = new Date(t.deps.clock.nowMs() + day);
    const local = `${target.toISOString().slice(0, 19)}+02:00`;
    const res = await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: { to: local } });
    expect(res.status).toBe(200);
    expect(res.body.now).toBe(new Date(local).toISOString());
  });

  it("refuses a jump of more than 100 years (it could never come back)", async () => {
    const res = await t.call("POST", "/v1/test-clock/advance", {
      auth: "operator",
      body: { to: "9999-12-31T00:00:00Z" },
    });
    expect(res.status).toBe(400);
    expect(res.body.errors[0]).toMatchObject({ field: "to", code: "too_big" });
  });

  it("never moves backwards", async () => {
    const now = t.deps.clock.now().toISOString();
    const res = await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: { to: now } });
    expect(res.status).toBe(400);
    expect(res.body.errors[0]).toMatchObject({ field: "to" });
    expect(t.deps.clock.now().toISOString()).toBe(now);
  });

  it("runs queued work that came due", async () => {
    // With the test clock, jobs run on the database queue even when Redis is configured.
    expect(t.deps.jobs.kind).toBe("database");
    // A real job of the app's (its workers are running): an e-mail delivery that finds nothing to send.
    const id = await t.deps.jobs.enqueue(emailDeliverJob, { email_id: "eml_none" }, { delayMs: 10 * day });
    const status = async () =>
      (await t.database.db.select({ status: jobs.status }).from(jobs).where(eq(jobs.id, id)))[0]?.status;
    expect(await status()).toBe("queued");
    const res = await t.call("POST", "/v1/test-clock/advance", {
      auth: "operator",
      body: { to: new Date(t.deps.clock.nowMs() + 11 * day).toISOString() },
    });
    // By the time the advance answers, the job that came due has run (whether the queue's own poll
    // loop or the advance's drain picked it up, so the count reported under "jobs" may be 0 or 1).
    expect(res.body.ran.map((r: { name: string }) => r.name)).toContain("jobs");
    expect(await status()).toBe("completed");
  });
});

describe("test clock routes are absent unless enabled", () => {
  it("answers 404 and is left out of the OpenAPI document", async () => {
    const t = await createTestApp({ database: "pglite", redis: false });
    try {
      expect((await t.call("GET", "/v1/test-clock", { auth: "operator" })).status).toBe(404);
      const doc = (await t.call("GET", "/openapi.json")).body;
      expect(Object.keys(doc.paths)).not.toContain("/v1/test-clock");
    } finally {
      await t.close();
    }
  });
});

describe.each(appModes.filter((m) => m.database === "postgres"))(
  "test clock shared by processes ($name)",
  (mode) => {
    let db: TestDatabase;
    beforeAll(async () => {
      db = await createTestDatabase("postgres");
    });
    afterAll(() => db.drop());

    it("moves every process sharing the database, and survives a restart", async () => {
      const prefix = uniquePrefix();
      const options = {
        ...mode,
        env: { TOLLGATE_TEST_CLOCK: "1" },
        sharedDatabase: db.handle,
        redisPrefix: prefix,
      };
      const a = await createTestApp(options);
      const b = await createTestApp(options);
      try {
        expect(b.deps.clock.nowMs()).toBe(a.deps.clock.nowMs());
        const to = new Date(a.deps.clock.nowMs() + 45 * day).toISOString();
        const moved = await a.call("POST", "/v1/test-clock/advance", { auth: "operator", body: { to } });
        expect(moved.status, moved.text).toBe(200);
        // With Redis the broadcast moves b at once; without it (separate in-process pub/subs) b
        // catches up from the database within a second.
        await expect.poll(() => b.deps.clock.now().toISOString(), { timeout: 5000 }).toBe(to);
      } finally {
        await a.close();
        await b.close();
      }
      const c = await createTestApp(options);
      try {
        expect(c.deps.clock.now().getTime()).toBeGreaterThan(Date.now() + 40 * day);
      } finally {
        await c.close();
        if (mode.redis) await deleteRedisPrefix(prefix);
      }
    });
  },
);
