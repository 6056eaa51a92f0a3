import type { TollgateUnavailableError } from "./errors.js";
import type { FetchLike } from "./http.js";
import type { components, paths } from "./schema.js";

/** Every schema of Tollgate's OpenAPI document, by name (`Schemas["Entitlements"]`, …). */
export type Schemas = components["schemas"];
export type { components, paths };

/** One feature's decision as Tollgate answers it (`POST /v1/check`). */
export type ServerCheckResult = Schemas["CheckResult"];
/** `boolean`, `limit`, `metered` or `rate`. */
export type FeatureType = ServerCheckResult["type"];
/** Why a check was denied (`feature_not_in_plan`, `quota_exceeded`, `rate_limited`, …). */
export type DenialReason = NonNullable<ServerCheckResult["reason"]>;

/**
 * What to answer when Tollgate cannot be reached in time (timeout, network error, 408, 429, 5xx):
 * `"open"` allows, `"closed"` denies with reason `unavailable`. Chosen per client and per call.
 */
export type FailMode = "open" | "closed";

/**
 * Where an answer came from: `tollgate` (asked just now), `cache` (the local entitlement cache: no
 * request), `fail-open` / `fail-closed` (Tollgate could not be reached; decided by `failMode`).
 */
export type CheckSource = "tollgate" | "cache" | "fail-open" | "fail-closed";

/**
 * One feature's decision: the server's fields (`allowed`, `feature`, `type`, `limit`, `used`,
 * `remaining`, `resets_at`, `reason`, `upgrade_url`, `upgrade_plan`, `retry_after_ms`) and where the
 * answer came from.
 *
 * Answers from the cache are shared, frozen objects: do not modify them.
 */
export interface CheckResult extends Omit<ServerCheckResult, "type"> {
  /** The feature's type; `null` only in a fail-open/fail-closed answer for a feature never seen. */
  type: FeatureType | null;
  source: CheckSource;
  /** Why Tollgate could not answer, when `source` is `fail-open` or `fail-closed`. */
  error?: TollgateUnavailableError;
}

/** Several features decided together: all allowed (and consumed) or none. Results in request order. */
export interface MultiCheckResult {
  allowed: boolean;
  results: CheckResult[];
  source: CheckSource;
  error?: TollgateUnavailableError;
}

/** One feature of a multi-feature check. */
export interface FeatureRequest {
  feature: string;
  /** Units (default 1): see `CheckOptions.amount`. */
  amount?: number | string;
  /**
   * This feature only: consume it (`true`) or only check it (`false`). Default: the call's `consume`.
   * Tollgate decides the checked features first and consumes nothing unless they are all allowed
   * (a rate taken now and a quota checked, to be tracked after the work is done).
   */
  consume?: boolean;
}

/**
 * The rate-limit headers Tollgate answered with (lowercase names): `ratelimit-policy` and `ratelimit`
 * (IETF draft, the most constrained rate feature of the call) and `retry-after` on a rate denial.
 */
export interface RateHeaders {
  ratelimit?: string;
  "ratelimit-policy"?: string;
  "retry-after"?: string;
}

/** Options of `check()`. */
export interface CheckOptions {
  /**
   * Units to consume (default 1; single-feature checks). Whole numbers for count meters, limit and
   * rate features, up to 6 decimals for sum meters; a negative amount releases a limit's allocation.
   */
  amount?: number | string;
  /** Default `true`. `false` only asks: nothing is consumed (and boolean/limit answers may come from the cache). */
  consume?: boolean;
  /** Makes a consuming check safe to retry: a repeated key returns the first answer (for 24 hours). */
  idempotencyKey?: string;
  /** What to answer if Tollgate cannot be reached in time. Default: the client's `failMode`. */
  failMode?: FailMode;
  /** The whole call's budget, including a cache fill. Default: the client's `timeoutMs`. */
  timeoutMs?: number;
  /** Aborts the call; it then rejects with the signal's reason (no fail-open/closed answer). */
  signal?: AbortSignal;
}

/** `POST /v1/keys/verify` for a valid key, with where the answer came from. */
export interface ValidKey
  extends Omit<Extract<Schemas["KeyVerification"], { valid: true }>, "check" | "checks"> {
  valid: true;
  /** The check of `feature`, when one was asked. */
  check?: CheckResult;
  /** The checks of `features`, when they were asked. */
  checks?: MultiCheckResult;
  /** The rate-limit headers of Tollgate's answer, when its checks named a rate feature. */
  rateHeaders?: RateHeaders;
  /**
   * `tollgate`, `cache` (the key was verified less than `keyCacheTtlMs` ago and any checks came from
   * the entitlement cache), or `fail-open` (Tollgate unreachable; the key was valid recently).
   */
  source: "tollgate" | "cache" | "fail-open";
  error?: TollgateUnavailableError;
}

/** An invalid key, or one that could not be verified (reason `unavailable`, with `failMode` closed). */
export interface InvalidKey {
  valid: false;
  reason: Extract<Schemas["KeyVerification"], { valid: false }>["reason"] | "unavailable";
  source: "tollgate" | "fail-closed";
  error?: TollgateUnavailableError;
}

