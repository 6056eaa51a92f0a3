import type { Deps } from "../../deps.js";
import { runBilling } from "./run.js";

/**
 * Runs the billing run every minute in each server process (closing a period locks its subscription,
 * so processes never double up), and after every test-clock advance instead when the test clock is
 * on — before queued jobs run, so that what the run enqueues runs in the same advance.
 */

const INTERVAL_MS = 60_000;
const timers = new WeakMap<Deps, NodeJS.Timeout>();

export function startBilling(deps: Deps): void {
  if (deps.testClock) {
    deps.testClock.onAdvance("billing", (now) => runBilling(deps, now.getTime()), { first: true });
    return;
  }
  if (timers.has(deps)) return;
  let running = false;
  const timer = setInterval(() => {
    if (running || deps.draining) return;
    running = true;
    runBilling(deps)
      .catch((error: Error) => deps.logger.error({ err: error.message }, "billing run failed"))
      .finally(() => {
        running = false;
      });
  }, INTERVAL_MS);
  timer.unref();
  timers.set(deps, timer);
}

export function stopBilling(deps: Deps): void {
  clearInterval(timers.get(deps));
  timers.delete(deps);
}
