import { setTimeout as sleep } from "node:timers/promises";
import { eq, sql } from "drizzle-orm";
import { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { z } from "zod";
import {
  createTestDatabase,
  type DatabaseMode,
  databaseModes,
  hasRedis,
  requireRedisUrl,
  type TestDatabase,
  uniquePrefix,
} from "../../../test/support/storage.js";
import { openDatabase } from "../../db/client.js";
import { jobs } from "../../db/schema.js";
import { ManualClock } from "../../lib/clock.js";
import { createLogger } from "../../lib/logger.js";
import { createMetrics, type Metrics } from "../../lib/metrics.js";
import { createBullmqJobQueue } from "./bullmq.js";
import { createDatabaseJobQueue, type DatabaseJobQueue } from "./database.js";
import type { JobContext, JobDefinition, JobQueue } from "./types.js";

const logger = createLogger("silent");
const START = Date.UTC(2030, 0, 1);

/** One twin under test, with time made controllable the way that twin allows. */
interface Harness {
  queue: JobQueue;
  /** The database the queue (or its outbox) lives in. */
  database: TestDatabase;
  metrics: Metrics;
  /** A delay long enough to observe a job not running yet, and a moment before it is due. */
  delayMs: number;
  earlyMs: number;
  /** Lets `ms` pass: moves the test clock and drains (database), or sleeps (BullMQ). */
  advance(ms: number): Promise<void>;
  /** Processes jobs, letting time pass, until `done` holds. */
  settle(done: () => boolean | Promise<boolean>): Promise<void>;
  close(): Promise<void>;
}

interface Twin {
  name: string;
  before(): Promise<void>;
  open(): Promise<Harness>;
}

// One database per mode for the whole file: starting PGlite and migrating it takes seconds.
const databases = new Map<DatabaseMode, Promise<TestDatabase>>();
function databaseFor(mode: DatabaseMode): Promise<TestDatabase> {
  let database = databases.get(mode);
  if (!database) {
    database = createTestDatabase(mode);
    databases.set(mode, database);
  }
  return database;
}
afterAll(async () => {
  await Promise.all([...databases.values()].map(async (database) => (await database).drop()));
});

/** Polls `done` in real time. */
async function until(done: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await sleep(15);
  }
}

function databaseTwin(mode: DatabaseMode): Twin {
  let testDb: TestDatabase | undefined;
  return {
    name: `database (${mode})`,
    before: async () => {
      testDb = await databaseFor(mode);
    },
    open: async () => {
      if (!testDb) throw new Error("database not created");
      await testDb.handle.query(sql`delete from jobs`);
      const clock = new ManualClock(START);
      const metrics = createMetrics({ processMetrics: false });
      const queue = createDatabaseJobQueue({ db: testDb.handle, clock, logger, metrics, pollMs: 20 });
      return {
        queue,
        database: testDb,
        metrics,
        delayMs: 60_000,
        earlyMs: 59_999,
        advance: async (ms) => {
          clock.moveTo(clock.nowMs() + ms);
          await queue.drain();
        },
        settle: async (done) => {
          for (let step = 0; step < 50; step++) {
            await queue.drain();
            if (await done()) return;
            clock.moveTo(clock.nowMs() + 10_000);
          }
          throw new Error("jobs did not settle");
        },
        close: () => queue.close(),
      };
    },
  };
}

function bullmqTwin(): Twin {
  const redisUrl = hasRedis ? requireRedisUrl() : "";
  return {
    name: "bullmq (redis)",
    before: async () => {},
    open: async () => {
      const prefix = uniquePrefix();
      const metrics = createMetrics({ processMetrics: false });
      const database = await databaseFor("pglite");
      await database.handle.query(sql`delete from job_outbox`);
      const queue = createBullmqJobQueue({
        redisUrl,
        prefix,
        logger,
        metrics,
        database: database.handle,
        relayMs: 20,
      });
      return {
        queue,
        database,
        metrics,
        delayMs: 400,
        earlyMs: 200,
        advance: (ms) => sleep(ms),
        settle: (done) => until(done),
        close: async () => {
          await queue.close();
          await deleteKeys(redisUrl, prefix);
        },
      };
    },
  };
}

