import { DelayedError, type Job, type JobsOptions, Queue, UnrecoverableError, Worker } from "bullmq";
import { asc, inArray } from "drizzle-orm";
import type { Redis } from "ioredis";
import { z } from "zod";
import type { Database, DatabaseHandle } from "../../db/client.js";
import { jobOutbox } from "../../db/schema.js";
import { newId } from "../../lib/ids.js";
import type { Logger } from "../../lib/logger.js";
import type { Metrics } from "../../lib/metrics.js";
import { createRedis, waitForRedis } from "../redis.js";
import { type AnyDefinition, DEFAULT_ATTEMPTS, DEFAULT_BACKOFF_MS, validatePayload } from "./definition.js";
import type { DeadJob, EnqueueOptions, JobQueue, JobSpec } from "./types.js";

export interface BullmqJobQueueOptions {
  redisUrl: string;
  /** Holds the transactional outbox (`job_outbox`), relayed to Redis after each commit. */
  database: DatabaseHandle;
  /** How often the outbox relay looks for committed jobs (default 250 ms). */
  relayMs?: number;
  /** Namespace of every BullMQ key (BullMQ adds the ':' itself; a trailing one is dropped). */
  prefix: string;
  logger: Logger;
  metrics?: Metrics;
  /** One BullMQ queue carries every job; the BullMQ job name is the definition name. */
  queueName?: string;
}

/** Completed jobs kept (so a dedup key still matches them) — bounded so Redis memory stays flat. */
const KEEP_COMPLETED = { age: 7 * 24 * 3600, count: 10_000 };
/** A job this process cannot run is put back for this long, for a process (version) that can. */
const UNKNOWN_JOB_DELAY_MS = 60_000;
/** Outbox rows moved to Redis per relay transaction. */
const RELAY_BATCH = 200;
/** How long enqueue and the dead-letter calls wait for Redis before they fail. */
const READY_TIMEOUT_MS = 2000;

/**
 * The job queue on BullMQ (Redis), used when Redis is configured. Retries are BullMQ's (attempts and
 * exponential backoff from the definition); a job that failed its last attempt stays in BullMQ's
 * failed set, which is the dead-letter list (retries go to the delayed set, never to failed).
 */
