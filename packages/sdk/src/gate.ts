import type { Tollgate } from "./client.js";
import { retryAfterOf, unref } from "./http.js";
import type {
  CheckResult,
  FailMode,
  FeatureRequest,
  KeyVerification,
  RateHeaders,
  ValidKey,
} from "./types.js";

/**
 * What the Express, Fastify and Hono middleware share: everything but reading the request and
 * writing the response. Framework-free and web-standard, like the rest of the core; the adapters
 * (`./hono`, `./express`, `./fastify`) are a few lines each around {@link createGate}.
 *
 * Per request:
 * 1. The org's API key, from the request (`key`, default `Authorization: Bearer …` then `X-API-Key`).
 * 2. With `consume` or `quota`: one `verifyKey()` carrying every feature — `consume` items consumed,
 *    `quota` and `require` items only checked — so the key, the rate and the quota are decided in one
 *    round trip, all or nothing (Tollgate consumes nothing unless every checked item is allowed).
 *    Without them: `verifyKey()` (its verdict reused for `keyCacheTtlMs`) and the `require` features
 *    from the entitlement cache (`check()` with `consume: false`, a Map lookup when warm): a warm route makes
 *    no request at all.
 * 3. Allowed: the handler runs with a {@link GateContext}; after a 2xx answer each `quota` is tracked
 *    on its meter (`track()`, queued and delivered in the background), never after a failure.
 *    Denied: a problem+json answer (401, 402, 413, 429 or 503, see {@link GateRejection}).
 */

type Awaitable<T> = T | Promise<T>;

/**
 * A quota: checked before the handler (nothing consumed), tracked on `meter` after a 2xx answer.
 * Only a metered feature can be a quota (a limit such as seats is an allocation: take it with
 * `consume`); the middleware checks this against the catalog and throws a `TypeError` otherwise.
 */
export interface GateQuota<Ctx> {
  /** The metered feature whose remaining allowance is checked. */
  feature: string;
  /** The meter usage is tracked on after success: the feature's own meter. */
  meter: string;
  /**
   * Units the request will use (default 1): checked before, tracked after (unless `usage()` says
   * otherwise). On a `count` meter each unit is one event, so a whole number of at most 1,000 per
   * request ({@link MAX_COUNT_UNITS}); larger quantities belong on a `sum` meter.
   */
  amount?: number | ((ctx: Ctx) => Awaitable<number>);
}

/** At most this many units per request on a `count` meter: one event each, one batch of events. */
export const MAX_COUNT_UNITS = 1000;

/** What a route behind the middleware needs from Tollgate. `Ctx` is the framework's request context. */
export interface GateOptions<Ctx> {
  /** Consumed before the handler, all or nothing (rate limits; anything to be paid for up front). */
  consume?: FeatureRequest[] | ((ctx: Ctx) => Awaitable<FeatureRequest[]>);
  /**
   * Checked before the handler (enough left for `amount`, nothing consumed), then tracked on the
   * given meter after a 2xx answer — never when the handler fails.
   */
  quota?: GateQuota<Ctx>[];
  /** Boolean features that must be on (answered from the SDK's entitlement cache when warm). */
  require?: string[] | ((ctx: Ctx) => Awaitable<string[]>);
  /** Where the org's API key comes from; default `Authorization: Bearer <key>`, then `X-API-Key`. */
  key?: (ctx: Ctx) => string | undefined;
  /**
   * When Tollgate cannot be reached in time: "open" lets the request through (usage is still
   * tracked and delivered later), "closed" answers 503. Default: the client's failMode.
   */
  failMode?: FailMode;
  /** The budget of Tollgate's answer for one request, all calls included. Default: the client's `timeoutMs`. */
  timeoutMs?: number;
}

/** What the handler sees (`c.get("tollgate")`, `res.locals.tollgate`, `request.tollgate`). */
export interface GateContext {
  /** The org the key belongs to. */
  orgId: string;
  /** The key's id (`key_…`). */
  keyId: string;
  /** The org's plan. */
  plan: string;
  /** The key's scopes. */
  scopes: string[];
  /**
   * `tollgate` (Tollgate answered for this request), `cache` (no request: the key was verified less
   * than `keyCacheTtlMs` ago and the required features came from the entitlement cache), or
   * `fail-open` (Tollgate could not be reached; let through by `failMode: "open"`).
   */
  source: "tollgate" | "cache" | "fail-open";
  /** Every check, in the order `consume`, `quota`, `require`. */
  results: CheckResult[];
  /** Overrides the amount tracked for a quota feature after success (e.g. the real number of units). */
  usage(feature: string, amount: number): void;
}

