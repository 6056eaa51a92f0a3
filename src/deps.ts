import type { Redis } from "ioredis";
import { type DatabaseHandle, openDatabase } from "./db/client.js";
import { runMigrations } from "./db/migrate.js";
import { createMemoryCounterStore } from "./infra/counters/memory.js";
import { createRedisCounterStore } from "./infra/counters/redis.js";
import type { CounterStore } from "./infra/counters/types.js";
import { createBullmqJobQueue } from "./infra/jobs/bullmq.js";
import { createDatabaseJobQueue } from "./infra/jobs/database.js";
import type { JobQueue } from "./infra/jobs/types.js";
import { createMailer, defaultSender, type Mailer } from "./infra/mailer/mailer.js";
import { createMemoryPubSub } from "./infra/pubsub/memory.js";
import { createRedisPubSub } from "./infra/pubsub/redis.js";
import type { PubSub } from "./infra/pubsub/types.js";
import { createRedis, waitForRedis } from "./infra/redis.js";
import { type Clock, systemClock } from "./lib/clock.js";
import type { Env } from "./lib/env.js";
import type { Logger } from "./lib/logger.js";
import { createMetrics, type Metrics } from "./lib/metrics.js";
import { closeApiKeys } from "./modules/api-keys/verify.js";
import type { Caller } from "./modules/auth/caller.js";
import type { Catalog } from "./modules/catalog/schema.js";
import { DEFAULT_CATALOG_PATH, loadCatalog } from "./modules/catalog/validate.js";
import { emailDeliverJob } from "./modules/jobs/email-job.js";
import { stopBackground } from "./modules/jobs/runtime.js";
import { closeMetering } from "./modules/metering/check.js";
import { type InstanceSecrets, loadInstanceSecrets } from "./modules/operator/secrets.js";
import type { OrgAccess } from "./modules/orgs/access.js";
import { closeSubscriptionCache } from "./modules/plans/subscriptions.js";
import { backfillSubscriptions, type PlanRegistry, syncPlanVersions } from "./modules/plans/versions.js";
import { createTestClock, type TestClockService } from "./modules/test-clock/service.js";

/**
 * Everything a request or job needs, built once at boot and passed as one typed object (no DI
 * container). Each infrastructure piece has an embedded twin and a production twin, chosen here by
 * configuration alone.
 */
export interface Deps {
  env: Env;
  logger: Logger;
  metrics: Metrics;
  clock: Clock;
  database: DatabaseHandle;
  redis: Redis | undefined;
  counters: CounterStore;
  pubsub: PubSub;
  jobs: JobQueue;
  /** Outgoing mail: kept in the outbox without SMTP_URL, sent over SMTP with it. */
  mailer: Mailer;
  secrets: InstanceSecrets;
  /** The price list in force, validated at boot; a bad catalog stops the server. */
  catalog: Catalog;
  catalogPath: string;
  /** Every version of every plan; subscribers keep theirs (grandfathering). */
  plans: PlanRegistry;
  testClock: TestClockService | undefined;
  /** True once shutdown has begun: readiness goes red so load balancers stop sending traffic. */
  draining: boolean;
}

/** Hono's context typing for every router: the deps bag and the request id. */
export type AppEnv = {
  Variables: {
    deps: Deps;
    requestId: string;
    /** This request's logger, bound to its id; get it with `requestLogger(c)` (lib/http.ts). */
    logger?: Logger;
    unmatched?: boolean;
    /** Who is calling, resolved on first use by requireCaller (modules/auth/caller.ts). */
    caller?: Caller;
    /** Set by the orgAccess route middleware (modules/orgs/access.ts). */
    orgAccess?: OrgAccess;
  };
};

export interface BuildDepsOptions {
  logger: Logger;
  /** An already-open database (tests); otherwise opened from the env. */
  database?: DatabaseHandle;
  /** Key prefix for Redis keys and channels (tests isolate themselves with it). */
  redisPrefix?: string;
  /** Process-level metrics (GC, memory) are off in tests that build many apps. */
  processMetrics?: boolean;
}

