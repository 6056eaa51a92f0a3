import { Counter, collectDefaultMetrics, type Metric, Registry } from "prom-client";

/**
 * Prometheus metrics, one registry per app instance (tests build many apps in one process).
 *
 * HTTP request metrics are on every request's path, so they are kept in plain maps — one lookup and a
 * few additions per request — and handed to prom-client only when /metrics is scraped. prom-client's
 * own `observe()` validates and hashes the label set on every call, which cost a fifth of the
 * throughput of a trivial route (docs/benchmarks.md).
 */
export interface Metrics {
  registry: Registry;
  /**
   * What `GET /metrics` serves: this registry, or — in a worker of `TOLLGATE_WORKERS` — every
   * worker's, summed by the primary (cluster.ts).
   */
  scrape(): Promise<{ body: string; contentType: string }>;
  /** Records one served request: counts it and its latency by method, matched route and status. */
  recordRequest(method: string, route: string, status: number, seconds: number): void;
  /** Decisions taken without Redis (fail-open or fail-closed), by component and outcome. */
  degraded: Counter<"component" | "decision">;
  jobs: Counter<"name" | "outcome">;
  /** Outbound webhook requests by outcome (succeeded, failed) and failure code. */
  webhooks: Counter<"outcome" | "code">;
}

export const HTTP_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

interface Series {
  labels: { method: string; route: string; status: string };
  count: number;
  sum: number;
  /** Observations per bucket (not cumulative); the last slot is +Inf. */
  buckets: number[];
}

type MetricValue = { labels: Record<string, string | number>; value: number; metricName?: string };

/** A metric prom-client's registry can render, backed by our own maps. */
function externalMetric(
  name: string,
  help: string,
  type: "counter" | "histogram",
  values: () => MetricValue[],
) {
  return {
    name,
    help,
    type,
    aggregator: "sum",
    get: async () => ({ name, help, type, aggregator: "sum", values: values() }),
    reset: () => {},
  } as unknown as Metric;
}

export function createMetrics(options: { processMetrics?: boolean } = {}): Metrics {
  const registry = new Registry();
  if (options.processMetrics !== false) collectDefaultMetrics({ register: registry, prefix: "tollgate_" });

  // Every series in creation order (for rendering), and the same series found by route, then method,
  // then status: callers pass the same route and method strings every time (their hashes are cached),
  // where a key string built per request would be hashed anew on every lookup.
  const ordered: Series[] = [];
  const byRoute = new Map<string, Map<string, Map<number, Series>>>();
  const all = () => ordered;

  registry.registerMetric(
    externalMetric(
      "tollgate_http_requests_total",
      "HTTP requests by method, matched route and status.",
      "counter",
      () => all().map((s) => ({ labels: s.labels, value: s.count })),
    ),
  );
  registry.registerMetric(
    externalMetric(
      "tollgate_http_request_duration_seconds",
      "HTTP request latency by method, matched route and status.",
      "histogram",
      () =>
        all().flatMap((s) => {
          let cumulative = 0;
          const values: MetricValue[] = HTTP_BUCKETS.map((le, i) => {
            cumulative += s.buckets[i] ?? 0;
            return {
              labels: { le, ...s.labels },
              value: cumulative,
              metricName: "tollgate_http_request_duration_seconds_bucket",
            };
          });
          values.push(
            {
              labels: { le: "+Inf", ...s.labels },
              value: s.count,
              metricName: "tollgate_http_request_duration_seconds_bucket",
            },
            { labels: s.labels, value: s.sum, metricName: "tollgate_http_request_duration_seconds_sum" },
            { labels: s.labels, value: s.count, metricName: "tollgate_http_request_duration_seconds_count" },
          );
          return values;
        }),
    ),
  );

  return {
    registry,
    async scrape() {
      return { body: await registry.metrics(), contentType: registry.contentType };
    },
    recordRequest(method, route, status, seconds) {
      let methods = byRoute.get(route);
      if (!methods) {
        methods = new Map();
        byRoute.set(route, methods);
      }
      let statuses = methods.get(method);
      if (!statuses) {
        statuses = new Map();
        methods.set(method, statuses);
      }
      let s = statuses.get(status);
      if (!s) {
        s = {
          labels: { method, route, status: String(status) },
          count: 0,
          sum: 0,
          buckets: new Array(HTTP_BUCKETS.length + 1).fill(0),
        };
        statuses.set(status, s);
        ordered.push(s);
      }
      s.count += 1;
      s.sum += seconds;
      let i = 0;
      while (i < HTTP_BUCKETS.length && seconds > (HTTP_BUCKETS[i] as number)) i++;
      s.buckets[i] = (s.buckets[i] ?? 0) + 1;
    },
    degraded: new Counter({
      name: "tollgate_degraded_decisions_total",
      help: "Decisions taken while a dependency (Redis) was unreachable, by component and decision.",
      labelNames: ["component", "decision"],
      registers: [registry],
    }),
    jobs: new Counter({
      name: "tollgate_jobs_total",
      help: "Background jobs by name and outcome (completed, retried, dead).",
      labelNames: ["name", "outcome"],
      registers: [registry],
    }),
    webhooks: new Counter({
      name: "tollgate_webhook_requests_total",
      help: "Outbound webhook requests by outcome (succeeded, failed) and failure code (timeout, network, redirect, http_status, forbidden_target; none on success).",
      labelNames: ["outcome", "code"],
      registers: [registry],
    }),
  };
}