/** An RFC 9457 problem, as Tollgate's own errors look. */
export interface GateProblem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code:
    | "unauthenticated"
    | "payment_required"
    | "quota_exceeded"
    | "rate_limited"
    | "too_many_units"
    | "unavailable";
  [extension: string]: unknown;
}

/** A denial, ready to send: `application/problem+json` with these headers. */
export interface GateRejection {
  status: number;
  headers: Record<string, string>;
  body: GateProblem;
}

export type GateDecision =
  | {
      allowed: true;
      context: GateContext;
      /** Headers to set on the handler's response (Tollgate's `RateLimit` headers, when a rate was taken). */
      headers: Record<string, string>;
      /** Call once the response is sent: tracks the quotas when `status` is 2xx and nothing threw. */
      finish(status: number): void;
    }
  | { allowed: false; rejection: GateRejection };

/** Reads one request header (lowercase name) from the framework's context; undefined when absent. */
export type HeaderReader<Ctx> = (ctx: Ctx, name: string) => string | undefined;

export const PROBLEM_CONTENT_TYPE = "application/problem+json";

/** `Retry-After` of a 503 when Tollgate gave none: long enough for a restart, short enough to retry. */
export const UNAVAILABLE_RETRY_AFTER_SECONDS = 5;

const TITLES: Record<GateProblem["code"], string> = {
  unauthenticated: "Authentication required",
  payment_required: "Payment required",
  quota_exceeded: "Quota exceeded",
  rate_limited: "Rate limited",
  too_many_units: "Too many units in one request",
  unavailable: "Service unavailable",
};

const STATUS: Record<GateProblem["code"], number> = {
  unauthenticated: 401,
  payment_required: 402,
  quota_exceeded: 429,
  rate_limited: 429,
  too_many_units: 413,
  unavailable: 503,
};

const INVALID_KEY: Record<string, string> = {
  malformed: "The API key is malformed (not a Tollgate key, or mistyped).",
  unknown: "The API key is not known.",
  revoked: "The API key has been revoked.",
  expired: "The API key has expired.",
};

const INVALID_TOKEN = { "www-authenticate": 'Bearer error="invalid_token"' };

/** Tollgate refuses longer keys as a bad request (its keys are 52 characters): malformed here. */
const MAX_KEY_LENGTH = 208;

interface ResolvedQuota {
  feature: string;
  meter: string;
  amount: number;
  /** Computed from the request (`amount` a function), rather than fixed by the route. */
  computed: boolean;
}

/**
 * The middleware's decision logic, bound to a client, a route's options and the framework's way of
 * reading a request header: `decide(ctx)` gives the decision — at once (no promise) on the warm path: a route without `consume` or `quota`
 * whose key was verified less than `keyCacheTtlMs` ago and whose `require` features are in the
 * entitlement cache — or as a promise. The promise rejects only with what the route's configuration
 * or Tollgate refuses (a `TollgateError`: an unknown feature, a wrong operator key): a bug to
 * surface, not a denial.
 */
