import fs from "node:fs";
import path from "node:path";
import { Command } from "commander";
import { VERSION } from "./app.js";
import { joinCluster, runPrimary } from "./cluster.js";
import { openDatabase } from "./db/client.js";
import { runMigrations } from "./db/migrate.js";
import { type Env, EnvError, parseEnv } from "./lib/env.js";
import { createLogger } from "./lib/logger.js";
import { banner, startServer, startWorker } from "./main.js";
import { validateCatalogFile } from "./modules/catalog/validate.js";
import { rotateStoredAdminKey } from "./modules/operator/secrets.js";

/** `tollgate <command>`: the one entry point for operators. */
const program = new Command()
  .name("tollgate")
  .description("The open-source control plane for SaaS products.")
  .version(VERSION);

function loadEnv(): Env {
  try {
    return parseEnv();
  } catch (error) {
    if (error instanceof EnvError) {
      process.stderr.write(`${error.message}\n`);
      process.exit(1);
    }
    throw error;
  }
}

function fail(error: unknown): never {
  process.stderr.write(`tollgate: ${(error as Error).message ?? String(error)}\n`);
  process.exit(1);
}

/**
 * Starts something stoppable and stops it on SIGTERM or SIGINT, then exits (0, or 1 if stopping
 * failed). The handlers are installed before starting and act once: a signal during boot stops it as
 * soon as it is up (and this resolves undefined), and a cluster worker that gets a terminal's Ctrl-C
 * and then the primary's forwarded signal drains once.
 */
async function runUntilSignal<T extends { stop(): Promise<void> }>(
  start: () => Promise<T>,
  logger: ReturnType<typeof createLogger>,
  what: string,
): Promise<T | undefined> {
  let running: T | undefined;
  let stopSignal: string | undefined;
  const stop = (target: T, signal: string) => {
    logger.info({ signal }, `shutting down: ${what}`);
    target.stop().then(
      () => process.exit(0),
      (error) => {
        logger.error({ err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  const shutdown = (signal: string) => {
    if (stopSignal) return;
    stopSignal = signal;
    if (running) stop(running, signal);
  };
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));
  running = await start().catch(fail);
  if (stopSignal) {
    stop(running, stopSignal);
    return undefined;
  }
  return running;
}

program
  .command("start")
  .description("Start the HTTP server (migrations are applied first).")
  .action(async () => {
    const env = loadEnv();
    const logger = createLogger(env.logLevel);
    if (env.workers > 1 && !env.clusterWorker) {
      // The primary: forks the workers, which run this same command (cluster.ts).
      process.exit(await runPrimary(env.workers, logger, (text) => process.stdout.write(`${text}\n`)));
    }
    const running = await runUntilSignal(
      () => startServer(env, logger),
      logger,
      "finishing in-flight requests",
    );
    if (!running) return;
    if (env.clusterWorker) {
      joinCluster(running.deps.metrics, banner(running), Boolean(running.deps.secrets.generatedAdminKey));
    } else {
      process.stdout.write(`${banner(running)}\n`);
      logger.info({ url: running.url }, "listening");
    }
  });

program
  .command("worker")
  .description(
    "Run background jobs (e-mail, webhooks, billing run, notifications, retention) without serving HTTP.",
  )
  .action(async () => {
    const env = loadEnv();
    if (!env.databaseUrl) {
      fail(
        "the worker needs DATABASE_URL: embedded PGlite belongs to one process, where `tollgate start` runs the jobs itself",
      );
    }
    const logger = createLogger(env.logLevel);
    const worker = await runUntilSignal(() => startWorker(env, logger), logger, "finishing running jobs");
    if (!worker) return;
    logger.info(
      { queue: worker.deps.jobs.kind === "redis" ? "BullMQ (REDIS_URL)" : "Postgres (jobs table)" },
      "worker running",
    );
  });

program
  .command("migrate")
  .description("Apply pending database migrations and exit (running it twice is harmless).")
  .action(async () => {
    const env = loadEnv();
    const logger = createLogger(env.logLevel);
    try {
      const database = await openDatabase({ url: env.databaseUrl, dataDir: env.dataDir, logger });
      try {
        await runMigrations(database);
      } finally {
        await database.close();
      }
      process.stdout.write(
        `migrations applied (${env.databaseUrl ? "Postgres" : `embedded, ${env.dataDir}`})\n`,
      );
    } catch (error) {
      fail(error);
    }
  });

const catalog = program.command("catalog").description("Work with catalog files.");
catalog
  .command("validate")
  .argument("<file>", "catalog file (YAML or JSON)")
  .description("Check a catalog file and list every problem with its path.")
  .action((file: string) => {
    const result = validateCatalogFile(file);
    if (result.ok) {
      process.stdout.write(`${file}: valid (${result.summary})\n`);
      return;
    }
    process.stderr.write(`${file}: ${result.errors.length} problem(s)\n`);
    for (const error of result.errors) process.stderr.write(`  ${error.path}: ${error.message}\n`);
    process.exit(1);
  });

program
  .command("admin-key")
  .argument("<action>", "rotate")
  .description(
    "Replace the generated operator key and print the new one (when TOLLGATE_ADMIN_KEY is not set).",
  )
  .action(async (action: string) => {
    if (action !== "rotate") fail(`unknown action "${action}"; try: tollgate admin-key rotate`);
    const env = loadEnv();
    if (env.adminKey) fail("TOLLGATE_ADMIN_KEY is set: change that variable instead.");
    try {
      const database = await openDatabase({ url: env.databaseUrl, dataDir: env.dataDir });
      try {
        await runMigrations(database);
        const key = await rotateStoredAdminKey(database);
        if (database.kind === "pglite") {
          fs.writeFileSync(path.join(env.dataDir, "admin-key"), `${key}\n`, { mode: 0o600 });
        }
        process.stdout.write(`New operator key (restart running servers to use it):\n  ${key}\n`);
      } finally {
        await database.close();
      }
    } catch (error) {
      fail(error);
    }
  });

program.parseAsync().catch(fail);