/** The verdict of `verifyKey()`. */
export type KeyVerification = ValidKey | InvalidKey;

/** Options of `verifyKey()`. */
export interface VerifyKeyOptions {
  /** Also check this feature for the key's org, in the same round trip (not with `features`). */
  feature?: string;
  /** Units for `feature` (default 1). */
  amount?: number | string;
  /**
   * Also check several features for the key's org, all consumed or none (not with `feature`); a
   * feature with `consume: false` is only checked.
   */
  features?: readonly FeatureRequest[];
  /** For the checks; default `true`. */
  consume?: boolean;
  /** For the checks: makes a consuming verification safe to retry. */
  idempotencyKey?: string;
  /** What to answer if Tollgate cannot be reached in time. Default: the client's `failMode`. */
  failMode?: FailMode;
  /** The call's budget. Default: the client's `timeoutMs`. */
  timeoutMs?: number;
  /** Aborts the call; it then rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** A usage event for `track()`. */
export interface TrackEvent {
  /** The org that used something. */
  orgId: string;
  /** The meter's key in the catalog. */
  meter: string;
  /** How much (default 1): whole units for count meters, up to 6 decimals for sum meters. */
  value?: number | string;
  /** When it happened (default: when `track()` was called, so late delivery counts it in the right period). */
  timestamp?: Date | string;
  /** Free-form properties (used by unique-count and percentage meters). */
  properties?: Record<string, unknown>;
  /** Your id for the event; Tollgate counts each id once per org, forever. Default: 128 random bits per client, then a counter. */
  id?: string;
}

/** An event as sent to `POST /v1/events`. */
export type UsageEvent = Schemas["UsageEvent"];

/**
 * A problem with tracked events, reported to `onError`:
 * - `rejected`: Tollgate refused these events (unknown meter, bad value, …); they are dropped.
 * - `dropped`: events dropped by the SDK: the queue was full (`queue_full`, the oldest go first) or
 *   Tollgate refused the whole batch (`refused`, a 4xx such as a batch too large to split).
 * - `retrying`: a delivery failed `maxAttempts` times (Tollgate unreachable); the events stay queued
 *   and are sent again with the same ids on the next flush.
 */
export type TrackProblem =
  | { kind: "rejected"; events: (UsageEvent & { code: string; detail: string })[] }
  | { kind: "dropped"; reason: "queue_full" | "refused"; events: UsageEvent[]; error?: Error }
  | { kind: "retrying"; events: UsageEvent[]; error: Error };

/** How `track()` batches and retries. */
export interface TrackOptions {
  /** Events per request (at most 1000). Default 100; a full batch is sent at once. */
  batchSize?: number;
  /** How often queued events are sent. Default 1000 ms. */
  flushIntervalMs?: number;
  /** Events kept while Tollgate is unreachable; past it the oldest are dropped (and reported). Default 10,000. */
  maxQueue?: number;
  /** Attempts per delivery before the batch goes back to the queue for the next flush. Default 5. */
  maxAttempts?: number;
  /** First retry delay; doubles each attempt, with jitter. Default 200 ms. */
  initialBackoffMs?: number;
  /** Longest retry delay (a server's `Retry-After` is honoured up to this). Default 5000 ms. */
  maxBackoffMs?: number;
  /** Timeout of one `POST /v1/events` request. Default 10,000 ms. */
  timeoutMs?: number;
  /** Told about rejected, dropped and undelivered events. Default: `console.warn`. */
  onError?: (problem: TrackProblem) => void;
}

/** Options of `new Tollgate()`. */
export interface TollgateOptions {
  /** Where Tollgate listens, e.g. `https://tollgate.internal:3000`. */
  baseUrl: string;
  /** The operator key (`TOLLGATE_ADMIN_KEY`), sent as a Bearer token. Keep it on the server. */
  apiKey: string;
  /** Budget of each `check()` / `verifyKey()` call. Default 2000 ms. */
  timeoutMs?: number;
  /** Timeout of each request made through `api`. Default 10,000 ms. */
  apiTimeoutMs?: number;
  /** What `check()` and `verifyKey()` answer when Tollgate cannot be reached. Default `"closed"`. */
  failMode?: FailMode;
  /** How long boolean and limit answers are cached per org. Default 30,000 ms; 0 turns the cache off. */
  cacheTtlMs?: number;
  /** Orgs kept in the cache (the least recently filled go first). Default 10,000. */
  cacheMaxOrgs?: number;
  /**
   * How long a valid key's verdict (key → org, scopes, plan) is reused. Default 500 ms, at most
   * 2000 ms: a revoked key stops within Tollgate's own 1.5 s plus this.
   */
  keyCacheTtlMs?: number;
  /** Batching and retries of `track()`. */
  track?: TrackOptions;
  /**
   * A `fetch` for the SDK's requests (tests, proxies, instrumentation). Without one, the SDK uses
   * `node:http` with a keep-alive agent on Node 20.16+ and the global `fetch` elsewhere; the typed
   * `api` always uses `fetch`.
   */
  fetch?: FetchLike;
}