export function createGate<Ctx>(
  client: Tollgate,
  options: GateOptions<Ctx>,
  header: HeaderReader<Ctx>,
): (ctx: Ctx) => GateDecision | Promise<GateDecision> {
  if (!client || typeof client.verifyKey !== "function") {
    throw new TypeError("tollgate(client, options): client must be a Tollgate instance");
  }
  const opts = options ?? {};
  const failMode = opts.failMode ?? client.failMode;
  if (failMode !== "open" && failMode !== "closed") {
    throw new TypeError('tollgate(): failMode must be "open" or "closed"');
  }
  const timeoutMs = opts.timeoutMs ?? client.timeoutMs;
  const quotas = opts.quota ?? [];
  for (const q of quotas) {
    if (!q || typeof q.feature !== "string" || typeof q.meter !== "string") {
      throw new TypeError("tollgate(): each quota needs a feature and a meter");
    }
  }
  const staticConsume = typeof opts.consume === "function" ? undefined : (opts.consume ?? []);
  const staticRequire = typeof opts.require === "function" ? undefined : (opts.require ?? []);
  const readKey = opts.key;
  const requiredItems = staticRequire?.map(asItem);
  // Known up front: nothing to consume or track, and nothing computed per request.
  const warmable = staticConsume?.length === 0 && quotas.length === 0 && staticRequire !== undefined;

  /** The decision for a valid key and its checks (sync: shared by both paths). */
  const decided = (
    verdict: ValidKey,
    results: CheckResult[],
    resolved: readonly ResolvedQuota[],
  ): GateDecision => {
    const rateHeaders = verdict.rateHeaders;
    let denied: CheckResult | undefined;
    for (const result of results) {
      if (!result.allowed && rank(result) < rank(denied)) denied = result;
    }
    if (denied) return denial(denied, verdict.plan, rateHeaders);
    let source: GateContext["source"] = verdict.source;
    for (const result of results) {
      if (result.source === "fail-open") source = "fail-open";
      else if (result.source === "tollgate" && source === "cache") source = "tollgate";
    }
    return allow(client, verdict, source, results, resolved);
  };

  // The catalog the quotas are held to is asked for now, so that the first requests rarely wait.
  if (quotas.length > 0) catalogLoad(client);

  const slow = async (ctx: Ctx, key: string): Promise<GateDecision> => {
    const consume = staticConsume ?? (await (opts.consume as (ctx: Ctx) => Awaitable<FeatureRequest[]>)(ctx));
    const required = staticRequire ?? (await (opts.require as (ctx: Ctx) => Awaitable<string[]>)(ctx));
    const resolved: ResolvedQuota[] = [];
    for (const q of quotas) {
      const amount = typeof q.amount === "function" ? await q.amount(ctx) : (q.amount ?? 1);
      if (typeof amount !== "number" || !Number.isFinite(amount) || amount < 0) {
        throw new TypeError(
          `tollgate(): the amount of quota ${q.feature} must be a number ≥ 0, got ${amount}`,
        );
      }
      resolved.push({ feature: q.feature, meter: q.meter, amount, computed: typeof q.amount === "function" });
    }
    // Tollgate's budget starts once the route's own callbacks have run.
    const started = Date.now();
    if (resolved.length > 0) {
      // Held to the catalog before anything is consumed. Waiting for it takes at most a quarter of
      // the budget; when Tollgate cannot say by then, the quotas go unchecked rather than refused.
      const known = catalogOf(client, Math.max(1, Math.floor(timeoutMs / 4)));
      const catalog = known instanceof Promise ? await known : known;
      if (catalog) {
        for (const q of resolved) checkQuota(catalog, q, q.amount, q.computed);
        // More units than one request may carry, computed from what the caller sent (a batch of
        // 5,000 texts): the caller's request is too large — a 413 for them, not a 500. Only once the
        // key is known good (a bad key is a 401 whatever the amount), and with nothing consumed.
        const tooMany = resolved.find(
          (q) => q.computed && catalog.meters.get(q.meter) === "count" && q.amount > MAX_COUNT_UNITS,
        );
        if (tooMany !== undefined) {
          const left = Math.max(1, timeoutMs - (Date.now() - started));
          const verdict = await client.verifyKey(key, { failMode, timeoutMs: left });
          if (!verdict.valid) return invalid(verdict);
          return reject(
            "too_many_units",
            `This request would use ${tooMany.amount} units of ${tooMany.feature}; one request may use at most ${MAX_COUNT_UNITS}. Split it into smaller requests.`,
            { feature: tooMany.feature, amount: tooMany.amount, max_amount: MAX_COUNT_UNITS },
          );
        }
      }
    }

    let verdict: KeyVerification;
    let results: CheckResult[] = [];
    if (consume.length > 0 || resolved.length > 0) {
      const features: FeatureRequest[] = [];
      for (const item of consume) features.push({ ...item, consume: true });
      for (const q of resolved) features.push({ feature: q.feature, amount: q.amount, consume: false });
      for (const feature of required) features.push({ feature, consume: false });
      const left = Math.max(1, timeoutMs - (Date.now() - started));
      verdict = await client.verifyKey(key, { features, failMode, timeoutMs: left });
      if (verdict.valid) results = verdict.checks?.results ?? [];
    } else {
      verdict = await client.verifyKey(key, { failMode, timeoutMs });
      if (verdict.valid && required.length > 0) {
        // From the entitlement cache when warm; a cold org is filled on the way, within what is left
        // of the budget.
        const left = Math.max(1, timeoutMs - (Date.now() - started));
        const many = await client.check(verdict.org_id, requiredItems ?? required.map(asItem), {
          consume: false,
          failMode,
          timeoutMs: left,
        });
        results = many.results;
      }
    }

    if (!verdict.valid) return invalid(verdict);
    return decided(verdict, results, resolved);
  };

  return (ctx) => {
    const key = readKey ? readKey(ctx) : keyFromHeaders(ctx, header);
    if (key !== undefined && key.length > MAX_KEY_LENGTH) {
      return reject("unauthenticated", INVALID_KEY.malformed as string, {}, INVALID_TOKEN);
    }
    if (key === undefined || key === "") {
      return reject(
        "unauthenticated",
        "No API key: send it as `Authorization: Bearer <key>` or in `X-API-Key`.",
        {},
        { "www-authenticate": "Bearer" },
      );
    }
    if (warmable) {
      // The warm path: a hash and a few Map lookups, no promise.
      const verdict = client.verifyKeyCached(key);
      if (verdict !== undefined) {
        const results = cachedChecks(client, verdict.org_id, staticRequire as string[]);
        if (results !== undefined) return decided(verdict, results, NO_QUOTAS);
      }
    }
    return slow(ctx, key);
  };
}

