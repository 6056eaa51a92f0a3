import type { OpenAPIHono } from "@hono/zod-openapi";
import { bodyLimit } from "hono/body-limit";
import { requestId } from "hono/request-id";
import { routePath } from "hono/route";
import type { AppEnv, Deps } from "./deps.js";
import { AppError } from "./lib/errors.js";
import { createRouter, handleError, problemResponse } from "./lib/http.js";
import { newId } from "./lib/ids.js";
import { mountDocs } from "./modules/docs/routes.js";
import { healthRoutes } from "./modules/health/routes.js";
import { testClockRoutes } from "./modules/test-clock/routes.js";

export const VERSION = "0.1.0";

/** Default request body limit; routes that take large batches are listed in BODY_LIMITS. */
export const DEFAULT_BODY_LIMIT = 1024 * 1024;
const BODY_LIMITS: Record<string, number> = {};

const JSON_TYPE = /^application\/([\w.-]+\+)?json$/i;

/**
 * Builds the HTTP application: conventions (request ids, body limits, JSON-only API bodies,
 * problem+json errors, metrics, access logs), then each module's routes. No socket: tests call
 * `app.request()`; main.ts serves it.
 */
export function createApp(deps: Deps): OpenAPIHono<AppEnv> {
  const app = createRouter();

  app.use("*", requestId({ headerName: "x-request-id", generator: () => newId("request") }));
  app.use("*", async (c, next) => {
    c.set("deps", deps);
    const logger = deps.logger.child({ request_id: c.get("requestId") });
    c.set("logger", logger);
    const started = performance.now();
    await next();
    const seconds = (performance.now() - started) / 1000;
    // Unknown paths share one label so that scanning for URLs cannot blow up the metric's cardinality.
    const route = c.get("unmatched") ? "unmatched" : routePath(c, -1);
    const labels = { method: c.req.method, route, status: String(c.res.status) };
    deps.metrics.httpRequests.inc(labels);
    deps.metrics.httpDuration.observe(labels, seconds);
    // Access lines at debug (load balancers keep access logs; this keeps the hot path quiet), 5xx at error.
    if (c.res.status >= 500 || logger.isLevelEnabled("debug")) {
      logger[c.res.status >= 500 ? "error" : "debug"](
        { ...labels, path: c.req.path, ms: Math.round(seconds * 10_000) / 10 },
        "request",
      );
    }
  });

  app.use("*", async (c, next) => {
    const maxSize = BODY_LIMITS[c.req.path] ?? DEFAULT_BODY_LIMIT;
    return bodyLimit({
      maxSize,
      onError: (ctx) =>
        problemResponse(
          ctx,
          "payload_too_large",
          `The request body is larger than the ${maxSize} bytes this endpoint accepts.`,
        ),
    })(c, next);
  });

  // The API speaks JSON: a body of another type is refused up front instead of validating as `{}`.
  app.use("/v1/*", async (c, next) => {
    const hasBody = c.req.header("content-length")
      ? c.req.header("content-length") !== "0"
      : c.req.raw.body !== null;
    if (hasBody && !["GET", "HEAD"].includes(c.req.method)) {
      const mediaType = (c.req.header("content-type") ?? "").split(";")[0]?.trim() ?? "";
      if (!JSON_TYPE.test(mediaType)) {
        throw new AppError(
          "unsupported_media_type",
          "Request bodies must be JSON (Content-Type: application/json).",
        );
      }
    }
    await next();
  });

  app.route("/", healthRoutes());
  if (deps.testClock) app.route("/", testClockRoutes());
  mountDocs(app, VERSION);

  app.notFound((c) => {
    c.set("unmatched", true);
    return problemResponse(c, "not_found", `No route for ${c.req.method} ${c.req.path}.`);
  });
  app.onError(handleError);
  return app;
}
