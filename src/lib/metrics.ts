import { Counter, collectDefaultMetrics, Histogram, Registry } from "prom-client";

/** Prometheus metrics, one registry per app instance (tests build many apps in one process). */
export interface Metrics {
  registry: Registry;
  httpRequests: Counter<"method" | "route" | "status">;
  httpDuration: Histogram<"method" | "route" | "status">;
  /** Decisions taken without Redis (fail-open or fail-closed), by component and outcome. */
  degraded: Counter<"component" | "decision">;
  jobs: Counter<"name" | "outcome">;
}

export function createMetrics(options: { processMetrics?: boolean } = {}): Metrics {
  const registry = new Registry();
  if (options.processMetrics !== false) collectDefaultMetrics({ register: registry, prefix: "tollgate_" });
  return {
    registry,
    httpRequests: new Counter({
      name: "tollgate_http_requests_total",
      help: "HTTP requests by method, matched route and status.",
      labelNames: ["method", "route", "status"],
      registers: [registry],
    }),
    httpDuration: new Histogram({
      name: "tollgate_http_request_duration_seconds",
      help: "HTTP request latency by method, matched route and status.",
      labelNames: ["method", "route", "status"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
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
  };
}