const NO_QUOTAS: readonly ResolvedQuota[] = [];
/** Shared by every warm request without required features: frozen, so no handler can change it. */
const NO_RESULTS: CheckResult[] = Object.freeze([]) as unknown as CheckResult[];

/** The answer to a key that is not valid (or could not be verified in time). */
function invalid(verdict: KeyVerification & { valid: false }): GateDecision {
  if (verdict.reason === "unavailable") {
    return unavailable(
      "Tollgate could not be reached in time to verify the API key; retry shortly.",
      verdict.error?.retryAfterMs,
    );
  }
  return reject(
    "unauthenticated",
    INVALID_KEY[verdict.reason] ?? "The API key is not valid.",
    {},
    INVALID_TOKEN,
  );
}

/** The cached answers of every required feature, or undefined when any is not cached. */
function cachedChecks(
  client: Tollgate,
  orgId: string,
  features: readonly string[],
): CheckResult[] | undefined {
  if (features.length === 0) return NO_RESULTS;
  const results: CheckResult[] = [];
  for (const feature of features) {
    const hit = client.checkCached(orgId, feature);
    if (hit === undefined) return undefined;
    results.push(hit);
  }
  return results;
}

/** Lets the request through: the handler's context, and what to do once it has answered. */
function allow(
  client: Tollgate,
  verdict: ValidKey,
  source: GateContext["source"],
  results: CheckResult[],
  resolved: readonly ResolvedQuota[],
): GateDecision {
  const orgId = verdict.org_id;
  if (resolved.length === 0) {
    // Nothing to track afterwards (a warm route, or one that only consumes): no closures to make.
    return {
      allowed: true,
      context: contextOf(verdict, source, results, noQuotaUsage),
      headers: successHeaders(verdict.rateHeaders),
      finish: nothingToFinish,
    };
  }
  let overrides: Map<string, number> | undefined;
  const context = contextOf(verdict, source, results, (feature, amount) => {
    const quota = resolved.find((q) => q.feature === feature);
    if (quota === undefined) return noQuotaUsage(feature);
    if (typeof amount !== "number" || !Number.isFinite(amount) || amount < 0) {
      throw new TypeError(`usage(): the amount must be a number ≥ 0, got ${amount}`);
    }
    const known = catalogs.get(client)?.catalog;
    if (known?.meters.get(quota.meter) === "count") checkCountUnits(`usage(): ${feature}`, amount);
    overrides ??= new Map();
    overrides.set(feature, amount);
  });
  let finished = false;
  return {
    allowed: true,
    context,
    headers: successHeaders(verdict.rateHeaders),
    finish(status) {
      if (finished) return;
      finished = true;
      if (status < 200 || status > 299) return;
      for (const q of resolved) {
        const amount = overrides?.get(q.feature) ?? q.amount;
        if (amount <= 0) continue;
        try {
          trackUnits(client, orgId, q.meter, amount);
        } catch (error) {
          // Only after shutdown(): the process is going away and this usage with it.
          console.warn(`@tollgate/sdk: usage of ${q.meter} for ${orgId} not tracked: ${String(error)}`);
        }
      }
    },
  };
}

