import type { Deps } from "../../deps.js";
import { errorMessage } from "../../infra/jobs/definition.js";
import type { AnyDefinition } from "../../infra/jobs/types.js";
import { runBilling } from "../billing/run.js";
import { billingRunJob } from "../billing/scheduler.js";
import { JOBS, SCHEDULES } from "./registry.js";

/**
 * Background work in a process: the job handlers and the schedules. `tollgate start` runs it next to
 * the HTTP server unless TOLLGATE_RUN_JOBS=0; `tollgate worker` runs only this.
 *
 * Schedules: every second each process looks at each schedule's current slot (now ÷ interval) and
 * enqueues its job with the dedup key `schedule:<name>:<slot>`, so across any number of processes a
 * slot runs once. With the test clock there are no timers: each advance enqueues every schedule once
 * (keyed by the new time), runs the billing run first, then drains the queue — so what came due runs
 * in the advance, as with Stripe's test clocks.
 */

const TICK_MS = 1000;
const timers = new WeakMap<Deps, NodeJS.Timeout>();

export function jobDefinitions(deps: Deps): AnyDefinition[] {
  return JOBS.map((job) => ({
    name: job.name,
    schema: job.schema,
    attempts: job.attempts,
    backoffMs: job.backoffMs,
    handler: (payload: unknown, context) => job.run(deps, payload as never, context),
  }));
}

/** Test clock: every schedule once per advance (the billing run has its own hook, which runs first). */
async function enqueueAfterAdvance(deps: Deps, nowMs: number) {
  for (const { job } of SCHEDULES) {
    if (job === billingRunJob) continue;
    await deps.jobs.enqueue(job, {}, { dedupKey: `schedule:${job.name}:t${nowMs}` });
  }
}

export async function startBackground(deps: Deps): Promise<void> {
  if (deps.testClock) {
    // Billing first, so that what the run enqueues (e-mails, webhooks) runs in the same advance; the
    // queue's drain was registered when the deps were built and runs after these.
    deps.testClock.onAdvance("scheduled jobs", (now) => enqueueAfterAdvance(deps, now.getTime()), {
      first: true,
    });
    deps.testClock.onAdvance("billing", (now) => runBilling(deps, now.getTime()), { first: true });
  }
  if (!deps.env.runJobs) return;
  await deps.jobs.start(jobDefinitions(deps), { concurrency: 4 });
  if (deps.testClock || timers.has(deps)) return;
  const last = new Map<string, number>();
  let ticking = false;
  const timer = setInterval(() => {
    if (ticking || deps.draining) return;
    ticking = true;
    tickSchedules(deps, last)
      .catch((error: unknown) =>
        deps.logger.warn({ err: errorMessage(error) }, "could not enqueue scheduled jobs; next second"),
      )
      .finally(() => {
        ticking = false;
      });
  }, TICK_MS);
  timer.unref();
  timers.set(deps, timer);
}

async function tickSchedules(deps: Deps, last: Map<string, number>): Promise<void> {
  const now = deps.clock.nowMs();
  for (const { job, everyMs } of SCHEDULES) {
    const slot = Math.floor(now / everyMs);
    if (last.get(job.name) === slot) continue;
    await deps.jobs.enqueue(job, {}, { dedupKey: `schedule:${job.name}:${slot}` });
    last.set(job.name, slot);
  }
}

export function stopBackground(deps: Deps): void {
  clearInterval(timers.get(deps));
  timers.delete(deps);
}