/** Opens storage, applies migrations and wires every twin. Call {@link closeDeps} to release it all. */
export async function buildDeps(env: Env, options: BuildDepsOptions): Promise<Deps> {
  const { logger } = options;
  // The catalog first: a bad price list should stop the server before anything is opened.
  const catalogPath = env.catalogPath ?? DEFAULT_CATALOG_PATH;
  const catalog = loadCatalog(catalogPath);
  const prefix = options.redisPrefix ?? "tg:";
  const metrics = createMetrics({ processMetrics: options.processMetrics });
  const database =
    options.database ?? (await openDatabase({ url: env.databaseUrl, dataDir: env.dataDir, logger }));
  const opened: Array<() => Promise<unknown>> = options.database ? [] : [() => database.close()];
  try {
    await runMigrations(database);
    const plans = await syncPlanVersions(database, catalog, logger);
    await backfillSubscriptions(database, plans, catalog);

    // Commands in flight when the connection drops are not resent on reconnect: Redis may have run
    // them already (the answer was lost), and a counter script run twice counts twice. Commands issued
    // in the same tick go out in one write (auto-pipelining): one syscall for many concurrent checks.
    const redis = env.redisUrl
      ? createRedis(env.redisUrl, {
          logger,
          name: "tollgate-hot-path",
          autoResendUnfulfilledCommands: false,
          enableAutoPipelining: true,
        })
      : undefined;
    if (redis) {
      opened.push(() => redis.quit().catch(() => redis.disconnect()));
      // Serve only once Redis answers, unless it is down: then start anyway (readiness stays red)
      // and let the client reconnect in the background.
      await waitForRedis(redis, 5000).catch((error: Error) =>
        logger.warn(
          { err: error.message },
          "starting without Redis; the hot path follows each feature's policy",
        ),
      );
    }
    if (env.databaseUrl && !redis) {
      logger.warn(
        "DATABASE_URL is set without REDIS_URL: counters, rate limits and pub/sub are per process; run one process, or set REDIS_URL",
      );
    }
    const counters = redis ? createRedisCounterStore(redis, { prefix }) : createMemoryCounterStore();
    if (redis?.status === "ready") {
      // A process killed between committing usage and adding it to a counter leaves that counter behind
      // Postgres; every start drops the counters so they are rebuilt from Postgres, the source of truth.
      const dropped = await counters.clearCounters().catch((error: Error) => {
        logger.warn({ err: error.message }, "could not drop counters at start; they stay as they are");
        return 0;
      });
      if (dropped > 0)
        logger.info({ counters: dropped }, "counters dropped: rebuilt from Postgres on next use");
    }
    const pubsub = env.redisUrl ? createRedisPubSub(env.redisUrl, { prefix, logger }) : createMemoryPubSub();
    opened.push(() => pubsub.close());

    const testClock = env.testClock ? await createTestClock({ database, pubsub, logger }) : undefined;
    if (testClock) opened.push(() => testClock.close());
    const clock = testClock?.clock ?? systemClock;

    // With the test clock, jobs run on the database queue, whose delays and retries follow the test
    // clock; BullMQ's follow Redis's real time and could not be advanced.
    let jobs: JobQueue;
    if (env.redisUrl && !testClock) {
      jobs = createBullmqJobQueue({
        redisUrl: env.redisUrl,
        database,
        prefix: prefix.replace(/:$/, ""),
        logger,
        metrics,
      });
    } else {
      const databaseJobs = createDatabaseJobQueue({ db: database, clock, logger, metrics });
      testClock?.onAdvance("jobs", () => databaseJobs.drain());
      jobs = databaseJobs;
    }
    opened.push(() => jobs.close());

    const mailer = createMailer({
      database,
      smtpUrl: env.smtpUrl,
      logger,
      from: defaultSender(env.publicUrl),
      clock,
      // Delivered by the email.deliver job, with retries; a message whose job could not be queued
      // (Redis down) stays in the outbox and the email.sweep job queues it again.
      queueDelivery: (id) =>
        jobs
          .enqueue(emailDeliverJob, { email_id: id }, { dedupKey: `email:${id}` })
          .catch((error: Error) =>
            logger.warn(
              { email_id: id, err: error.message },
              "e-mail delivery not queued yet; the sweep will",
            ),
          ),
    });
    opened.push(() => mailer.close());

    const secrets = await loadInstanceSecrets({ database, env, logger });
    return {
      env,
      logger,
      metrics,
      clock,
      database,
      redis,
      counters,
      pubsub,
      jobs,
      mailer,
      secrets,
      catalog,
      catalogPath,
      plans,
      testClock,
      draining: false,
    };
  } catch (error) {
    for (const close of opened.reverse()) await close().catch(() => {});
    throw error;
  }
}

/** Releases every connection, newest first. Safe to call once per built deps. */
export async function closeDeps(deps: Deps, options: { keepDatabase?: boolean } = {}): Promise<void> {
  const steps: Array<[string, () => Promise<unknown>]> = [
    // First: flushes API keys' last-used times while the database is still open.
    ["api keys", () => closeApiKeys(deps)],
    ["subscription cache", () => closeSubscriptionCache(deps)],
    ["background", async () => stopBackground(deps)],
    // Commits consumed usage still queued, while the database is open.
    ["metering", () => closeMetering(deps)],
    ["jobs", () => deps.jobs.close()],
    ["mailer", () => deps.mailer.close()],
    ["test clock", async () => deps.testClock?.close()],
    ["pubsub", () => deps.pubsub.close()],
    ["redis", async () => deps.redis && (await deps.redis.quit().catch(() => deps.redis?.disconnect()))],
    ["database", async () => !options.keepDatabase && (await deps.database.close())],
  ];
  for (const [name, step] of steps) {
    await step().catch((error: Error) =>
      deps.logger.warn({ err: error.message, component: name }, "close failed"),
    );
  }
}
