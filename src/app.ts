import type { OpenAPIHono } from "@hono/zod-openapi";
import type { Context, Next } from "hono";
import { bodyLimit } from "hono/body-limit";
import { routePath } from "hono/route";
import type { AppEnv, Deps } from "./deps.js";
import { AppError } from "./lib/errors.js";
import { createRouter, handleError, problemResponse, requestLogger } from "./lib/http.js";
import { newId } from "./lib/ids.js";
import { directoryRoutes } from "./modules/admin/directory.js";
import { metricsRoutes } from "./modules/admin/metrics.js";
import { apiKeyRoutes } from "./modules/api-keys/routes.js";
import { emailFlowRoutes } from "./modules/auth/email-routes.js";
import { oidcRoutes } from "./modules/auth/oidc-routes.js";
import { profileRoutes } from "./modules/auth/profile-routes.js";
import { authRoutes } from "./modules/auth/routes.js";
import { twoFactorRoutes } from "./modules/auth/two-factor-routes.js";
import {
  checkoutRoutes,
  couponRoutes,
  invoiceRoutes,
  paymentRoutes,
  portalRoutes,
  pricingRoutes,
  subscriptionChangeRoutes,
} from "./modules/billing/routes.js";
import { mountDocs } from "./modules/docs/routes.js";
import { healthRoutes } from "./modules/health/routes.js";
import { jobAdminRoutes } from "./modules/jobs/routes.js";
import { meteringRoutes } from "./modules/metering/routes.js";
import { broadcastRoutes } from "./modules/notifications/broadcast.js";
import { brandingRoutes } from "./modules/orgs/branding.js";
import { orgRoutes } from "./modules/orgs/routes.js";
import { planRoutes, subscriptionRoutes } from "./modules/plans/routes.js";
import { privacyRoutes } from "./modules/privacy/routes.js";
import { testClockRoutes } from "./modules/test-clock/routes.js";
import { mountWeb } from "./modules/web/routes.js";
import { webhookRoutes } from "./modules/webhooks/routes.js";

export const VERSION = "0.1.0";

/** Default request body limit; routes that take large batches are listed in BODY_LIMITS. */
export const DEFAULT_BODY_LIMIT = 1024 * 1024;
const BODY_LIMITS: Record<string, number> = { "/v1/events": 4 * 1024 * 1024 };

const JSON_TYPE = /^application\/([\w.-]+\+)?json$/i;

const tooLarge = (maxSize: number) =>
  new AppError(
    "payload_too_large",
    `The request body is larger than the ${maxSize} bytes this endpoint accepts.`,
  );

/**
 * Body rules, decided from headers alone: touching `c.req.raw.body` makes the Node adapter build a
 * full Request object. HTTP/1.1 says a request has a body only if it sends Content-Length or
 * Transfer-Encoding. A Content-Length over the limit is refused unread (Node stops reading at
 * Content-Length anyway); a chunked body is counted as it streams. Under /v1 a body must be JSON,
 * refused up front instead of validating as `{}`.
 */
function withBodyRules(c: Context<AppEnv>, next: Next): Promise<unknown> {
  const maxSize = BODY_LIMITS[c.req.path] ?? DEFAULT_BODY_LIMIT;
  const length = c.req.header("content-length");
  if (length !== undefined && Number(length) > maxSize) throw tooLarge(maxSize);
  const chunked = length === undefined && c.req.header("transfer-encoding") !== undefined;
  const hasBody = chunked || (length !== undefined && length !== "0");
  if (hasBody && c.req.path.startsWith("/v1/")) {
    const mediaType = (c.req.header("content-type") ?? "").split(";")[0]?.trim() ?? "";
    if (!JSON_TYPE.test(mediaType)) {
      throw new AppError(
        "unsupported_media_type",
        "Request bodies must be JSON (Content-Type: application/json).",
      );
    }
  }
  if (chunked) return bodyLimit({ maxSize, onError: () => Promise.reject(tooLarge(maxSize)) })(c, next);
  return next();
}

/** A caller's own request id is kept when it is short and plain (it ends up in logs and headers). */
export const CALLER_REQUEST_ID = /^[\w\-=.:]{1,128}$/;

/**
 * Builds the HTTP application: conventions (request ids, body limits, JSON-only API bodies,
 * problem+json errors, metrics, access logs), then each module's routes. No socket: tests call
 * `app.request()`; main.ts serves it.
 */
export function createApp(deps: Deps): OpenAPIHono<AppEnv> {
  const app = createRouter();

  // One middleware for every convention: each extra layer costs throughput on the hot path, and so
  // would touching the raw body or setting headers after the handler (docs/benchmarks.md).
  app.use("*", async (c, next) => {
    const started = performance.now();
    const incoming = c.req.header("x-request-id");
    const requestId = incoming && CALLER_REQUEST_ID.test(incoming) ? incoming : newId("request");
    c.set("deps", deps);
    c.set("requestId", requestId);
    c.header("x-request-id", requestId);
    // While draining, every response closes its connection, so shutdown does not wait on keep-alives.
    if (deps.draining) c.header("connection", "close");
    try {
      const method = c.req.method;
      if (method === "GET" || method === "HEAD") await next();
      else await withBodyRules(c, next);
    } catch (error) {
      // Errors thrown by handlers are answered by app.onError inside next(); these are the body
      // rules' own, answered here so the metrics below see the status that was sent.
      c.res = handleError(error as Error, c);
    } finally {
      const seconds = (performance.now() - started) / 1000;
      // Unknown paths share one label so that scanning for URLs cannot blow up the metric's cardinality.
      const route = c.get("unmatched") ? "unmatched" : routePath(c, -1);
      const status = c.res.status;
      deps.metrics.recordRequest(c.req.method, route, status, seconds);
      // Access lines at debug (load balancers keep access logs), 5xx at error. The route pattern, not
      // the path: paths can carry tokens (invitation links).
      if (status >= 500 || deps.logger.isLevelEnabled("debug")) {
        requestLogger(c)[status >= 500 ? "error" : "debug"](
          { method: c.req.method, route, status, ms: Math.round(seconds * 10_000) / 10 },
          "request",
        );
      }
    }
  });

  app.route("/", healthRoutes());
  app.route("/", apiKeyRoutes());
  app.route("/", emailFlowRoutes());
  app.route("/", authRoutes());
  app.route("/", oidcRoutes());
  app.route("/", twoFactorRoutes());
  app.route("/", privacyRoutes());
  app.route("/", profileRoutes());
  app.route("/", orgRoutes());
  app.route("/", brandingRoutes());
  app.route("/", planRoutes());
  app.route("/", pricingRoutes());
  app.route("/", invoiceRoutes());
  app.route("/", subscriptionChangeRoutes());
  app.route("/", checkoutRoutes());
  app.route("/", portalRoutes());
  app.route("/", paymentRoutes());
  app.route("/", couponRoutes());
  app.route("/", subscriptionRoutes());
  app.route("/", meteringRoutes());
  app.route("/", webhookRoutes());
  app.route("/", jobAdminRoutes());
  app.route("/", broadcastRoutes());
  app.route("/", metricsRoutes());
  app.route("/", directoryRoutes());
  if (deps.testClock) app.route("/", testClockRoutes());
  mountDocs(app, VERSION);
  mountWeb(app);

  app.notFound((c) => {
    c.set("unmatched", true);
    return problemResponse(c, "not_found", `No route for ${c.req.method} ${c.req.path}.`);
  });
  app.onError(handleError);
  return app;
}
