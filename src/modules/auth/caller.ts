import type { Context, MiddlewareHandler } from "hono";
import type { AppEnv, Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { createRouter } from "../../lib/http.js";
import { verifyApiKey } from "../api-keys/verify.js";
import { enforceApiKeyRate } from "../metering/api-rate.js";
import { bearerToken, isOperatorKey } from "../operator/auth.js";
import { sessionIsLive } from "./sessions.js";
import { verifyAccessToken } from "./tokens.js";

/** Who is calling: the product's backend, a signed-in user, or an org's API key. */
export type Caller =
  | { kind: "operator" }
  | { kind: "user"; userId: string; sessionId: string; platformAdmin: boolean; twoFactor: boolean }
  | { kind: "api_key"; keyId: string; orgId: string; scopes: string[] };

const unauthenticated = (detail: string) =>
  new AppError("unauthenticated", detail, { headers: { "www-authenticate": 'Bearer realm="tollgate"' } });

/** Resolves a bearer token to a caller, or throws 401. The operator key is checked first (cheapest). */
export async function resolveCaller(deps: Deps, token: string): Promise<Caller> {
  if (isOperatorKey(token, deps.secrets.adminKeyHash)) return { kind: "operator" };
  if (token.startsWith("tg_")) {
    const key = await verifyApiKey(deps, token);
    if (!key.valid)
      throw unauthenticated(`The API key is ${key.reason === "malformed" ? "not valid" : key.reason}.`);
    return { kind: "api_key", keyId: key.keyId, orgId: key.orgId, scopes: key.scopes };
  }
  const session = await verifyAccessToken(deps, token);
  // Signing out revokes the session at once, not when its access tokens expire.
  if (!session || !(await sessionIsLive(deps, session.sessionId))) {
    throw unauthenticated("The access token is not valid or has expired.");
  }
  return { kind: "user", ...session };
}

/**
 * The request's caller, resolved once and cached on the context; 401 when there are no valid
 * credentials. Routes name which kinds of caller they admit.
 */
export async function requireCaller<K extends Caller["kind"]>(
  c: Context<AppEnv>,
  ...kinds: K[]
): Promise<Extract<Caller, { kind: K }>> {
  let caller = c.get("caller");
  if (!caller) {
    const token = bearerToken(c.req.header("authorization"));
    if (!token) throw unauthenticated("This endpoint needs credentials as a Bearer token.");
    caller = await resolveCaller(c.get("deps"), token);
    c.set("caller", caller);
    // Org API keys are rate limited by their org's plan (once per request: the caller is cached).
    if (caller.kind === "api_key") await enforceApiKeyRate(c, c.get("deps"), caller.orgId);
  }
  if (kinds.length > 0 && !kinds.includes(caller.kind as K)) {
    // Valid credentials of the wrong kind: an API key calling a user-only route, for example.
    throw new AppError("forbidden", `This endpoint is not available to ${describe(caller)}.`);
  }
  return caller as Extract<Caller, { kind: K }>;
}

function describe(caller: Caller): string {
  return caller.kind === "api_key"
    ? "API keys"
    : caller.kind === "user"
      ? "user sessions"
      : "the operator key";
}

/** Route middleware admitting only the operator (403 for other valid credentials, 401 for none). */
export const operatorOnly: MiddlewareHandler<AppEnv> = async (c, next) => {
  await requireCaller(c, "operator");
  await next();
};

/**
 * Route middleware for the instance's administration (`/v1/admin/*` reads and actions a dashboard
 * shows): the operator, or a signed-in platform admin (TOLLGATE_PLATFORM_ADMINS, verified e-mail).
 */
export const platformAdminOnly: MiddlewareHandler<AppEnv> = async (c, next) => {
  const caller = await requireCaller(c);
  if (caller.kind === "operator" || (caller.kind === "user" && caller.platformAdmin)) return next();
  throw new AppError("forbidden", "Only the operator and platform admins may do this.");
};

/**
 * A router for API routes: every route that declares `security` in its OpenAPI definition first
 * resolves the caller (401 without valid credentials), before its request is validated — so an
 * unauthenticated client learns nothing from validation errors, and no route can declare security
 * and forget to check it. Roles and tenancy are then checked by requireOrgAccess in the handler.
 */
export function createApiRouter() {
  const router = createRouter();
  const openapi = router.openapi.bind(router);
  const authenticate: MiddlewareHandler<AppEnv> = async (c, next) => {
    await requireCaller(c);
    await next();
  };
  router.openapi = ((route, handler, hook) => {
    const own = route.middleware
      ? Array.isArray(route.middleware)
        ? route.middleware
        : [route.middleware]
      : [];
    const secured =
      route.security && route.security.length > 0 ? { ...route, middleware: [authenticate, ...own] } : route;
    return openapi(secured, handler, hook);
  }) as typeof router.openapi;
  return router;
}