async function deleteKeys(redisUrl: string, prefix: string): Promise<void> {
  const redis = new Redis(redisUrl);
  try {
    for await (const keys of redis.scanStream({ match: `${prefix}*`, count: 500 })) {
      if ((keys as string[]).length > 0) await redis.del(...(keys as string[]));
    }
  } finally {
    redis.disconnect();
  }
}

async function countOf(metrics: Metrics, name: string, outcome: string): Promise<number> {
  const { values } = await metrics.jobs.get();
  return values.find((v) => v.labels.name === name && v.labels.outcome === outcome)?.value ?? 0;
}

const payloadSchema = z.object({ n: z.number() });
type Payload = z.infer<typeof payloadSchema>;

/** A definition whose handler records every call; `fail(call)` decides whether a call throws. */
function recorder(
  name: string,
  options: Partial<JobDefinition<Payload>> & { fail?: (call: number) => boolean } = {},
) {
  const calls: { payload: Payload; context: JobContext }[] = [];
  const definition: JobDefinition<Payload> = {
    name,
    schema: payloadSchema,
    attempts: 3,
    backoffMs: 10,
    ...options,
    handler: async (payload, context) => {
      calls.push({ payload, context });
      if (options.fail?.(calls.length)) throw new Error(`boom ${calls.length}`);
    },
  };
  return { definition, calls };
}

const twins: Twin[] = [...databaseModes.map(databaseTwin), ...(hasRedis ? [bullmqTwin()] : [])];

