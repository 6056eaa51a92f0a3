import { createServer, type Server } from "node:http";
import path from "node:path";
import { createApp } from "./app.js";
import { buildDeps, closeDeps, type Deps } from "./deps.js";
import type { Env } from "./lib/env.js";
import type { Logger } from "./lib/logger.js";
import { createRequestListener } from "./listener.js";
import { startBackground } from "./modules/jobs/runtime.js";

export interface RunningServer {
  deps: Deps;
  server: Server;
  url: string;
  /** Stops taking connections, lets in-flight requests finish (up to `graceMs`), releases everything. */
  stop(graceMs?: number): Promise<void>;
}

/** The composition root: parsed env → deps → app → listening server. */
export async function startServer(env: Env, logger: Logger): Promise<RunningServer> {
  const deps = await buildDeps(env, { logger });
  const app = createApp(deps);
  await startBackground(deps);
  const server = createServer(createRequestListener(deps, app));
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(env.port, env.host, () => {
        server.off("error", reject);
        resolve();
      });
    });
  } catch (error) {
    await closeDeps(deps);
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "EADDRINUSE")
      throw new Error(`Port ${env.port} on ${env.host} is already in use; set PORT to another.`);
    throw error;
  }
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : env.port;
  const url = `http://${env.host.includes(":") ? `[${env.host}]` : env.host}:${port}`;

  let stopping: Promise<void> | undefined;
  const stop = (graceMs = 10_000) => {
    stopping ??= (async () => {
      deps.draining = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // A keep-alive connection becomes idle once its in-flight response is sent: close it then,
      // rather than waiting out the keep-alive timeout.
      server.closeIdleConnections();
      const sweep = setInterval(() => server.closeIdleConnections(), 100);
      const timer = setTimeout(() => {
        logger.warn("grace period over: closing remaining connections");
        server.closeAllConnections();
      }, graceMs);
      await closed;
      clearTimeout(timer);
      clearInterval(sweep);
      await closeDeps(deps);
    })();
    return stopping;
  };
  return { deps, server, url, stop };
}

export interface RunningWorker {
  deps: Deps;
  stop(): Promise<void>;
}

/**
 * `tollgate worker`: background jobs and their schedules, without HTTP. Run as many as the queue
 * needs next to API processes started with TOLLGATE_RUN_JOBS=0; every job is idempotent and each
 * schedule's slot runs once whichever worker takes it.
 */
export async function startWorker(env: Env, logger: Logger): Promise<RunningWorker> {
  const deps = await buildDeps({ ...env, runJobs: true }, { logger });
  try {
    await startBackground(deps);
  } catch (error) {
    await closeDeps(deps);
    throw error;
  }
  let stopping: Promise<void> | undefined;
  return {
    deps,
    // Running jobs finish first (the queue's close waits for them), then connections are released.
    stop: () => {
      stopping ??= (async () => {
        deps.draining = true;
        await closeDeps(deps);
      })();
      return stopping;
    },
  };
}

/** What a newcomer sees on start: where Tollgate is, how it is stored, and the operator key. */
export function banner(running: RunningServer): string {
  const { deps, url } = running;
  const { env, secrets } = deps;
  const lines = [
    "",
    `  Tollgate is running at ${url}`,
    `  Dashboard         ${url}/dashboard  (sign up at ${url}/signup)`,
    `  API explorer      ${url}/docs`,
    `  Health            ${url}/healthz  ·  ${url}/readyz  ·  ${url}/metrics`,
    `  Database          ${deps.database.kind === "pglite" ? `embedded PGlite in ${env.dataDir}` : "Postgres (DATABASE_URL)"}`,
    `  Counters & jobs   ${deps.redis ? "Redis (REDIS_URL)" : "in-process (set REDIS_URL for Redis)"}`,
    `  Catalog           ${path.relative(process.cwd(), deps.catalogPath) || deps.catalogPath} (${deps.catalog.plans.length} plans)`,
  ];
  if (env.workers > 1) lines.push(`  Workers           ${env.workers} processes (TOLLGATE_WORKERS)`);
  if (env.testClock) lines.push(`  Test clock        ON — now is ${deps.clock.now().toISOString()}`);
  if (secrets.generatedAdminKey) {
    lines.push(
      "",
      "  Operator key (shown once; set TOLLGATE_ADMIN_KEY to choose your own):",
      `    ${secrets.generatedAdminKey}`,
    );
    if (secrets.adminKeyFile) lines.push(`  (also saved to ${secrets.adminKeyFile}, readable only by you)`);
  } else if (!env.adminKey) {
    lines.push(
      "",
      deps.database.kind === "pglite"
        ? `  Operator key: in ${env.dataDir}/admin-key (generated on first start)`
        : "  Operator key: the one printed on first start; `tollgate admin-key rotate` makes a new one",
    );
  }
  lines.push("");
  return lines.join("\n");
}
