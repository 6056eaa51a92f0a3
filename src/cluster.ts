import cluster, { type Worker } from "node:cluster";
import { AggregatorRegistry, type MetricObjectWithValues, type MetricValue } from "prom-client";
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
 * The primary runs no Tollgate code: it forks the workers (marked with TOLLGATE_CLUSTER_WORKER, so a
 * process manager's own cluster is not mistaken for ours), prints one banner once all listen,
 * replaces a worker that dies, forwards SIGTERM/SIGINT so each drains, and answers the workers'
 * `/metrics` with every ready worker's metrics summed.
 */

const READY = "tollgate:ready";
/** Worker → primary: metrics for a scrape, please. Primary → worker: the summed text. */
const SCRAPE = "tollgate:scrape";
const SCRAPED = "tollgate:scraped";
/** Primary → worker: your registry's metrics. Worker → primary: here they are. */
const COLLECT = "tollgate:collect";
const COLLECTED = "tollgate:collected";

/** A worker that dies this many times within RESTART_WINDOW_MS means a crash loop: the primary stops. */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;
const RESTART_DELAY_MS = 1000;
/** After SIGTERM, workers still running after this long are killed. */
const STOP_GRACE_MS = 30_000;
/** How long the primary waits for the workers' metrics. */
const COLLECT_TIMEOUT_MS = 5000;

type Message =
  | { type: typeof READY; banner: string; generatedKey: boolean }
  | { type: typeof SCRAPE; id: number }
  | { type: typeof SCRAPED; id: number; body?: string; error?: string }
  | { type: typeof COLLECT; id: number }
  | { type: typeof COLLECTED; id: number; metrics?: MetricObjectWithValues<MetricValue<string>>[] };

/** Runs the primary until its workers have stopped; resolves to the exit code. */
export function runPrimary(workers: number, logger: Logger, print: (text: string) => void): Promise<number> {
  const ready = new Map<number, Worker>();
  const readyBanners: string[] = [];
  /** The banner of the worker that generated the operator key: it is shown only once, so kept apart. */
  let keyBanner: string | undefined;
  const restarts: number[] = [];
  let bannerShown = false;
  let stopping = false;
  let exitCode = 0;
  let nextCollect = 0;
  const collecting = new Map<
    number,
    { pending: Set<number>; metrics: MetricObjectWithValues<MetricValue<string>>[][]; done: () => void }
  >();

  const fork = () => cluster.fork({ TOLLGATE_CLUSTER_WORKER: "1" });

  /** Every ready worker's metrics, summed (workers still starting have nothing to count yet). */
  const collect = (): Promise<string> =>
    new Promise((resolve, reject) => {
      const id = nextCollect++;
      const targets = [...ready.values()].filter((w) => w.isConnected());
      const request = {
        pending: new Set(targets.map((w) => w.id)),
        metrics: [] as MetricObjectWithValues<MetricValue<string>>[][],
        done: () => {
          clearTimeout(timer);
          collecting.delete(id);
          AggregatorRegistry.aggregate(request.metrics).metrics().then(resolve, reject);
        },
      };
      const timer = setTimeout(() => {
        collecting.delete(id);
        reject(new Error(`${request.pending.size} worker(s) did not send their metrics in time`));
      }, COLLECT_TIMEOUT_MS);
      collecting.set(id, request);
      for (const worker of targets) worker.send({ type: COLLECT, id } satisfies Message);
      if (request.pending.size === 0) request.done();
    });

  return new Promise<number>((resolve) => {
    const live = () => Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined);
    const stop = (signal: NodeJS.Signals, code: number) => {
      if (stopping) return;
      stopping = true;
      exitCode = code;
      logger.info({ signal, workers: live().length }, "stopping the workers");
      // A terminal's Ctrl-C reaches the workers too; each drains once, however many signals arrive.
      for (const worker of live()) worker.process.kill(signal);
      setTimeout(() => {
        for (const worker of live()) worker.process.kill("SIGKILL");
      }, STOP_GRACE_MS).unref();
      if (live().length === 0) resolve(exitCode);
    };

    cluster.on("message", (worker, message: Message) => {
      switch (message?.type) {
        case READY: {
          ready.set(worker.id, worker);
          readyBanners.push(message.banner);
          if (message.generatedKey) keyBanner = message.banner;
          if (bannerShown) logger.warn({ worker: worker.process.pid }, "a replacement worker is ready");
          else if (ready.size >= workers) {
            bannerShown = true;
            print(keyBanner ?? (readyBanners[0] as string));
            logger.info({ workers }, "listening");
          }
          break;
        }
        case SCRAPE:
          collect().then(
            (body) => worker.isConnected() && worker.send({ type: SCRAPED, id: message.id, body }),
            (error: Error) =>
              worker.isConnected() && worker.send({ type: SCRAPED, id: message.id, error: error.message }),
          );
          break;
        case COLLECTED: {
          const request = collecting.get(message.id);
          if (!request?.pending.delete(worker.id)) break;
          if (message.metrics) request.metrics.push(message.metrics);
          if (request.pending.size === 0) request.done();
          break;
        }
      }
    });

    cluster.on("exit", (worker, code, signal) => {
      const wasReady = ready.delete(worker.id);
      // A scrape waiting for this worker's metrics goes on without them.
      for (const request of collecting.values()) {
        if (request.pending.delete(worker.id) && request.pending.size === 0) request.done();
      }
      if (stopping) {
        // Workers drain and exit 0; one killed at the end of the grace period makes the exit 1.
        if (code !== 0) exitCode = 1;
        if (live().length === 0) resolve(exitCode);
        return;
      }
      logger.error({ worker: worker.process.pid, code, signal }, "a worker stopped unexpectedly");
      if (!wasReady && !bannerShown) {
        // It never started (the port is taken, the catalog is invalid...): every worker would fail alike.
        stop("SIGTERM", 1);
        return;
      }
      const now = Date.now();
      restarts.push(now);
      while (restarts.length > 0 && (restarts[0] as number) < now - RESTART_WINDOW_MS) restarts.shift();
      if (restarts.length > MAX_RESTARTS) {
        logger.error({ restarts: restarts.length }, "workers keep stopping: giving up");
        stop("SIGTERM", 1);
        return;
      }
      setTimeout(() => {
        if (!stopping) fork();
      }, RESTART_DELAY_MS);
    });

    process.on("SIGTERM", () => stop("SIGTERM", 0));
    process.on("SIGINT", () => stop("SIGINT", 0));
    for (let i = 0; i < workers; i++) fork();
  });
}