/** What the handler sees. */
function contextOf(
  verdict: ValidKey,
  source: GateContext["source"],
  results: CheckResult[],
  usage: GateContext["usage"],
): GateContext {
  return {
    orgId: verdict.org_id,
    keyId: verdict.key_id,
    plan: verdict.plan,
    scopes: verdict.scopes,
    source,
    results,
    usage,
  };
}

/** `usage()` of a route without that quota. */
function noQuotaUsage(feature: string): never {
  throw new TypeError(`usage(): ${feature} is not a quota of this route`);
}

/** `finish()` of a decision with nothing to track. */
function nothingToFinish(_status: number): void {}

/** Whether a decision has anything to do once the handler answered (quotas to track). */
export function finishes(decision: GateDecision & { allowed: true }): boolean {
  return decision.finish !== nothingToFinish;
}

/** What the middleware needs of the catalog: every meter's aggregation, every feature's type and meter. */
interface Catalog {
  meters: Map<string, string>;
  features: Map<string, { type: string; meter: string | null }>;
}

/** The catalog per client, learned once from `GET /v1/plans` (it is global), again after a failure. */
interface CatalogState {
  catalog: Catalog | undefined;
  loading: Promise<Catalog | undefined> | undefined;
  /** After a failed load, not before this (ms). */
  retryAt: number;
}

const catalogs = new WeakMap<Tollgate, CatalogState>();

/** The catalog's state for a client, loading it unless known, under way, or failed less than 5 s ago. */
function catalogLoad(client: Tollgate): CatalogState {
  let state = catalogs.get(client);
  if (state === undefined) {
    state = { catalog: undefined, loading: undefined, retryAt: 0 };
    catalogs.set(client, state);
  }
  if (state.catalog !== undefined || state.loading !== undefined || state.retryAt > Date.now()) return state;
  const known = state;
  const failed = () => {
    known.loading = undefined;
    known.retryAt = Date.now() + 5000;
    return undefined;
  };
  known.loading = client.api
    .GET("/v1/plans")
    .then(({ data }) => {
      // An answer without both lists (an older Tollgate, a proxy's page) is no catalog.
      if (!Array.isArray(data?.meters) || !Array.isArray(data?.features)) return failed();
      known.catalog = {
        meters: new Map(data.meters.map((m) => [m.key, m.aggregation])),
        features: new Map(data.features.map((f) => [f.key, { type: f.type, meter: f.meter }])),
      };
      known.loading = undefined;
      return known.catalog;
    })
    .catch(failed);
  return known;
}

/**
 * The catalog: at once when known; otherwise the load under way (or a new one), waited for at most
 * `waitMs`. Undefined when Tollgate could not say in time: the request goes on.
 */
function catalogOf(client: Tollgate, waitMs: number): Catalog | Promise<Catalog | undefined> | undefined {
  const state = catalogLoad(client);
  if (state.catalog !== undefined || state.loading === undefined) return state.catalog;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(resolve, waitMs, undefined);
    unref(timer);
  });
  return Promise.race([state.loading, late]).finally(() => clearTimeout(timer));
}

/** A quota the catalog cannot honour is the route's bug: refused before anything is consumed. */
/**
 * Holds a quota to the catalog (a TypeError for the route's own mistakes). A whole amount past
 * MAX_COUNT_UNITS computed from the request is left to the caller's 413.
 */
function checkQuota(
  catalog: Catalog,
  quota: { feature: string; meter: string },
  amount: number,
  computed = false,
): void {
  const feature = catalog.features.get(quota.feature);
  if (feature !== undefined && feature.type !== "metered") {
    throw new TypeError(
      `tollgate(): quota ${quota.feature} is a ${feature.type} feature; only a metered feature can be a quota (take a limit with consume, list a boolean in require)`,
    );
  }
  if (feature?.meter != null && feature.meter !== quota.meter) {
    throw new TypeError(
      `tollgate(): quota ${quota.feature} is counted on meter ${feature.meter}, not ${quota.meter}: tracking on ${quota.meter} would never use it up`,
    );
  }
  if (catalog.meters.get(quota.meter) === "count" && !(computed && Number.isInteger(amount))) {
    checkCountUnits(`tollgate(): quota ${quota.feature}`, amount);
  }
}

