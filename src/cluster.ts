import cluster, { type Worker } from "node:cluster";
import { AggregatorRegistry } from "prom-client";
import { AppError } from "./lib/errors.js";
import type { Logger } from "./lib/logger.js";
import type { Metrics } from "./lib/metrics.js";

/**
 * `TOLLGATE_WORKERS=N`: `tollgate start` as a node:cluster primary and N worker processes sharing the
 * port. A Node process runs JavaScript on one core; the hot path (`POST /v1/check`) is CPU-bound, so
 * a machine's other cores serve nothing without this (docs/benchmarks.md). Each worker is a whole
 * Tollgate — as several servers behind a load balancer are — so everything that must be shared
 * already is: Postgres and Redis (env.ts requires both), the usage journal per process, migrations
 * and plan sync under advisory locks.
 *
 * The primary runs no Tollgate code: it forks the workers, prints one banner once all listen,
 * replaces a worker that dies, forwards SIGTERM/SIGINT so each drains, and answers the workers'
 * `/metrics` with every worker's metrics summed (prom-client's AggregatorRegistry).
 */

const READY = "tollgate:ready";
const METRICS_REQUEST = "tollgate:metrics-request";
const METRICS_REPLY = "tollgate:metrics-reply";

/** A worker that dies this many times within RESTART_WINDOW_MS means a crash loop: the primary stops. */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;
const RESTART_DELAY_MS = 1000;
/** After SIGTERM, workers still running after this long are killed. */
const STOP_GRACE_MS = 30_000;

interface ReadyMessage {
  type: typeof READY;
  banner: string;
  generatedKey: boolean;
}

export function isClusterWorker(): boolean {
  return cluster.isWorker;
}

/** Runs the primary until its workers have stopped; resolves to the exit code. */
export function runPrimary(workers: number, logger: Logger, print: (text: string) => void): Promise<number> {
  const aggregator = new AggregatorRegistry();
  const ready = new Map<number, ReadyMessage>();
  const restarts: number[] = [];
  let bannerShown = false;
  let stopping = false;
  let exitCode = 0;

  return new Promise<number>((resolve) => {
    const live = () => Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined);
    const stop = (signal: NodeJS.Signals, code: number) => {
      if (stopping) return;
      stopping = true;
      exitCode = code;
      logger.info({ signal, workers: live().length }, "stopping the workers");
      for (const worker of live()) worker.process.kill(signal);
      setTimeout(() => {
        for (const worker of live()) worker.process.kill("SIGKILL");
      }, STOP_GRACE_MS).unref();
    };

    cluster.on("message", (worker, message: { type?: string; id?: number } & Partial<ReadyMessage>) => {
      if (message?.type === READY) {
        ready.set(worker.id, message as ReadyMessage);
        if (!bannerShown && ready.size >= workers) {
          bannerShown = true;
          const all = [...ready.values()];
          // The worker that generated the operator key (first start) shows it; it is shown only once.
          const shown = all.find((r) => r.generatedKey) ?? all[0];
          if (shown) print(shown.banner);
          logger.info({ workers }, "listening");
        }
      } else if (message?.type === METRICS_REQUEST) {
        aggregator.clusterMetrics().then(
          (body) => worker.isConnected() && worker.send({ type: METRICS_REPLY, id: message.id, body }),
          (error: Error) =>
            worker.isConnected() &&
            worker.send({ type: METRICS_REPLY, id: message.id, error: error.message }),
        );
      }
    });

    cluster.on("exit", (worker, code, signal) => {
      const wasReady = ready.delete(worker.id);
      if (stopping) {
        if (live().length === 0) resolve(exitCode);
        return;
      }
      logger.error({ worker: worker.process.pid, code, signal }, "a worker stopped unexpectedly");
      if (!wasReady && !bannerShown) {
        // It never started (the port is taken, the catalog is invalid...): every worker would fail alike.
        stop("SIGTERM", 1);
        if (live().length === 0) resolve(1);
        return;
      }
      const now = Date.now();
      restarts.push(now);
      while (restarts.length > 0 && (restarts[0] as number) < now - RESTART_WINDOW_MS) restarts.shift();
      if (restarts.length > MAX_RESTARTS) {
        logger.error({ restarts: restarts.length }, "workers keep stopping: giving up");
        stop("SIGTERM", 1);
        if (live().length === 0) resolve(1);
        return;
      }
      setTimeout(() => {
        if (!stopping) cluster.fork();
      }, RESTART_DELAY_MS);
    });

    process.once("SIGTERM", () => stop("SIGTERM", 0));
    process.once("SIGINT", () => stop("SIGINT", 0));
    for (let i = 0; i < workers; i++) cluster.fork();
  });
}

/**
 * In a worker: tells the primary it listens (with the banner it would print), and serves `/metrics`
 * as every worker's metrics summed, asked of the primary.
 */
export function joinCluster(metrics: Metrics, banner: string, generatedKey: boolean): void {
  AggregatorRegistry.setRegistries([metrics.registry]);
  // Constructing one installs the listener that answers the primary's requests for this worker's metrics.
  new AggregatorRegistry();
  let nextId = 0;
  const waiting = new Map<number, { resolve: (body: string) => void; reject: (error: Error) => void }>();
  process.on("message", (message: { type?: string; id?: number; body?: string; error?: string }) => {
    if (message?.type !== METRICS_REPLY || message.id === undefined) return;
    const waiter = waiting.get(message.id);
    waiting.delete(message.id);
    if (message.error !== undefined) waiter?.reject(new Error(message.error));
    else waiter?.resolve(message.body ?? "");
  });
  metrics.scrape = () => {
    const id = nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        waiting.delete(id);
        reject(new AppError("unavailable", "The workers' metrics did not arrive in time; try again."));
      }, 10_000);
      waiting.set(id, {
        resolve: (body) => {
          clearTimeout(timer);
          resolve({ body, contentType: metrics.registry.contentType });
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(new AppError("unavailable", `The workers' metrics could not be gathered: ${error.message}`));
        },
      });
      process.send?.({ type: METRICS_REQUEST, id });
    });
  };
  process.send?.({ type: READY, banner, generatedKey } satisfies ReadyMessage);
}
