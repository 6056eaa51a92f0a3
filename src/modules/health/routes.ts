import { createRoute, z } from "@hono/zod-openapi";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { createRouter, errorResponses, jsonResponse } from "../../lib/http.js";
import type { Logger } from "../../lib/logger.js";

const Health = z.object({ status: z.literal("ok") }).openapi("Health");

const Check = z.object({
  status: z.enum(["up", "down"]),
  latency_ms: z.number(),
});
const Ready = z
  .object({ status: z.literal("ready"), checks: z.record(z.string(), Check) })
  .openapi("Readiness");

type CheckResult = z.infer<typeof Check>;

async function timed(name: string, logger: Logger, run: () => Promise<void>): Promise<CheckResult> {
  const started = performance.now();
  try {
    await run();
    return { status: "up", latency_ms: Math.round((performance.now() - started) * 10) / 10 };
  } catch (error) {
    // The driver's message (hosts, users) goes to the log, not to this unauthenticated endpoint.
    logger.warn({ err: (error as Error).message, check: name }, "readiness check failed");
    return { status: "down", latency_ms: Math.round((performance.now() - started) * 10) / 10 };
  }
}

/** Checks every dependency the process needs to serve: the database, and Redis when configured. */
export async function readiness(deps: Deps): Promise<Record<string, CheckResult>> {
  const checks: Record<string, Promise<CheckResult>> = {
    database: timed("database", deps.logger, () => deps.database.ping(2000)),
  };
  if (deps.redis) checks.redis = timed("redis", deps.logger, () => deps.counters.ping());
  const entries = await Promise.all(
    Object.entries(checks).map(async ([name, p]) => [name, await p] as const),
  );
  return Object.fromEntries(entries);
}

/** Liveness, readiness and Prometheus metrics. */
export function healthRoutes() {
  const router = createRouter();

  router.openapi(
    createRoute({
      method: "get",
      path: "/healthz",
      tags: ["Operations"],
      summary: "Liveness: the process is up",
      responses: { 200: jsonResponse(Health, "Alive") },
    }),
    (c) => c.json({ status: "ok" as const }, 200),
  );

  router.openapi(
    createRoute({
      method: "get",
      path: "/readyz",
      tags: ["Operations"],
      summary: "Readiness: the database and Redis answer",
      description:
        "503 while any dependency is unreachable or the process is shutting down; green again by itself.",
      responses: { 200: jsonResponse(Ready, "Ready to serve"), ...errorResponses(503) },
    }),
    async (c) => {
      const deps = c.get("deps");
      const checks = await readiness(deps);
      const down = Object.entries(checks).filter(([, check]) => check.status === "down");
      if (deps.draining) throw new AppError("unavailable", "Shutting down.", { checks });
      if (down.length > 0) {
        throw new AppError("unavailable", `Unreachable: ${down.map(([name]) => name).join(", ")}.`, {
          checks,
        });
      }
      return c.json({ status: "ready" as const, checks }, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "get",
      path: "/metrics",
      tags: ["Operations"],
      summary: "Prometheus metrics",
      responses: {
        200: { description: "Prometheus text format", content: { "text/plain": { schema: z.string() } } },
      },
    }),
    async (c) => {
      const { body, contentType } = await c.get("deps").metrics.scrape();
      return c.text(body, 200, { "content-type": contentType });
    },
  );
  return router;
}