/** On a count meter each unit is an event: a whole number, at most one batch per request. */
function checkCountUnits(what: string, amount: number): void {
  if (!Number.isInteger(amount) || amount > MAX_COUNT_UNITS) {
    throw new TypeError(
      `${what}: its meter counts events, one per unit, so the amount must be a whole number of at most ${MAX_COUNT_UNITS} (got ${amount}); larger quantities belong on a sum meter`,
    );
  }
}

/**
 * Tracks `amount` units of usage on a meter: a `count` meter counts events, so n units are n events
 * (of value 1); any other meter (`sum`) takes one event of value n. On a count meter n was held to
 * MAX_COUNT_UNITS at the request, unless the catalog was not known then (Tollgate unreachable): it
 * is counted right all the same. Should the catalog still not be known, a whole n up to 1,000 is
 * tracked as n events of value 1, which counts right either way.
 */
function trackUnits(client: Tollgate, orgId: string, meter: string, amount: number): void {
  const aggregation = catalogs.get(client)?.catalog?.meters.get(meter);
  const asEvents =
    Number.isInteger(amount) &&
    (aggregation === "count" || (aggregation === undefined && amount <= MAX_COUNT_UNITS));
  if (amount === 1 || !asEvents) {
    client.track({ orgId, meter, value: amount });
    return;
  }
  const timestamp = new Date();
  for (let i = 0; i < amount; i++) client.track({ orgId, meter, value: 1, timestamp });
}

/** `Authorization: Bearer <key>`, else `X-API-Key`. */
export function keyFromHeaders<Ctx>(ctx: Ctx, header: HeaderReader<Ctx>): string | undefined {
  const authorization = header(ctx, "authorization");
  if (authorization !== undefined) {
    const key = bearer(authorization);
    if (key !== undefined) return key;
  }
  const apiKey = header(ctx, "x-api-key")?.trim();
  return apiKey === "" ? undefined : apiKey;
}

/** The token of `Bearer <token>` (scheme case-insensitive, one token), or undefined. */
function bearer(value: string): string | undefined {
  const text = value.trim();
  if (text.length < 8 || text.slice(0, 6).toLowerCase() !== "bearer") return undefined;
  const token = text.slice(6);
  const start = token.search(/\S/);
  if (start < 1) return undefined;
  const key = token.slice(start);
  return /\s/.test(key) ? undefined : key;
}

const asItem = (feature: string): FeatureRequest => ({ feature });

/**
 * Which denial answers the request when several do: what only paying fixes (402) first, then a
 * used-up quota (429 until the period ends), then the rate (429 for seconds), then an outage (503).
 */
function rank(result: CheckResult | undefined): number {
  switch (result?.reason) {
    case undefined:
      return result === undefined ? 99 : 5;
    case "feature_not_in_plan":
    case "subscription_inactive":
    case "limit_exceeded":
      return 0;
    case "quota_exceeded":
      return 1;
    case "rate_limited":
      return 2;
    case "unavailable":
      return 3;
  }
}

const NO_HEADERS: Record<string, string> = Object.freeze({}) as Record<string, string>;

function successHeaders(rate: RateHeaders | undefined): Record<string, string> {
  if (rate === undefined) return NO_HEADERS;
  const headers: Record<string, string> = {};
  if (rate?.["ratelimit-policy"] !== undefined) headers["ratelimit-policy"] = rate["ratelimit-policy"];
  if (rate?.ratelimit !== undefined) headers.ratelimit = rate.ratelimit;
  return headers;
}