describe.each(twins)("job queue: $name", (twin) => {
  let harness: Harness;
  let queue: JobQueue;
  beforeAll(() => twin.before());
  beforeEach(async () => {
    harness = await twin.open();
    queue = harness.queue;
  });
  afterEach(() => harness.close());

  it("runs a job once with its payload", async () => {
    const { definition, calls } = recorder("once");
    await queue.start([definition]);
    const id = await queue.enqueue(definition, { n: 42 });
    await harness.settle(() => calls.length === 1);
    await harness.advance(100);
    expect(calls).toHaveLength(1);
    expect(calls[0]?.payload).toEqual({ n: 42 });
    expect(calls[0]?.context).toMatchObject({ jobId: id, attempt: 1 });
    await until(async () => (await countOf(harness.metrics, "once", "completed")) === 1);
  });

  it("enqueues in a transaction: nothing if it rolls back, once after it commits", async () => {
    const { definition, calls } = recorder("outboxed");
    await queue.start([definition]);
    const db = harness.database.handle.db;
    await expect(
      db.transaction(async (tx) => {
        await queue.enqueueInTx(tx, definition, { n: 1 });
        throw new Error("rolled back");
      }),
    ).rejects.toThrow("rolled back");
    let committed = false;
    await db.transaction(async (tx) => {
      await queue.enqueueInTx(tx, definition, { n: 2 });
      await queue.enqueueInTx(tx, definition, { n: 3 }, { dedupKey: "outbox-once" });
      await queue.enqueueInTx(tx, definition, { n: 4 }, { dedupKey: "outbox-once" });
      // Not before the commit, however long the transaction takes (real time: the poll loops run).
      await sleep(100);
      committed = calls.length === 0;
    });
    expect(committed).toBe(true);
    await harness.settle(() => calls.length === 2);
    await harness.advance(100);
    expect(calls.map((call) => call.payload.n).sort()).toEqual([2, 3]);
    // The outbox is emptied once relayed (the database twin writes its jobs table directly).
    const left = await harness.database.handle.query(sql`select count(*)::int as n from job_outbox`);
    expect(left).toEqual([{ n: 0 }]);
  });

  it("refuses an invalid payload in a transaction before anything is written", async () => {
    const { definition } = recorder("strict");
    const db = harness.database.handle.db;
    await expect(
      db.transaction(async (tx) => {
        await queue.enqueueInTx(tx, definition, { n: "x" } as unknown as Payload);
      }),
    ).rejects.toThrow(/Invalid payload/);
  });

  it("retries a failing handler with backoff until it succeeds", async () => {
    const { definition, calls } = recorder("flaky", { fail: (call) => call < 3 });
    await queue.start([definition]);
    await queue.enqueue(definition, { n: 1 });
    await harness.settle(async () => (await countOf(harness.metrics, "flaky", "completed")) === 1);
    await harness.advance(100);
    expect(calls.map((call) => call.context.attempt)).toEqual([1, 2, 3]);
    expect(await countOf(harness.metrics, "flaky", "retried")).toBe(2);
    expect(await queue.deadJobs()).toEqual([]);
  });

  it("dead-letters a job after its attempts, and retryDead runs it again", async () => {
    let healthy = false;
    const { definition, calls } = recorder("doomed", { fail: () => !healthy });
    await queue.start([definition]);
    const id = await queue.enqueue(definition, { n: 7 });
    await harness.settle(async () => (await queue.deadJobs()).some((job) => job.id === id));
    expect(calls).toHaveLength(3);
    const [dead] = await queue.deadJobs();
    expect(dead).toMatchObject({ id, name: "doomed", payload: { n: 7 }, attempts: 3, error: "boom 3" });
    expect(dead?.failedAt).toBeInstanceOf(Date);
    expect(await countOf(harness.metrics, "doomed", "dead")).toBe(1);

    healthy = true;
    expect(await queue.retryDead(id)).toBe(true);
    await harness.settle(async () => calls.length === 4 && (await queue.deadJobs()).length === 0);
    expect(calls[3]?.context.attempt).toBe(1);
    expect(await queue.retryDead(id)).toBe(false);
    expect(await queue.retryDead("job_01jzzzzzzzzzzzzzzzzzzzzzzz")).toBe(false);
  });

  it("rejects an invalid payload at enqueue", async () => {
    const { definition } = recorder("strict");
    await expect(queue.enqueue(definition, { n: "nope" } as unknown as Payload)).rejects.toThrow(
      /invalid payload for job "strict"/i,
    );
  });

  it("dead-letters without retrying a payload that no longer validates when it runs", async () => {
    const { definition: old } = recorder("evolving");
    await queue.enqueue(old, { n: 1 });
    const { definition: current, calls } = recorder("evolving", {
      schema: z.object({ n: z.string() }) as never,
    });
    await queue.start([current]);
    await harness.settle(async () => (await queue.deadJobs()).length === 1);
    expect(calls).toHaveLength(0);
    const [dead] = await queue.deadJobs();
    expect(dead?.attempts).toBe(1);
    expect(dead?.error).toMatch(/invalid payload/);
  });

  it("neither runs nor dead-letters a job it has no definition for", async () => {
    const { definition: known } = recorder("known");
    const { definition: unknown, calls } = recorder("from-a-newer-version");
    await queue.start([known]);
    await queue.enqueue(unknown, { n: 1 });
    await harness.advance(200);
    expect(calls).toHaveLength(0);
    expect(await queue.deadJobs()).toEqual([]);
  });

  it("runs a deduplicated job once and returns the same id", async () => {
    const { definition, calls } = recorder("dedup");
    await queue.start([definition]);
    const key = "invoice:inv_1:reminder";
    const first = await queue.enqueue(definition, { n: 1 }, { dedupKey: key });
    const second = await queue.enqueue(definition, { n: 2 }, { dedupKey: key });
    expect(second).toBe(first);
    await harness.settle(() => calls.length === 1);
    expect(await queue.enqueue(definition, { n: 3 }, { dedupKey: key })).toBe(first);
    await harness.advance(100);
    expect(calls.map((call) => call.payload)).toEqual([{ n: 1 }]);
  });

  it("does not run a delayed job before its time", async () => {
    const { definition, calls } = recorder("later");
    await queue.start([definition]);
    await queue.enqueue(definition, { n: 1 }, { delayMs: harness.delayMs });
    await harness.advance(harness.earlyMs);
    expect(calls).toHaveLength(0);
    await harness.settle(() => calls.length === 1);
  });

  it("waits for a running handler on close", async () => {
    let release = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    let started = false;
    let finished = false;
    const definition: JobDefinition<Payload> = {
      name: "slow",
      schema: payloadSchema,
      handler: async () => {
        started = true;
        await gate;
        finished = true;
      },
    };
    await queue.start([definition]);
    await queue.enqueue(definition, { n: 1 });
    await until(() => started);
    let closed = false;
    const closing = queue.close().then(() => {
      closed = true;
    });
    await sleep(100);
    expect(closed).toBe(false);
    release();
    await closing;
    expect(finished).toBe(true);
  });
});

