import { timingSafeEqual } from "node:crypto";
import { createMiddleware } from "hono/factory";
import type { AppEnv } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { sha256 } from "./secrets.js";

/** The bearer token of a request, or undefined. */
export function bearerToken(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match?.[1];
}

/** Constant-time comparison of a presented operator key with the stored hash. */
export function isOperatorKey(presented: string | undefined, adminKeyHash: Buffer): boolean {
  if (!presented) return false;
  // Hashing first makes both sides the same length, so timingSafeEqual never short-circuits on length.
  return timingSafeEqual(sha256(presented), adminKeyHash);
}

/** Admits only the operator (`Authorization: Bearer <TOLLGATE_ADMIN_KEY>`); 401 otherwise. */
export const requireOperator = createMiddleware<AppEnv>(async (c, next) => {
  const token = bearerToken(c.req.header("authorization"));
  if (!isOperatorKey(token, c.get("deps").secrets.adminKeyHash)) {
    throw new AppError(
      "unauthenticated",
      token ? "The credentials are not valid." : "This endpoint needs the operator key as a Bearer token.",
      { headers: { "www-authenticate": 'Bearer realm="tollgate"' } },
    );
  }
  await next();
});
