import type { Context } from "hono";
import type { AppEnv, Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { orgPlan } from "../plans/subscriptions.js";
import type { RateHeaderState } from "./check.js";
import { catalogIndex, grantOf } from "./features.js";
import { apiRateKey } from "./keys.js";
import { setRateHeaders } from "./rate-headers.js";

/** Tollgate's own API for org API keys, when the catalog names no rate feature for it. */
export const DEFAULT_API_RATE = { limit: 600, windowMs: 60_000 };

/**
 * Rate-limits a request made with an org's API key, by the org's plan: the catalog's
 * `api_rate_feature` (default 600 a minute). Every answer carries the RateLimit headers; a denial is
 * 429 rate_limited with Retry-After. Unlike a check, this limiter fails open: reading one's own usage
 * should not fail because Redis is away (the decision is counted in /metrics).
 */
export async function enforceApiKeyRate(c: Context<AppEnv>, deps: Deps, orgId: string): Promise<void> {
  const nowMs = deps.clock.nowMs();
  const org = await orgPlan(deps, orgId, nowMs);
  if (!org) return; // A deleted org's keys stop verifying anyway.
  let limit = DEFAULT_API_RATE.limit;
  let windowMs = DEFAULT_API_RATE.windowMs;
  let name = "api";
  const featureKey = deps.catalog.api_rate_feature;
  if (featureKey) {
    const feature = catalogIndex(deps.catalog).features.get(featureKey);
    const grant = feature ? grantOf(deps.catalog, org.plan, feature) : undefined;
    if (grant?.type !== "rate" || !grant.rate) {
      throw new AppError("forbidden", `The organization's plan does not include API access (${featureKey}).`);
    }
    limit = grant.rate.limit;
    windowMs = grant.rate.window_ms;
    name = featureKey;
  }
  let result: Awaited<ReturnType<Deps["counters"]["apply"]>>;
  try {
    result = await deps.counters.apply(
      [{ kind: "rate", key: apiRateKey(orgId), limit, periodMs: windowMs, cost: 1 }],
      nowMs,
    );
  } catch {
    deps.metrics.degraded.inc({ component: "api_rate", decision: "open" });
    return;
  }
  if (result.status !== "done") return;
  const outcome = result.outcomes[0];
  if (outcome?.kind !== "rate") return;
  const state: RateHeaderState = {
    feature: name,
    limit,
    windowSeconds: Math.ceil(windowMs / 1000),
    remaining: outcome.remaining,
    resetSeconds: Math.ceil(outcome.resetMs / 1000),
    retryAfterSeconds: outcome.allowed ? undefined : Math.ceil(outcome.retryAfterMs / 1000),
  };
  if (outcome.allowed) {
    setRateHeaders(c, state);
    return;
  }
  const headers: Record<string, string> = {
    "ratelimit-policy": `"${name}";q=${limit};w=${state.windowSeconds}`,
    ratelimit: `"${name}";r=0;t=${state.resetSeconds}`,
    "retry-after": String(Math.max(1, state.retryAfterSeconds ?? 1)),
  };
  throw new AppError(
    "rate_limited",
    `This organization's API keys may make ${limit} requests per ${state.windowSeconds} seconds; retry in ${headers["retry-after"]} s.`,
    { headers },
  );
}
