import { getConnInfo } from "@hono/node-server/conninfo";
import type { Context } from "hono";
import type { AppEnv } from "../../deps.js";

/** What in-process requests (`app.request()` in tests, no socket) count as for per-address budgets. */
export const LOCAL_CLIENT = "local";

/**
 * The address of the peer that opened the connection, for per-address attempt budgets and the audit
 * log. Forwarded headers (X-Forwarded-For) are ignored on purpose: anyone can send them, and trusting
 * them without a configured list of proxies would let a script pick a fresh address per attempt.
 * Behind a reverse proxy every client therefore shares the proxy's budget until trusted proxies are
 * configurable.
 */
export function clientIp(c: Context<AppEnv>): string {
  try {
    return getConnInfo(c).remote.address || LOCAL_CLIENT;
  } catch {
    // No Node socket behind this request (app.request() builds the Request in process).
    return LOCAL_CLIENT;
  }
}
