import type { Deps } from "../../deps.js";
import type { JobContext, JobSpec } from "../../infra/jobs/types.js";

/**
 * A background job of Tollgate's: a name, a zod payload schema, retry settings and the code that runs
 * it with the deps. Enqueue with `deps.jobs.enqueue(job, payload)`, or — when a change causes it —
 * `deps.jobs.enqueueInTx(tx, job, payload)`, so the job exists only if the change commits. Every job
 * must be idempotent: delivery is at least once.
 */
export interface Job<P> extends JobSpec<P> {
  run(deps: Deps, payload: P, context: JobContext): Promise<void>;
}

export const defineJob = <P>(job: Job<P>): Job<P> => job;

/** A job run on a timer by whichever process gets it first (see runtime.ts). */
export interface Schedule {
  job: Job<Record<string, never>>;
  everyMs: number;
}
