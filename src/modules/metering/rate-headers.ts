import type { Context } from "hono";
import type { AppEnv } from "../../deps.js";
import type { RateHeaderState } from "./check.js";

/**
 * `RateLimit-Policy` and `RateLimit` as the IETF httpapi draft (draft-ietf-httpapi-ratelimit-headers,
 * revisions 08 to 11) writes them: structured-field lists naming the policy, with the quota `q` per
 * window `w` seconds, and the remaining quota `r` and seconds `t` until it is fully available again.
 * `Retry-After` (RFC 9110, seconds) goes with a denial.
 *
 * Headers are set before the handler returns its response (docs/benchmarks.md, rule 2).
 */
export function setRateHeaders(c: Context<AppEnv>, rate: RateHeaderState | undefined): void {
  if (!rate) return;
  const headers = rateHeaders(rate);
  for (const name in headers) c.header(name, headers[name]);
}

/** The headers themselves (for responses built without a Hono context). */
export function rateHeaders(rate: RateHeaderState): Record<string, string> {
  const name = `"${rate.feature}"`;
  const headers: Record<string, string> = {
    "ratelimit-policy": `${name};q=${rate.limit};w=${rate.windowSeconds}`,
    ratelimit: `${name};r=${rate.remaining};t=${rate.resetSeconds}`,
  };
  if (rate.retryAfterSeconds !== undefined)
    headers["retry-after"] = String(Math.max(1, rate.retryAfterSeconds));
  return headers;
}