/**
 * In a worker the primary forked: answers the primary's requests for this worker's metrics, serves
 * `/metrics` as every worker's metrics summed (asked of the primary), and tells the primary it
 * listens, with the banner it would print.
 */
export function joinCluster(metrics: Metrics, banner: string, generatedKey: boolean): void {
  const send = (message: Message) => process.send?.(message);
  let nextId = 0;
  const waiting = new Map<number, { resolve: (body: string) => void; reject: (error: Error) => void }>();
  process.on("message", (message: Message) => {
    if (message?.type === COLLECT) {
      metrics.registry.getMetricsAsJSON().then(
        (values) => send({ type: COLLECTED, id: message.id, metrics: values }),
        () => send({ type: COLLECTED, id: message.id }),
      );
    } else if (message?.type === SCRAPED) {
      const waiter = waiting.get(message.id);
      waiting.delete(message.id);
      if (message.error !== undefined) waiter?.reject(new Error(message.error));
      else waiter?.resolve(message.body ?? "");
    }
  });
  metrics.scrape = () => {
    const id = nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        waiting.delete(id);
        reject(new AppError("unavailable", "The workers' metrics did not arrive in time; try again."));
      }, COLLECT_TIMEOUT_MS * 2);
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
      send({ type: SCRAPE, id });
    });
  };
  send({ type: READY, banner, generatedKey });
}
