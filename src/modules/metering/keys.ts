/**
 * The counter-store keys of the hot path, in one place: checks, event ingest, entitlements, the API
 * rate limiter and plan changes all address the same counters and limiters.
 */

/** An org's usage of a meter in one usage period. */
export const meterCounterKey = (orgId: string, meter: string, periodStartMs: number) =>
  `m:${orgId}:${meter}:${periodStartMs}`;

/** An org's allocation of a limit feature (seats, profiles). */
export const allocationKey = (orgId: string, feature: string) => `a:${orgId}:${feature}`;

/** An org's GCRA limiter for a rate feature checked through /v1/check. */
export const rateKey = (orgId: string, feature: string) => `r:${orgId}:${feature}`;

/** An org's limiter for requests made with its API keys to Tollgate's own API. */
export const apiRateKey = (orgId: string) => `api:${orgId}`;
