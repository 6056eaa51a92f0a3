import type { z } from "zod";
import type { Database } from "../../db/client.js";
import type { Logger } from "../../lib/logger.js";

/**
 * Typed background jobs. A definition names the job, validates its payload with zod at enqueue time
 * and again before it runs, and says how often to retry. Handlers must be idempotent: delivery is at
 * least once in both twins.
 */
export interface JobSpec<P = unknown> {
  name: string;
  schema: z.ZodType<P>;
  /** Total attempts before the job is dead-lettered (default 5). */
  attempts?: number;
  /** First retry delay; doubles each attempt (default 1000 ms). */
  backoffMs?: number;
}

/** A job spec with the code that runs it: what a worker is started with. */
export interface JobDefinition<P = unknown> extends JobSpec<P> {
  handler: (payload: P, context: JobContext) => Promise<void>;
}

// biome-ignore lint/suspicious/noExplicitAny: one registry holds definitions of every payload type; each validates its own.
export type AnyDefinition = JobDefinition<any>;

export interface JobContext {
  jobId: string;
  attempt: number;
  logger: Logger;
}

export interface EnqueueOptions {
  delayMs?: number;
  /** At most one queued-or-finished job per key: a second enqueue with the same key is a no-op. */
  dedupKey?: string;
}

export interface DeadJob {
  id: string;
  name: string;
  payload: unknown;
  attempts: number;
  error: string | null;
  failedAt: Date | null;
}

export interface JobQueue {
  readonly kind: "database" | "redis";
  /** Enqueues a job; returns its id (the existing job's id when `dedupKey` matched). */
  enqueue<P>(definition: JobSpec<P>, payload: P, options?: EnqueueOptions): Promise<string>;
  /**
   * Enqueues as part of the caller's transaction `tx`: the job exists if and only if `tx` commits, and
   * runs only after it has (the transactional outbox). A dedup key that already exists is a no-op.
   */
  enqueueInTx<P>(tx: Database, definition: JobSpec<P>, payload: P, options?: EnqueueOptions): Promise<void>;
  /** Starts processing these definitions in this process. */
  start(definitions: AnyDefinition[], options?: { concurrency?: number }): Promise<void>;
  /** Jobs that failed every attempt, newest first. */
  deadJobs(limit?: number): Promise<DeadJob[]>;
  /** Puts a dead job back in the queue for a fresh set of attempts; false if no such dead job. */
  retryDead(id: string): Promise<boolean>;
  /** Stops taking new jobs, waits for running ones, releases connections. */
  close(): Promise<void>;
}
