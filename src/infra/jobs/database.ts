import { and, asc, desc, eq, inArray, like, lt, lte, or, sql } from "drizzle-orm";
import { z } from "zod";
import type { Database, DatabaseHandle } from "../../db/client.js";
import { jobs } from "../../db/schema.js";
import type { Clock } from "../../lib/clock.js";
import { newId } from "../../lib/ids.js";
import type { Logger } from "../../lib/logger.js";
import type { Metrics } from "../../lib/metrics.js";
import {
  type AnyDefinition,
  DEFAULT_ATTEMPTS,
  DEFAULT_BACKOFF_MS,
  errorMessage,
  validatePayload,
} from "./definition.js";
import type { DeadJob, EnqueueOptions, JobQueue, JobSpec } from "./types.js";

type JobRow = typeof jobs.$inferSelect;

export interface DatabaseJobQueueOptions {
  db: DatabaseHandle;
  clock: Clock;
  logger: Logger;
  metrics?: Metrics;
  /** How often to look for due jobs (default 250 ms). */
  pollMs?: number;
  /**
   * How long a claimed job is locked (default 5 minutes). A job still "running" after its lease (by
   * `clock` time) is presumed lost with a crashed worker and is claimed again, so handlers must
   * finish within it.
   */
  leaseMs?: number;
  /**
   * How long completed jobs are kept (default 7 days, as the BullMQ twin): their dedup keys hold for
   * that long, and the table does not grow without bound.
   */
  keepCompletedMs?: number;
}

/** How long a completed scheduled job (dedup key `schedule:…`) is kept. */
const SCHEDULED_KEEP_MS = 3_600_000;

/** Completed jobs are purged at most this often. */
const PURGE_EVERY_MS = 60_000;

export interface DatabaseJobQueue extends JobQueue {
  readonly kind: "database";
  /**
   * Runs due jobs now, until none is due and none is running; returns how many jobs ran meanwhile
   * (also those the poll loop started). For tests and the test clock: after moving the clock, delayed
   * jobs and retries become due.
   */
  drain(): Promise<number>;
}

/**
 * The durable job queue on the `jobs` table, used when Redis is not configured. Due jobs are claimed
 * in one UPDATE … FOR UPDATE SKIP LOCKED statement, so processes sharing a Postgres never run a job
 * twice at once; all times (run_at, leases, backoff) are `clock` time, so the test clock drives it.
 * Dead jobs stay in the table with status "dead". The caller owns `db` and closes it after close().
 */