/** The answer to a denied check, by its reason. */
function denial(result: CheckResult, plan: string, rate: RateHeaders | undefined): GateDecision {
  const { feature } = result;
  const upgrade: Record<string, unknown> = {};
  if (result.upgrade_url !== undefined) upgrade.upgrade_url = result.upgrade_url;
  if (result.upgrade_plan !== undefined) upgrade.upgrade_plan = result.upgrade_plan;
  const upgradeHint = result.upgrade_plan ? ` The ${result.upgrade_plan} plan has more.` : "";
  const usage = {
    feature,
    used: result.used,
    limit: result.limit,
    remaining: result.remaining,
    resets_at: result.resets_at,
  };
  switch (result.reason) {
    case "feature_not_in_plan":
      return reject("payment_required", `The ${plan} plan does not include ${feature}.${upgradeHint}`, {
        feature,
        reason: result.reason,
        ...upgrade,
      });
    case "subscription_inactive":
      return reject(
        "payment_required",
        `The organization's subscription is not active (past due or canceled): ${feature} needs a paid plan in good standing.`,
        { feature, reason: result.reason, ...upgrade },
      );
    case "limit_exceeded":
      // An allocation (seats, projects): nothing frees it with time, so not a 429.
      return reject(
        "payment_required",
        `The ${plan} plan allows ${result.limit} ${feature}, and ${result.used} are in use.${upgradeHint}`,
        { ...usage, reason: result.reason, ...upgrade },
      );
    case "quota_exceeded": {
      const resetSeconds = secondsUntil(result.resets_at);
      const headers: Record<string, string> = {};
      const policy = `"${feature}";q=${result.limit ?? 0}`;
      const remaining = `"${feature}";r=${result.remaining ?? 0}${resetSeconds !== undefined ? `;t=${resetSeconds}` : ""}`;
      headers["ratelimit-policy"] = rate?.["ratelimit-policy"]
        ? `${policy}, ${rate["ratelimit-policy"]}`
        : policy;
      headers.ratelimit = rate?.ratelimit ? `${remaining}, ${rate.ratelimit}` : remaining;
      if (resetSeconds !== undefined) headers["retry-after"] = String(Math.max(1, resetSeconds));
      const until = result.resets_at ? ` until ${result.resets_at}` : "";
      return reject(
        "quota_exceeded",
        `Not enough ${feature} left for this request: ${result.used} of ${result.limit} used${until}.${upgradeHint}`,
        { ...usage, ...upgrade },
        headers,
      );
    }
    case "rate_limited": {
      const headers = { ...successHeaders(rate) };
      const retryMs = result.retry_after_ms ?? retryAfterOf(rate?.["retry-after"] ?? null);
      const retrySeconds = retryMs !== undefined ? Math.max(1, Math.ceil(retryMs / 1000)) : undefined;
      if (retrySeconds !== undefined) headers["retry-after"] = String(retrySeconds);
      else if (rate?.["retry-after"] !== undefined) headers["retry-after"] = rate["retry-after"];
      const when =
        retrySeconds !== undefined
          ? ` Retry in ${retrySeconds} s.`
          : " This request is larger than the whole limit.";
      return reject(
        "rate_limited",
        `The rate limit of ${feature} (${result.limit} per window) is reached.${when}${upgradeHint}`,
        {
          ...usage,
          ...(result.retry_after_ms !== undefined ? { retry_after_ms: result.retry_after_ms } : {}),
          ...upgrade,
        },
        headers,
      );
    }
    default:
      // "unavailable": Tollgate's counter store was unreachable and the feature fails closed, or
      // Tollgate itself could not be reached with failMode "closed".
      return unavailable(
        result.source === "fail-closed"
          ? `Tollgate could not be reached in time to check ${feature}; retry shortly.`
          : `${feature} cannot be checked right now; retry shortly.`,
        result.error?.retryAfterMs,
      );
  }
}

function unavailable(detail: string, retryAfterMs: number | undefined): GateDecision {
  const seconds =
    retryAfterMs !== undefined
      ? Math.max(1, Math.ceil(retryAfterMs / 1000))
      : UNAVAILABLE_RETRY_AFTER_SECONDS;
  return reject("unavailable", detail, {}, { "retry-after": String(seconds) });
}

function reject(
  code: GateProblem["code"],
  detail: string,
  extensions: Record<string, unknown>,
  headers: Record<string, string> = {},
): GateDecision {
  const status = STATUS[code];
  return {
    allowed: false,
    rejection: {
      status,
      headers,
      body: {
        type: `https://tollgate.dev/problems/${code.replaceAll("_", "-")}`,
        title: TITLES[code],
        status,
        detail,
        code,
        ...extensions,
      },
    },
  };
}

function secondsUntil(iso: string | null): number | undefined {
  if (!iso) return undefined;
  const at = Date.parse(iso);
  return Number.isNaN(at) ? undefined : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}