export function createBullmqJobQueue(options: BullmqJobQueueOptions): JobQueue {
  const { redisUrl, logger, metrics } = options;
  const prefix = options.prefix.replace(/:+$/, "");
  const queueName = options.queueName ?? "tollgate";
  // Producer side: fail fast like every hot-path Redis call, so enqueue errors instead of hanging.
  const queueConnection = createRedis(redisUrl, { logger, name: "tollgate-jobs" });
  const queue = new Queue(queueName, { connection: queueConnection, prefix });
  queue.on("error", throttledLog(logger, "job queue (redis) error"));
  // BullMQ waits for Redis forever; callers get an error instead while it is unreachable.
  const ready = () => waitForRedis(queueConnection, READY_TIMEOUT_MS);
  let worker: Worker | undefined;
  let workerConnection: Redis | undefined;

  const jobOptions = (
    spec: { attempts: number; backoffMs: number },
    enqueueOptions: EnqueueOptions,
  ): JobsOptions => ({
    jobId: enqueueOptions.dedupKey === undefined ? newId("job") : dedupJobId(enqueueOptions.dedupKey),
    delay: enqueueOptions.delayMs,
    attempts: spec.attempts,
    backoff: { type: "exponential", delay: spec.backoffMs },
    removeOnComplete: KEEP_COMPLETED,
    // Failed jobs are the dead-letter list: kept until retried or removed by an operator.
    removeOnFail: false,
  });

  // The outbox relay: every process that enqueues in transactions, and every worker, moves committed
  // outbox rows to BullMQ. Rows are locked (SKIP LOCKED, so relays share the work) and deleted in the
  // transaction that enqueued them: a crash before the commit leaves them for the next relay, whose
  // enqueue is a no-op, because a row's job id is derived from the row (BullMQ ignores a known id).
  const relayMs = options.relayMs ?? 250;
  let relayTimer: NodeJS.Timeout | undefined;
  let relaying: Promise<void> | undefined;
  let closing = false;
  function startRelay(): void {
    if (relayTimer || closing) return;
    relayTimer = setInterval(() => {
      relaying ??= relay()
        .catch(throttledLog(logger, "job outbox relay failed"))
        .finally(() => {
          relaying = undefined;
        });
    }, relayMs);
    relayTimer.unref();
  }
  async function relay(): Promise<void> {
    // Not while Redis is away: the transaction below would hold its rows (and, on PGlite, the one
    // connection) while waiting for it.
    if (queueConnection.status !== "ready") return;
    for (;;) {
      const moved = await options.database.db.transaction(async (tx) => {
        const rows = await tx
          .select()
          .from(jobOutbox)
          .orderBy(asc(jobOutbox.id))
          .limit(RELAY_BATCH)
          .for("update", { skipLocked: true });
        if (rows.length === 0) return 0;
        await ready();
        for (const row of rows) {
          await queue.add(
            row.name,
            row.payload,
            jobOptions(
              { attempts: row.maxAttempts, backoffMs: row.backoffMs },
              { dedupKey: row.dedupKey ?? `outbox:${row.id}`, delayMs: row.delayMs || undefined },
            ),
          );
        }
        await tx.delete(jobOutbox).where(
          inArray(
            jobOutbox.id,
            rows.map((row) => row.id),
          ),
        );
        return rows.length;
      });
      if (moved < RELAY_BATCH) return;
    }
  }

  async function runJob(job: Job, token: string | undefined, definitions: Map<string, AnyDefinition>) {
    const attempt = job.attemptsMade + 1;
    const jobLogger = logger.child({ jobId: job.id, job: job.name, attempt });
    const definition = definitions.get(job.name);
    if (!definition) {
      // A newer (or older) version enqueued it: leave it for a process that knows it, don't fail it.
      jobLogger.warn({ retryInMs: UNKNOWN_JOB_DELAY_MS }, "no definition for this job here; putting it back");
      await job.moveToDelayed(Date.now() + UNKNOWN_JOB_DELAY_MS, token);
      throw new DelayedError();
    }
    const parsed = definition.schema.safeParse(job.data);
    if (!parsed.success) {
      const message = `invalid payload: ${z.prettifyError(parsed.error)}`;
      recordDead(job.name, message, jobLogger);
      // Retrying cannot fix a payload the current schema rejects.
      throw new UnrecoverableError(message);
    }
    try {
      await definition.handler(parsed.data, { jobId: job.id ?? "", attempt, logger: jobLogger });
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      // Mirrors BullMQ's own decision (Job.shouldRetryJob): retry while attemptsMade + 1 < attempts.
      if (attempt >= (job.opts.attempts ?? 1)) recordDead(job.name, message, jobLogger);
      else {
        metrics?.jobs.inc({ name: job.name, outcome: "retried" });
        jobLogger.warn({ err: message }, "job failed; will retry");
      }
      throw error;
    }
    metrics?.jobs.inc({ name: job.name, outcome: "completed" });
  }

  function recordDead(name: string, message: string, jobLogger: Logger): void {
    metrics?.jobs.inc({ name, outcome: "dead" });
    jobLogger.error({ err: message }, "job dead-lettered");
  }

  return {
    kind: "redis",

    async enqueue<P>(definition: JobSpec<P>, payload: P, enqueueOptions: EnqueueOptions = {}) {
      const data = validatePayload(definition, payload);
      await ready();
      const job = await queue.add(definition.name, data, jobOptions(specOf(definition), enqueueOptions));
      if (!job.id) throw new Error(`BullMQ returned no id for job "${definition.name}"`);
      return job.id;
    },

    async enqueueInTx<P>(
      tx: Database,
      definition: JobSpec<P>,
      payload: P,
      enqueueOptions: EnqueueOptions = {},
    ) {
      const spec = specOf(definition);
      await tx.insert(jobOutbox).values({
        id: newId("outbox"),
        name: definition.name,
        payload: validatePayload(definition, payload),
        delayMs: enqueueOptions.delayMs ?? 0,
        dedupKey: enqueueOptions.dedupKey ?? null,
        maxAttempts: spec.attempts,
        backoffMs: spec.backoffMs,
      });
      startRelay();
    },

    async start(list, startOptions = {}) {
      if (worker) throw new Error("job queue already started");
      const definitions = new Map(list.map((definition) => [definition.name, definition]));
      // Workers block on Redis, which BullMQ requires unlimited retries for; BullMQ duplicates this
      // connection for its own clients, so it never has to open a socket itself (lazyConnect).
      workerConnection = createRedis(redisUrl, {
        logger,
        name: "tollgate-jobs-worker",
        lazyConnect: true,
        enableOfflineQueue: true,
        maxRetriesPerRequest: null,
        commandTimeout: undefined,
      });
      worker = new Worker(queueName, (job, token) => runJob(job, token, definitions), {
        connection: workerConnection,
        prefix,
        concurrency: Math.max(1, startOptions.concurrency ?? 4),
      });
      worker.on("error", throttledLog(logger, "job worker (redis) error"));
      await worker.waitUntilReady();
      startRelay();
    },

    async deadJobs(limit = 50): Promise<DeadJob[]> {
      await ready();
      const failed = await queue.getFailed(0, limit - 1);
      return failed.map((job) => ({
        id: job.id ?? "",
        name: job.name,
        payload: job.data,
        attempts: job.attemptsMade,
        error: job.failedReason ?? null,
        failedAt: job.finishedOn ? new Date(job.finishedOn) : null,
      }));
    },

    async retryDead(id) {
      await ready();
      const job = await queue.getJob(id);
      if (!job || !(await job.isFailed())) return false;
      await job.retry("failed", { resetAttemptsMade: true, resetAttemptsStarted: true });
      return true;
    },

    async close() {
      closing = true;
      clearInterval(relayTimer);
      await relaying;
      // Worker.close waits for running handlers before it lets go of its connections.
      await worker?.close();
      await queue.close();
      await Promise.all([quit(queueConnection), workerConnection && quit(workerConnection)]);
    },
  };

  async function quit(connection: Redis): Promise<void> {
    // Never connected, or reconnecting: nothing to say goodbye to, just stop the retries.
    if (connection.status !== "ready") return connection.disconnect();
    await connection.quit().catch((error: unknown) => {
      logger.warn({ err: error instanceof Error ? error.message : String(error) }, "redis quit failed");
      connection.disconnect();
    });
  }
}

function specOf(definition: JobSpec<unknown>) {
  return {
    attempts: definition.attempts ?? DEFAULT_ATTEMPTS,
    backoffMs: definition.backoffMs ?? DEFAULT_BACKOFF_MS,
  };
}

/**
 * BullMQ re-emits every failed reconnection as an error; one line per message per minute is enough
 * (the connection itself logs when Redis goes away and comes back).
 */
function throttledLog(logger: Logger, msg: string): (error: Error) => void {
  const lastLogged = new Map<string, number>();
  return (error) => {
    const now = Date.now();
    if (now - (lastLogged.get(error.message) ?? 0) < 60_000) return;
    lastLogged.set(error.message, now);
    logger.error({ err: error.message }, msg);
  };
}

/**
 * BullMQ rejects custom ids containing ':' (its key separator) or looking like integers (its own
 * ids); percent-encoding the key behind a prefix avoids both, one-to-one.
 */
function dedupJobId(dedupKey: string): string {
  return `dedup_${encodeURIComponent(dedupKey)}`;
}
