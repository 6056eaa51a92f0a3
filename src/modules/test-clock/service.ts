import { and, eq, sql } from "drizzle-orm";
import type { DatabaseHandle } from "../../db/client.js";
import { instanceSettings } from "../../db/schema.js";
import type { PubSub } from "../../infra/pubsub/types.js";
import { ManualClock } from "../../lib/clock.js";
import { AppError } from "../../lib/errors.js";
import type { Logger } from "../../lib/logger.js";

const SETTING = "test_clock_ms";
const CHANNEL = "test-clock";

export interface AdvanceResult {
  previous: Date;
  now: Date;
  /** What ran because it came due, by hook name (e.g. how many jobs ran). */
  ran: { name: string; result: unknown }[];
}

export interface TestClockService {
  clock: ManualClock;
  /** Moves every process's clock forward to `to`, then runs everything that came due. */
  advance(to: Date): Promise<AdvanceResult>;
  /** Registers work to run after each advance (renewals, invoices, dunning, retention, jobs). */
  onAdvance(name: string, run: (now: Date) => Promise<unknown>, options?: { first?: boolean }): void;
  close(): Promise<void>;
}

/** A typo (year 9999) would strand the clock for good: it never moves back. */
const MAX_JUMP_MS = 100 * 365.25 * 86_400_000;

/** How often every process re-reads the stored time, in case it missed a broadcast. */
const RESYNC_MS = 1000;

/**
 * The test clock (TOLLGATE_TEST_CLOCK=1): a frozen "now" kept in the database so that every process
 * sharing it agrees, and broadcast on pub/sub so they all move together. It starts at the real time of
 * the first boot and only ever moves forward.
 */
export async function createTestClock(options: {
  database: DatabaseHandle;
  pubsub: PubSub;
  logger: Logger;
}): Promise<TestClockService> {
  const { database, pubsub, logger } = options;
  const start = String(Math.floor(Date.now() / 1000) * 1000);
  await database.db.insert(instanceSettings).values({ key: SETTING, value: start }).onConflictDoNothing();
  const clock = new ManualClock(await readStored(database));
  // Broadcasts move every process at once; pub/sub is at most once, so each process also re-reads
  // the stored time every second and never stays behind for long.
  const unsubscribe = await pubsub.subscribe(CHANNEL, (message) => {
    const ms = Number(message);
    if (Number.isFinite(ms)) clock.moveTo(ms);
  });
  const resync = setInterval(() => {
    readStored(database).then(
      (ms) => clock.moveTo(ms),
      (error: Error) => logger.debug({ err: error.message }, "test clock resync failed"),
    );
  }, RESYNC_MS);
  resync.unref();
  const hooks: { name: string; run: (now: Date) => Promise<unknown> }[] = [];
  logger.warn(
    { now: clock.now().toISOString() },
    "test clock enabled: time moves only through /v1/test-clock/advance",
  );

  return {
    clock,
    onAdvance: (name, run, options = {}) => {
      if (options.first) hooks.unshift({ name, run });
      else hooks.push({ name, run });
    },
    close: async () => {
      clearInterval(resync);
      await unsubscribe();
    },
    advance: async (to) => {
      const previous = clock.now();
      const target = to.getTime();
      if (target > previous.getTime() + MAX_JUMP_MS) {
        throw new AppError("validation_failed", "The test clock moves at most 100 years at a time.", {
          errors: [
            {
              field: "to",
              message: "must be within 100 years of the current test time",
              code: "too_big",
              location: "body",
            },
          ],
        });
      }
      if (target <= previous.getTime()) {
        throw new AppError(
          "validation_failed",
          `The test clock is at ${previous.toISOString()}; it only moves forward.`,
          {
            errors: [
              {
                field: "to",
                message: "must be later than the current test time",
                code: "too_small",
                location: "body",
              },
            ],
          },
        );
      }
      // Conditional update: a concurrent advance to a later time from another process wins.
      await database.db
        .update(instanceSettings)
        .set({ value: String(target), updatedAt: new Date() })
        .where(and(eq(instanceSettings.key, SETTING), sql`${instanceSettings.value}::bigint < ${target}`));
      clock.moveTo(await readStored(database));
      await pubsub
        .publish(CHANNEL, String(clock.nowMs()))
        .catch((error: Error) =>
          logger.warn(
            { err: error.message },
            "test clock broadcast failed; other processes resync within a second",
          ),
        );
      const ran: AdvanceResult["ran"] = [];
      for (const hook of hooks) ran.push({ name: hook.name, result: await hook.run(clock.now()) });
      return { previous, now: clock.now(), ran };
    },
  };
}

async function readStored(database: DatabaseHandle): Promise<number> {
  const [row] = await database.db.select().from(instanceSettings).where(eq(instanceSettings.key, SETTING));
  if (!row) throw new Error("test clock state missing");
  return Number(row.value);
}