describe.each(databaseModes)("database job queue (%s)", (mode) => {
  let testDb: TestDatabase;
  let clock: ManualClock;
  const queues: DatabaseJobQueue[] = [];
  const open = (db = testDb.handle, leaseMs?: number) => {
    const queue = createDatabaseJobQueue({ db, clock, logger, pollMs: 10, leaseMs });
    queues.push(queue);
    return queue;
  };
  const statusOf = async (id: string) =>
    (await testDb.handle.db.select().from(jobs).where(eq(jobs.id, id)))[0]?.status;
  beforeAll(async () => {
    testDb = await databaseFor(mode);
  });
  beforeEach(async () => {
    await testDb.handle.query(sql`delete from jobs`);
    clock = new ManualClock(START);
  });
  afterEach(async () => {
    await Promise.all(queues.splice(0).map((queue) => queue.close()));
  });

  it("schedules retries by the clock, not by wall time", async () => {
    const queue = open();
    const { definition, calls } = recorder("clocked", { backoffMs: 1000, fail: (call) => call === 1 });
    await queue.start([definition]);
    await queue.enqueue(definition, { n: 1 });
    expect(await queue.drain()).toBe(1);
    clock.moveTo(START + 999);
    expect(await queue.drain()).toBe(0);
    clock.moveTo(START + 1000);
    expect(await queue.drain()).toBe(1);
    expect(calls).toHaveLength(2);
  });

  it("forgets completed jobs (and their dedup keys) after seven days", async () => {
    const queue = open();
    const { definition, calls } = recorder("once-a-week");
    await queue.start([definition]);
    const first = await queue.enqueue(definition, { n: 1 }, { dedupKey: "weekly:2026-47" });
    expect(await queue.drain()).toBe(1);
    clock.moveTo(START + 6 * 86_400_000);
    expect(await queue.enqueue(definition, { n: 1 }, { dedupKey: "weekly:2026-47" })).toBe(first);
    clock.moveTo(START + 8 * 86_400_000);
    await expect.poll(() => statusOf(first), { timeout: 5000 }).toBeUndefined();
    const second = await queue.enqueue(definition, { n: 2 }, { dedupKey: "weekly:2026-47" });
    expect(second).not.toBe(first);
    expect(await queue.drain()).toBe(1);
    expect(calls).toHaveLength(2);
  });

  it("leaves a job it has no definition for to a process that has one", async () => {
    const { definition: known } = recorder("known");
    const { definition: newer, calls } = recorder("from-a-newer-version");
    const older = open();
    await older.start([known]);
    const id = await older.enqueue(newer, { n: 1 });
    expect(await older.drain()).toBe(0);
    expect(await statusOf(id)).toBe("queued");
    const upgraded = open();
    await upgraded.start([newer]);
    expect(await upgraded.drain()).toBe(1);
    expect(calls).toHaveLength(1);
  });

  it("reclaims a job whose worker crashed once its lease expires", async () => {
    const queue = open(testDb.handle, 60_000);
    const { definition, calls } = recorder("orphan");
    const id = await queue.enqueue(definition, { n: 1 });
    // What a crash leaves behind: claimed (attempt 1), lease running, never finished.
    await testDb.handle.db
      .update(jobs)
      .set({ status: "running", attempts: 1, lockedUntil: new Date(START + 60_000) })
      .where(eq(jobs.id, id));
    await queue.start([definition]);
    expect(await queue.drain()).toBe(0);
    clock.moveTo(START + 60_001);
    expect(await queue.drain()).toBe(1);
    expect(calls[0]?.context.attempt).toBe(2);
    expect(await statusOf(id)).toBe("completed");
  });

  it("dead-letters a reclaimed job whose worker crashed on its last attempt", async () => {
    const queue = open(testDb.handle, 60_000);
    const { definition, calls } = recorder("poison", { attempts: 1 });
    const id = await queue.enqueue(definition, { n: 1 });
    await testDb.handle.db
      .update(jobs)
      .set({ status: "running", attempts: 1, lockedUntil: new Date(START + 60_000) })
      .where(eq(jobs.id, id));
    await queue.start([definition]);
    clock.moveTo(START + 60_001);
    await queue.drain();
    expect(calls).toHaveLength(0);
    expect((await queue.deadJobs())[0]).toMatchObject({ id, error: expect.stringMatching(/lease expired/) });
  });

  it("keeps a completed scheduled run an hour and any other completed job a week", async () => {
    const { definition } = recorder("kept");
    const queue = open();
    await queue.start([definition]);
    const scheduled = await queue.enqueue(definition, { n: 1 }, { dedupKey: "schedule:kept:1" });
    const plain = await queue.enqueue(definition, { n: 2 }, { dedupKey: "kept:2" });
    await queue.drain();
    expect([await statusOf(scheduled), await statusOf(plain)]).toEqual(["completed", "completed"]);
    // The poll loop purges at most once a minute (queue time), on its next tick.
    clock.moveTo(clock.nowMs() + 2 * 3_600_000);
    await until(async () => (await statusOf(scheduled)) === undefined);
    expect(await statusOf(plain)).toBe("completed");
    clock.moveTo(clock.nowMs() + 7 * 86_400_000);
    await until(async () => (await statusOf(plain)) === undefined);
  });

  it.runIf(mode === "postgres")("runs every job exactly once across two processes", async () => {
    const second = await openDatabase({ url: testDb.url, poolSize: 5 });
    try {
      const runs = new Map<string, number>();
      const perQueue = [0, 0];
      const definitionFor = (index: 0 | 1): JobDefinition<Payload> => ({
        name: "shared",
        schema: payloadSchema,
        handler: async (_payload, context) => {
          runs.set(context.jobId, (runs.get(context.jobId) ?? 0) + 1);
          perQueue[index] = (perQueue[index] ?? 0) + 1;
          await sleep(2);
        },
      });
      const a = open();
      const b = open(second);
      await a.start([definitionFor(0)]);
      await b.start([definitionFor(1)]);
      const ids = await Promise.all(Array.from({ length: 50 }, (_, n) => a.enqueue(definitionFor(0), { n })));
      await Promise.all([a.drain(), b.drain(), a.drain(), b.drain()]);
      await until(() => runs.size === 50);
      await Promise.all([a.close(), b.close()]);
      expect(ids.every((id) => runs.get(id) === 1)).toBe(true);
      expect(perQueue.every((count) => count > 0)).toBe(true);
      const [row] = await testDb.handle.query<{ completed: number }>(
        sql`select count(*)::int as completed from jobs where status = 'completed'`,
      );
      expect(row?.completed).toBe(50);
    } finally {
      await second.close();
    }
  });
});