export function createDatabaseJobQueue(options: DatabaseJobQueueOptions): DatabaseJobQueue {
  const { db, clock, logger, metrics } = options;
  const pollMs = options.pollMs ?? 250;
  const leaseMs = options.leaseMs ?? 5 * 60_000;
  const keepCompletedMs = options.keepCompletedMs ?? 7 * 86_400_000;
  const definitions = new Map<string, AnyDefinition>();
  const inFlight = new Set<Promise<void>>();
  let concurrency = 4;
  let started = false;
  let closing = false;
  // Claims in progress (poll loop and drain), so close() can wait for the jobs they are about to start.
  const claiming = new Set<Promise<unknown>>();
  let timer: NodeJS.Timeout | undefined;
  let ticking: Promise<void> | undefined;
  // The last claim filled every free slot, so more jobs are probably due: poll again when one finishes.
  let backlog = false;
  // Jobs run to an outcome by this process, for drain()'s count.
  let finished = 0;

  function schedule(ms: number): void {
    if (!started || closing) return;
    clearTimeout(timer);
    timer = setTimeout(() => {
      timer = undefined;
      void tick();
    }, ms);
  }

  let lastPurge = 0;
  async function purgeCompleted(): Promise<void> {
    const now = clock.nowMs();
    if (now - lastPurge < PURGE_EVERY_MS) return;
    lastPurge = now;
    await db.db.delete(jobs).where(
      and(
        eq(jobs.status, "completed"),
        or(
          lt(jobs.completedAt, new Date(now - keepCompletedMs)),
          // Scheduled runs (a slot every few seconds) need their dedup key only while their slot
          // lasts: kept an hour, not a week, or they would be most of the table.
          and(like(jobs.dedupKey, "schedule:%"), lt(jobs.completedAt, new Date(now - SCHEDULED_KEEP_MS))),
        ),
      ),
    );
  }

  function tick(): Promise<void> {
    ticking ??= purgeCompleted()
      .then(() => claim(concurrency - inFlight.size))
      .then(() => {})
      .catch((error: unknown) => logger.error({ err: errorMessage(error) }, "job queue poll failed"))
      .finally(() => {
        ticking = undefined;
        // Sooner when a job finishes while there is a backlog (see track).
        schedule(pollMs);
      });
    return ticking;
  }

  /** Claims up to `limit` due jobs and starts them; returns their runs. */
  async function claim(limit: number): Promise<Promise<void>[]> {
    if (limit <= 0 || closing || definitions.size === 0) return [];
    const claimed = claimDue(limit);
    claiming.add(claimed);
    try {
      const rows = await claimed;
      backlog = rows.length === limit;
      // Tracked before leaving `claiming`, so drain() and close() never see a claimed job in neither.
      return rows.map(track);
    } finally {
      claiming.delete(claimed);
    }
  }

  async function claimDue(limit: number): Promise<JobRow[]> {
    const now = clock.now();
    // Only names this process knows: a job from a newer (or older) version waits for a process that
    // can run it instead of being claimed and failed here.
    const due = db.db
      .select({ id: jobs.id })
      .from(jobs)
      .where(
        and(
          inArray(jobs.name, [...definitions.keys()]),
          or(
            and(eq(jobs.status, "queued"), lte(jobs.runAt, now)),
            // A running job whose lease ran out belongs to a worker that crashed (or hung).
            and(eq(jobs.status, "running"), lt(jobs.lockedUntil, now)),
          ),
        ),
      )
      .orderBy(asc(jobs.runAt), asc(jobs.id))
      .limit(limit)
      .for("update", { skipLocked: true });
    const rows = await db.db
      .update(jobs)
      .set({
        status: "running",
        attempts: sql`${jobs.attempts} + 1`,
        lockedUntil: new Date(now.getTime() + leaseMs),
      })
      .where(inArray(jobs.id, due))
      .returning();
    // RETURNING has no order; start the oldest first.
    return rows.sort((a, b) => a.runAt.getTime() - b.runAt.getTime() || a.id.localeCompare(b.id));
  }

  function track(row: JobRow): Promise<void> {
    const run = runOne(row).finally(() => {
      finished++;
      inFlight.delete(run);
      if (backlog) schedule(0);
    });
    inFlight.add(run);
    return run;
  }

  /** Runs one claimed job and records its outcome; never rejects (failures are logged). */
  async function runOne(row: JobRow): Promise<void> {
    const jobLogger = logger.child({ jobId: row.id, job: row.name, attempt: row.attempts });
    try {
      const definition = definitions.get(row.name);
      if (!definition) throw new Error(`no definition for job "${row.name}"`); // claim() filters by name
      // Only a reclaimed job can exceed its attempts: its worker died on the last one. Stop here, or a
      // job that kills its process would be reclaimed forever.
      if (row.attempts > row.maxAttempts) {
        return await markDead(row, "lease expired on the last attempt (did the worker crash?)", jobLogger);
      }
      const parsed = definition.schema.safeParse(row.payload);
      if (!parsed.success) {
        // Retrying cannot fix a payload the current schema rejects.
        return await markDead(row, `invalid payload: ${z.prettifyError(parsed.error)}`, jobLogger);
      }
      try {
        await definition.handler(parsed.data, { jobId: row.id, attempt: row.attempts, logger: jobLogger });
      } catch (error) {
        return await markFailed(row, definition, error, jobLogger);
      }
      const done = await finish(row, { status: "completed", completedAt: clock.now(), lockedUntil: null });
      if (done) metrics?.jobs.inc({ name: row.name, outcome: "completed" });
    } catch (error) {
      // The outcome could not be recorded (database down?): the lease expiring will run the job again.
      jobLogger.error({ err: errorMessage(error) }, "could not record job outcome; it will run again");
    }
  }

  async function markFailed(row: JobRow, definition: AnyDefinition, error: unknown, jobLogger: Logger) {
    const message = errorMessage(error);
    if (row.attempts >= row.maxAttempts) return markDead(row, message, jobLogger);
    const backoffMs = (definition.backoffMs ?? DEFAULT_BACKOFF_MS) * 2 ** (row.attempts - 1);
    const runAt = new Date(clock.nowMs() + backoffMs);
    const done = await finish(row, { status: "queued", runAt, lockedUntil: null, lastError: message });
    if (!done) return;
    metrics?.jobs.inc({ name: row.name, outcome: "retried" });
    jobLogger.warn({ err: message, retryInMs: backoffMs }, "job failed; will retry");
  }

  async function markDead(row: JobRow, message: string, jobLogger: Logger): Promise<void> {
    const values = {
      status: "dead",
      completedAt: clock.now(),
      lockedUntil: null,
      lastError: message,
    } as const;
    const done = await finish(row, values);
    if (!done) return;
    metrics?.jobs.inc({ name: row.name, outcome: "dead" });
    jobLogger.error({ err: message }, "job dead-lettered");
  }

  /**
   * Records an outcome, fenced by the attempt number: if our lease expired and another worker
   * reclaimed the job, that worker's attempt owns the row now and this late result is dropped.
   */
  async function finish(row: JobRow, values: Partial<JobRow>): Promise<boolean> {
    const updated = await db.db
      .update(jobs)
      .set(values)
      .where(and(eq(jobs.id, row.id), eq(jobs.status, "running"), eq(jobs.attempts, row.attempts)))
      .returning({ id: jobs.id });
    const done = updated.length > 0;
    if (!done)
      logger.warn({ jobId: row.id, job: row.name }, "job reclaimed after its lease ran out; result dropped");
    return done;
  }

  /** Inserts a queued job; undefined when its dedup key already exists. */
  async function insertJob<P>(
    target: Database,
    definition: JobSpec<P>,
    payload: P,
    enqueueOptions: EnqueueOptions,
  ): Promise<string | undefined> {
    const id = newId("job");
    const now = clock.nowMs();
    const inserted = await target
      .insert(jobs)
      .values({
        id,
        name: definition.name,
        payload: validatePayload(definition, payload),
        maxAttempts: definition.attempts ?? DEFAULT_ATTEMPTS,
        runAt: new Date(now + (enqueueOptions.delayMs ?? 0)),
        dedupKey: enqueueOptions.dedupKey ?? null,
        createdAt: new Date(now),
      })
      .onConflictDoNothing({ target: jobs.dedupKey })
      .returning({ id: jobs.id });
    return inserted.length > 0 ? id : undefined;
  }

  return {
    kind: "database",

    async enqueue<P>(definition: JobSpec<P>, payload: P, enqueueOptions: EnqueueOptions = {}) {
      const id = await insertJob(db.db, definition, payload, enqueueOptions);
      if (id === undefined) {
        const [existing] = await db.db
          .select({ id: jobs.id })
          .from(jobs)
          .where(eq(jobs.dedupKey, enqueueOptions.dedupKey ?? ""));
        if (!existing) throw new Error(`job with dedup key "${enqueueOptions.dedupKey}" vanished`);
        return existing.id;
      }
      if (!enqueueOptions.delayMs) schedule(0);
      return id;
    },

    async enqueueInTx<P>(
      tx: Database,
      definition: JobSpec<P>,
      payload: P,
      enqueueOptions: EnqueueOptions = {},
    ) {
      // The queue is a table: a row written in the caller's transaction is the outbox. The poll loop
      // sees it once committed.
      await insertJob(tx, definition, payload, enqueueOptions);
    },

    async start(list, startOptions = {}) {
      if (started) throw new Error("job queue already started");
      for (const definition of list) definitions.set(definition.name, definition);
      concurrency = Math.max(1, startOptions.concurrency ?? 4);
      started = true;
      schedule(0);
    },

    async drain() {
      const before = finished;
      for (;;) {
        const runs = await claim(concurrency - inFlight.size);
        if (runs.length > 0) {
          await Promise.all(runs);
          continue;
        }
        if (inFlight.size === 0 && claiming.size === 0) return finished - before;
        // The poll loop is claiming or running jobs (maybe the due ones): wait, then look again. Its
        // claim errors are the poll loop's to log.
        await Promise.race([...inFlight, ...[...claiming].map((claimed) => claimed.catch(() => undefined))]);
      }
    },

    async deadJobs(limit = 50): Promise<DeadJob[]> {
      const rows = await db.db
        .select()
        .from(jobs)
        .where(eq(jobs.status, "dead"))
        .orderBy(desc(jobs.completedAt), desc(jobs.id))
        .limit(limit);
      return rows.map((row) => ({
        id: row.id,
        name: row.name,
        payload: row.payload,
        attempts: row.attempts,
        error: row.lastError,
        failedAt: row.completedAt,
      }));
    },

    async retryDead(id) {
      // last_error is kept: it says why the job died until a new attempt overwrites or completes it.
      const updated = await db.db
        .update(jobs)
        .set({ status: "queued", attempts: 0, runAt: clock.now(), lockedUntil: null, completedAt: null })
        .where(and(eq(jobs.id, id), eq(jobs.status, "dead")))
        .returning({ id: jobs.id });
      if (updated.length > 0) schedule(0);
      return updated.length > 0;
    },

    async close() {
      closing = true;
      clearTimeout(timer);
      timer = undefined;
      // Claims already sent may still return jobs; they run to the end like the others.
      while (ticking || claiming.size > 0 || inFlight.size > 0) {
        await Promise.allSettled([ticking, ...claiming, ...inFlight]);
      }
    },
  };
}
