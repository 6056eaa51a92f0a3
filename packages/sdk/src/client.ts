import createClient, { type Client } from "openapi-fetch";
import { BACKGROUND_RETRY_MS, EntitlementCache } from "./cache.js";
import { TollgateUnavailableError } from "./errors.js";
import { type FetchLike, Transport, timeoutSignal, unref } from "./http.js";
import type { paths } from "./schema.js";
import { sha256Key } from "./sha256.js";
import { type FlushResult, Tracker, type TrackStats } from "./tracker.js";
import type {
  CheckOptions,
  CheckResult,
  FailMode,
  FeatureRequest,
  InvalidKey,
  KeyVerification,
  MultiCheckResult,
  RateHeaders,
  Schemas,
  TollgateOptions,
  TrackEvent,
  ValidKey,
  VerifyKeyOptions,
} from "./types.js";
import { verifyWebhook, type WebhookEvent, type WebhookHeaders } from "./webhooks.js";

/** Revocation must take effect within 2 seconds: a verdict is never reused longer than this. */
const MAX_KEY_CACHE_TTL_MS = 2000;
const MAX_KEYS = 10_000;

/** Its times count from when the verification was sent: what Tollgate said is at least that old. */
interface KnownKey {
  /** Frozen, with `source: "cache"`: returned as is on a hit. */
  verdict: ValidKey;
  /** Reused until then. */
  freshUntil: number;
  /**
   * Past this (half the TTL), a hit also verifies the key again in the background. Pushed back
   * after that fails.
   */
  refreshAt: number;
  /** Kept until then for `failMode: "open"` while Tollgate is unreachable. */
  keepUntil: number;
}

/** A verification request: its number (in the order sent) and when it was sent. */
interface Sent {
  seq: number;
  at: number;
}

/** Verdicts dropped: after which request (its number), and when. */
interface Drop {
  after: number;
  at: number;
}

/**
 * The Tollgate client for a product's backend: may org X use feature Y now (`check`), org X used Y
 * (`track`), whose key is this (`verifyKey`), and the whole typed API (`api`).
 *
 * One instance per process: it holds the entitlement cache, the key cache and the event queue.
 * Call `shutdown()` before the process exits so queued events are sent.
 *
 * @example
 * const tollgate = new Tollgate({ baseUrl: "http://localhost:3000", apiKey: process.env.TOLLGATE_ADMIN_KEY! });
 * const { allowed, upgrade_url } = await tollgate.check(orgId, "kolekts");
 * tollgate.track({ orgId, meter: "api_calls" });
 */
export class Tollgate {
  /**
   * The whole API, typed from Tollgate's OpenAPI document (openapi-fetch): the operator key, the
   * base URL and a timeout (`apiTimeoutMs`, or the `signal` you pass) on every request.
   *
   * @example
   * const { data, error } = await tollgate.api.GET("/v1/orgs/{org}/entitlements", { params: { path: { org } } });
   */
  readonly api: Client<paths>;
  /** The default budget of `check()` and `verifyKey()`, in milliseconds. */
  readonly timeoutMs: number;
  /** What `check()` and `verifyKey()` answer by default when Tollgate cannot be reached. */
  readonly failMode: FailMode;

  private readonly transport: Transport;
  private readonly cache: EntitlementCache;
  private readonly tracker: Tracker;
  private readonly keyCacheTtlMs: number;
  /** How long a valid verdict is kept: fresh for keyCacheTtlMs, for fail-open answers for longer. */
  private readonly keepMs: number;
  private readonly keys = new Map<string, KnownKey>();
  /** Verifications (without checks) under way, by key hash: concurrent callers share one request. */
  private readonly verifying = new Map<string, Promise<KeyVerification>>();
  /** Verification requests sent so far: numbers them, to tell which came before a drop. */
  private sent = 0;
  /**
   * Verdicts this client dropped, each as the last request sent before: a key answered invalid (by
   * hash), an org's by `invalidate(orgId)`, all of them by `invalidate()`. A valid answer to a
   * request sent before a drop may predate the revocation (or plan change) behind it: it is not
   * cached. A drop is forgotten after `keepMs`, when such a verdict would have expired anyway.
   */
  private readonly droppedKeys = new Map<string, Drop>();
  private readonly droppedOrgs = new Map<string, Drop>();
  private droppedAll = 0;

  constructor(options: TollgateOptions) {
    if (!options || typeof options.apiKey !== "string" || options.apiKey === "") {
      throw new TypeError("new Tollgate(): apiKey (the operator key, TOLLGATE_ADMIN_KEY) is required");
    }
    const baseUrl = normalizeBaseUrl(options.baseUrl);
    this.timeoutMs = positive(options.timeoutMs, 2000);
    this.failMode = options.failMode ?? "closed";
    if (this.failMode !== "open" && this.failMode !== "closed") {
      throw new TypeError('new Tollgate(): failMode must be "open" or "closed"');
    }
    const cacheTtlMs = Math.max(0, options.cacheTtlMs ?? 30_000);
    this.keyCacheTtlMs = Math.min(MAX_KEY_CACHE_TTL_MS, Math.max(0, options.keyCacheTtlMs ?? 500));
    this.keepMs = Math.max(cacheTtlMs, this.keyCacheTtlMs);
    this.transport = new Transport(baseUrl, options.apiKey, options.fetch);
    this.cache = new EntitlementCache(
      this.transport,
      cacheTtlMs,
      positive(options.cacheMaxOrgs, 10_000),
      this.timeoutMs,
    );
    this.tracker = new Tracker(this.transport, options.track);

    const apiTimeoutMs = positive(options.apiTimeoutMs, 10_000);
    const baseFetch: FetchLike = options.fetch ?? ((input, init) => fetch(input, init));
    this.api = createClient<paths>({
      baseUrl,
      headers: { authorization: `Bearer ${options.apiKey}` },
      fetch: (request: Request) =>
        baseFetch(request, { signal: timeoutSignal(apiTimeoutMs, request.signal) }),
    });
  }

  /**
   * May the org use a feature now? Consumes `amount` (default 1) unless `consume: false`.
   *
   * - A denial is an answer (`allowed: false` with `reason`, usage, limit, `upgrade_url`), not an error.
   * - Boolean features, and limit features with `consume: false`, are answered from the local cache
   *   (filled per org, `cacheTtlMs`) without a request; metered and rate features, consuming limit
   *   checks and calls with an `idempotencyKey` always ask Tollgate.
   * - When Tollgate cannot answer within `timeoutMs` (timeout, network error, 408, 429, 5xx), the
   *   promise resolves by `failMode`: `allowed: true` (`source: "fail-open"`) or `allowed: false`
   *   with reason `unavailable` (`source: "fail-closed"`), and `error` says why. It never rejects
   *   for those.
   * - It rejects with a {@link TollgateError} for requests Tollgate refuses (unknown org or feature,
   *   bad amount, idempotency conflict).
   */
  check(orgId: string, feature: string, options?: CheckOptions): Promise<CheckResult>;
  /**
   * Several features at once: all allowed (and consumed) or none, results in request order.
   * Answered from the cache only when every feature could be on its own.
   */
  check(
    orgId: string,
    features: readonly FeatureRequest[],
    options?: Omit<CheckOptions, "amount">,
  ): Promise<MultiCheckResult>;
  check(
    orgId: string,
    request: string | readonly FeatureRequest[],
    options: CheckOptions = {},
  ): Promise<CheckResult | MultiCheckResult> {
    return typeof request === "string"
      ? this.checkOne(orgId, request, options)
      : this.checkMany(orgId, request, options);
  }

  /**
   * The cached answer for a boolean or limit feature (as a non-consuming check of 1 unit), or
   * undefined when the org is not in the cache (or has expired). Never waits for a request: a Map
   * lookup, for hot paths. Fill an org with `preload()` or any `check()`; an org read in the last
   * fifth of `cacheTtlMs` is refilled in the background, as `check()` does.
   */
  checkCached(orgId: string, feature: string): CheckResult | undefined {
    return this.cache.lookup(orgId, feature);
  }

  /**
   * The verdict of a key verified valid less than `keyCacheTtlMs` ago (counted from when the
   * verification was sent), or undefined: the part of `verifyKey()` that needs no I/O (a hash and a
   * Map lookup), for hot paths such as the middleware.
   * Past half the TTL, the key is verified again in the background, as `verifyKey()` does.
   */
  verifyKeyCached(key: string): ValidKey | undefined {
    const hash = sha256Key(key);
    const known = this.keys.get(hash);
    if (known === undefined) return undefined;
    const now = Date.now();
    if (known.freshUntil <= now) return undefined;
    if (known.refreshAt <= now) this.refreshKey(key, hash, known);
    return known.verdict;
  }

  /**
   * Fills the entitlement cache for an org now (two requests), e.g. when a session starts. Rejects
   * like the API does (TollgateUnavailableError, TollgateError).
   */
  async preload(orgId: string): Promise<void> {
    if (!this.cache.enabled) return;
    this.cache.invalidate(orgId);
    await this.cache.load(orgId);
  }

  /**
   * Drops the cached entitlements (and key verdicts) of one org, or of every org: the next check
   * asks Tollgate again. Call it when you change an org's plan yourself.
   */
  invalidate(orgId?: string): void {
    this.cache.invalidate(orgId);
    // Verifications under way may answer as before the change: later callers start new ones.
    this.verifying.clear();
    if (orgId === undefined) {
      this.keys.clear();
      this.droppedAll = this.sent;
      this.droppedKeys.clear();
      this.droppedOrgs.clear();
      return;
    }
    this.drop(this.droppedOrgs, orgId);
    for (const [hash, known] of this.keys) if (known.verdict.org_id === orgId) this.keys.delete(hash);
  }

  /**
   * Verifies a webhook from Tollgate (Standard Webhooks signature and timestamp) and returns the
   * event. A `subscription.*` event drops the org's cached entitlements, so a plan change is seen at
   * once. Throws {@link TollgateWebhookError} when it does not verify (answer 400).
   *
   * @param rawBody the request body exactly as received
   * @param headers the request's headers (`Headers` or a plain record)
   * @param secret the endpoint's signing secret (`whsec_…`)
   */
  handleWebhook(rawBody: string | Uint8Array, headers: WebhookHeaders, secret: string): WebhookEvent {
    const event = verifyWebhook(rawBody, headers, secret);
    if (event.type.startsWith("subscription.")) {
      const org = event.data.org_id;
      this.invalidate(typeof org === "string" ? org : undefined);
    }
    return event;
  }

  /**
   * Records usage: queues the event and returns its id at once (unique unless you give one).
   * Events are sent in the background in batches, retried with backoff while Tollgate is away, and
   * counted once each however often they are sent. See {@link TrackOptions}.
   */
  track(event: TrackEvent): string {
    return this.tracker.track(event);
  }

  /**
   * Sends every event tracked so far. Resolves when each was delivered, refused by Tollgate, or its
   * delivery failed `maxAttempts` times (`pending` counts those: they stay queued).
   */
  flush(): Promise<FlushResult> {
    return this.tracker.flush();
  }

  /** Stops the background timer and flushes. `track()` throws afterwards. */
  shutdown(): Promise<FlushResult> {
    return this.tracker.shutdown();
  }

  /** Counters of `track()`: tracked, accepted, duplicates, rejected, dropped, requests, queued. */
  get stats(): TrackStats {
    return this.tracker.stats;
  }

  /**
   * Verifies an org's API key (`tg_…`) that reached your product, and optionally checks `feature`
   * or `features` for the key's org in the same round trip (`POST /v1/keys/verify`).
   *
   * A valid verdict (org, key id, scopes, plan) is reused for `keyCacheTtlMs` (default 500 ms, at
   * most 2 s, counted from when its verification was sent) without a request, unless this client
   * has seen the key invalid since; the checks are not cached, except boolean and limit reads the
   * entitlement cache answers. An invalid key is `{valid: false, reason}` (`malformed`, `unknown`,
   * `revoked`, `expired`). When Tollgate cannot be reached: with `failMode: "closed"`, `{valid:
   * false, reason: "unavailable"}`; with `"open"`, a key verified valid within the last `cacheTtlMs`
   * stays valid (`source: "fail-open"`, its checks allowed) and any other key is refused as closed.
   */
  async verifyKey(key: string, options: VerifyKeyOptions = {}): Promise<KeyVerification> {
    const failMode = options.failMode ?? this.failMode;
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const hash = sha256Key(key);
    const known = this.keys.get(hash);
    const wantsChecks = options.feature !== undefined || options.features !== undefined;
    const now = Date.now();
    if (known !== undefined && known.freshUntil > now) {
      if (!wantsChecks) {
        // Verified again ahead of expiry, so a steady stream of requests never waits on Tollgate.
        if (known.refreshAt <= now) this.refreshKey(key, hash, known);
        return known.verdict;
      }
      const local = this.checksFromCache(known.verdict.org_id, options);
      if (local) return { ...known.verdict, ...local, source: "cache" };
    }
    const body: Schemas["KeyVerifyRequest"] = { key };
    if (options.feature !== undefined) body.feature = options.feature;
    if (options.amount !== undefined) body.amount = options.amount;
    if (options.features !== undefined) body.features = options.features.map(featureBody);
    if (options.consume !== undefined) body.consume = options.consume;
    if (options.idempotencyKey !== undefined) body.idempotency_key = options.idempotencyKey;
    try {
      if (!wantsChecks && options.signal === undefined) {
        // Within this caller's own budget, whoever started the request: past it, a timeout.
        return { ...(await within(this.verifyShared(key, hash, timeoutMs), timeoutMs)) };
      }
      const sent = this.send();
      const answer = await this.transport.send<Schemas["KeyVerification"]>(
        "POST",
        "/v1/keys/verify",
        body,
        timeoutMs,
        options.signal,
      );
      return this.verified(hash, answer.body, options, answer.headers, sent);
    } catch (error) {
      if (!(error instanceof TollgateUnavailableError)) throw error;
      // The verdict as it stands now: one dropped meanwhile (revoked, invalidated) lets nothing through.
      return this.verifyFailed(this.keys.get(hash) === known ? known : undefined, options, failMode, error);
    }
  }

  /**
   * One `POST /v1/keys/verify {key}` at a time per key: concurrent callers share its answer, which
   * is cached even if they have all stopped waiting. It gets the client's budget (or the first
   * caller's, when longer), so a caller with a short one does not cut it short for the others.
   */
  private verifyShared(key: string, hash: string, timeoutMs: number): Promise<KeyVerification> {
    const running = this.verifying.get(hash);
    if (running !== undefined) return running;
    const sent = this.send();
    const started = this.transport
      .send<Schemas["KeyVerification"]>(
        "POST",
        "/v1/keys/verify",
        { key },
        Math.max(timeoutMs, this.timeoutMs),
      )
      .then((answer) => this.verified(hash, answer.body, {}, answer.headers, sent));
    this.verifying.set(hash, started);
    const done = () => {
      if (this.verifying.get(hash) === started) this.verifying.delete(hash);
    };
    started.then(done, done);
    return started;
  }

  /**
   * Verifies a cached key again in the background. A failure leaves the verdict to expire, and the
   * next attempt for BACKGROUND_RETRY_MS.
   */
  private refreshKey(key: string, hash: string, known: KnownKey): void {
    if (this.verifying.has(hash)) return;
    this.verifyShared(key, hash, this.timeoutMs).catch(() => {
      if (this.keys.get(hash) === known) known.refreshAt = Date.now() + BACKGROUND_RETRY_MS;
    });
  }

  private async checkOne(orgId: string, feature: string, options: CheckOptions): Promise<CheckResult> {
    const consume = options.consume ?? true;
    const amount = options.amount ?? 1;
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const started = Date.now();
    try {
      if (this.cache.enabled && options.idempotencyKey === undefined) {
        let hit = this.fromCache(orgId, feature, amount, consume);
        if (hit === undefined) {
          await within(this.cache.load(orgId), timeoutMs, options.signal);
          hit = this.fromCache(orgId, feature, amount, consume);
        }
        if (hit) return hit;
      }
      const body: Schemas["CheckRequest"] = { org_id: orgId, feature };
      if (options.amount !== undefined) body.amount = options.amount;
      if (options.consume !== undefined) body.consume = options.consume;
      if (options.idempotencyKey !== undefined) body.idempotency_key = options.idempotencyKey;
      const answer = await this.transport.send<Schemas["CheckResult"]>(
        "POST",
        "/v1/check",
        body,
        remaining(started, timeoutMs),
        options.signal,
      );
      const result: CheckResult = { ...answer.body, source: "tollgate" };
      this.cache.observe(orgId, [result], consume, result.allowed, isOne(amount));
      return result;
    } catch (error) {
      if (error instanceof TollgateUnavailableError) {
        return this.failed(feature, options.failMode ?? this.failMode, error);
      }
      throw error;
    }
  }

  private async checkMany(
    orgId: string,
    items: readonly FeatureRequest[],
    options: CheckOptions,
  ): Promise<MultiCheckResult> {
    if (!Array.isArray(items) || items.length === 0) {
      throw new TypeError("check(): give a feature, or a non-empty list of features");
    }
    const consume = options.consume ?? true;
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const started = Date.now();
    try {
      if (this.cache.enabled && options.idempotencyKey === undefined) {
        let hit = this.manyFromCache(orgId, items, consume);
        if (hit === undefined) {
          await within(this.cache.load(orgId), timeoutMs, options.signal);
          hit = this.manyFromCache(orgId, items, consume);
        }
        if (hit) return hit;
      }
      const body: Schemas["CheckManyRequest"] = { org_id: orgId, features: items.map(featureBody) };
      if (options.consume !== undefined) body.consume = options.consume;
      if (options.idempotencyKey !== undefined) body.idempotency_key = options.idempotencyKey;
      const answer = await this.transport.send<{ allowed: boolean; results: Schemas["CheckResult"][] }>(
        "POST",
        "/v1/check",
        body,
        remaining(started, timeoutMs),
        options.signal,
      );
      const results = answer.body.results.map((r): CheckResult => ({ ...r, source: "tollgate" }));
      this.cache.observe(orgId, results, anyConsumed(items, consume), answer.body.allowed, false);
      return { allowed: answer.body.allowed, results, source: "tollgate" };
    } catch (error) {
      if (error instanceof TollgateUnavailableError) {
        const failMode = options.failMode ?? this.failMode;
        return {
          allowed: failMode === "open",
          results: items.map((item) => this.failed(item.feature, failMode, error)),
          source: failMode === "open" ? "fail-open" : "fail-closed",
          error,
        };
      }
      throw error;
    }
  }

  /**
   * The cache's answer: a result, `null` when it must come from Tollgate (not a cacheable check, or
   * not derivable), undefined when the org must be filled first.
   */
  private fromCache(
    orgId: string,
    feature: string,
    amount: number | string,
    consume: boolean,
  ): CheckResult | null | undefined {
    const type = this.cache.types.get(feature);
    if (type !== undefined && type !== "boolean" && (type !== "limit" || consume)) return null;
    const hit = this.cache.answer(orgId, feature, amount);
    if (hit === undefined || hit === null) return hit;
    return hit.type === "limit" && consume ? null : hit;
  }

  private manyFromCache(
    orgId: string,
    items: readonly FeatureRequest[],
    consume: boolean,
  ): MultiCheckResult | null | undefined {
    const results: CheckResult[] = [];
    let fill = false;
    for (let i = 0; i < items.length; i++) {
      const item = items[i] as FeatureRequest;
      // A feature named twice is applied twice in one step: only Tollgate knows the combined answer.
      for (let j = 0; j < i; j++) if ((items[j] as FeatureRequest).feature === item.feature) return null;
      const hit = this.fromCache(orgId, item.feature, item.amount ?? 1, item.consume ?? consume);
      if (hit === null) return null;
      if (hit === undefined) fill = true;
      else results.push(hit);
    }
    if (fill) return undefined;
    return { allowed: results.every((r) => r.allowed), results, source: "cache" };
  }

  private failed(feature: string, failMode: FailMode, error: TollgateUnavailableError): CheckResult {
    const open = failMode === "open";
    return {
      allowed: open,
      feature,
      type: this.cache.types.get(feature) ?? null,
      limit: null,
      used: null,
      remaining: null,
      resets_at: null,
      ...(open ? {} : { reason: "unavailable" as const }),
      source: open ? "fail-open" : "fail-closed",
      error,
    };
  }

  /** The checks of a verification, when the entitlement cache can answer them all without a fill. */
  private checksFromCache(
    orgId: string,
    options: VerifyKeyOptions,
  ): { check: CheckResult } | { checks: MultiCheckResult } | undefined {
    if (!this.cache.enabled || options.idempotencyKey !== undefined || !this.cache.has(orgId))
      return undefined;
    const consume = options.consume ?? true;
    if (options.feature !== undefined) {
      if (options.features !== undefined) return undefined;
      const hit = this.fromCache(orgId, options.feature, options.amount ?? 1, consume);
      return hit ? { check: hit } : undefined;
    }
    if (options.features === undefined || options.amount !== undefined) return undefined;
    const hit = this.manyFromCache(orgId, options.features, consume);
    return hit ? { checks: hit } : undefined;
  }

  /** The result of a verification; a valid verdict is cached unless outdated. */
  private verified(
    hash: string,
    body: Schemas["KeyVerification"],
    options: VerifyKeyOptions,
    headers: Headers,
    sent: Sent,
  ): KeyVerification {
    if (!body.valid) {
      this.keys.delete(hash);
      // A key that was valid and no longer is: answers sent before this one are outdated, and so is
      // a shared verification still under way (later callers start a new one). A malformed or
      // unknown key never was valid: nothing to guard, and junk keys must not push real drops out.
      if (body.reason === "revoked" || body.reason === "expired") {
        this.drop(this.droppedKeys, hash);
        this.verifying.delete(hash);
      }
      return { valid: false, reason: body.reason, source: "tollgate" };
    }
    this.cache.noticePlan(body.org_id, body.plan);
    const consume = options.consume ?? true;
    const result: ValidKey = {
      valid: true,
      org_id: body.org_id,
      key_id: body.key_id,
      scopes: body.scopes,
      plan: body.plan,
      source: "tollgate",
    };
    if (body.check) {
      const check: CheckResult = { ...body.check, source: "tollgate" };
      this.cache.observe(body.org_id, [check], consume, check.allowed, isOne(options.amount ?? 1));
      result.check = check;
    }
    if (body.checks) {
      const results = body.checks.results.map((r): CheckResult => ({ ...r, source: "tollgate" }));
      const consumed = anyConsumed(options.features ?? [], consume);
      this.cache.observe(body.org_id, results, consumed, body.checks.allowed, false);
      result.checks = { allowed: body.checks.allowed, results, source: "tollgate" };
    }
    if (body.check || body.checks) {
      const rateHeaders = rateHeadersOf(headers);
      if (rateHeaders) result.rateHeaders = rateHeaders;
    }
    // Kept for fail-open answers even when not reused (keyCacheTtlMs 0); fresh for keyCacheTtlMs.
    if (this.cacheable(hash, body.org_id, sent)) {
      const verdict: ValidKey = Object.freeze({
        valid: true as const,
        org_id: body.org_id,
        key_id: body.key_id,
        scopes: Object.freeze([...body.scopes]) as string[],
        plan: body.plan,
        source: "cache" as const,
      });
      this.keys.delete(hash);
      // Verified again past half the TTL, but not sooner than a quarter TTL after this answer: when
      // Tollgate answers slowly, back-to-back refreshes would not make the verdict any fresher.
      this.keys.set(hash, {
        verdict,
        freshUntil: sent.at + this.keyCacheTtlMs,
        refreshAt: Math.max(sent.at + this.keyCacheTtlMs / 2, Date.now() + this.keyCacheTtlMs / 4),
        keepUntil: sent.at + this.keepMs,
      });
      for (const oldest of this.keys.keys()) {
        if (this.keys.size <= MAX_KEYS) break;
        this.keys.delete(oldest);
      }
    }
    return result;
  }

  /** Numbers a verification request about to be sent. */
  private send(): Sent {
    this.sent++;
    return { seq: this.sent, at: Date.now() };
  }

  /**
   * Whether a valid verdict from `sent` may be cached: not when this client has since seen the key
   * invalid or dropped its org's verdicts (Tollgate may have answered before the change), nor over a
   * verdict from a later request, nor when it would be expired already.
   */
  private cacheable(hash: string, orgId: string, sent: Sent): boolean {
    if (sent.at + this.keepMs <= Date.now() || sent.seq <= this.droppedAll) return false;
    if (sent.seq <= (this.droppedKeys.get(hash)?.after ?? 0)) return false;
    if (sent.seq <= (this.droppedOrgs.get(orgId)?.after ?? 0)) return false;
    const known = this.keys.get(hash);
    return known === undefined || known.freshUntil <= sent.at + this.keyCacheTtlMs;
  }

  /** Records a drop after the requests sent so far; forgets drops too old to matter (or too many). */
  private drop(drops: Map<string, Drop>, id: string): void {
    const now = Date.now();
    drops.delete(id);
    drops.set(id, { after: this.sent, at: now });
    for (const [oldest, { at }] of drops) {
      if (at + this.keepMs > now && drops.size <= MAX_KEYS) break;
      drops.delete(oldest);
    }
  }

  private verifyFailed(
    known: KnownKey | undefined,
    options: VerifyKeyOptions,
    failMode: FailMode,
    error: TollgateUnavailableError,
  ): KeyVerification {
    if (failMode === "open" && known !== undefined && known.keepUntil > Date.now()) {
      const { verdict } = known;
      const result: ValidKey = {
        valid: true,
        org_id: verdict.org_id,
        key_id: verdict.key_id,
        scopes: verdict.scopes,
        plan: verdict.plan,
        source: "fail-open",
        error,
      };
      if (options.feature !== undefined) result.check = this.failed(options.feature, "open", error);
      if (options.features !== undefined) {
        result.checks = {
          allowed: true,
          results: options.features.map((f) => this.failed(f.feature, "open", error)),
          source: "fail-open",
          error,
        };
      }
      return result;
    }
    const closed: InvalidKey = { valid: false, reason: "unavailable", source: "fail-closed", error };
    return closed;
  }
}

function featureBody(item: FeatureRequest): { feature: string; amount?: number | string; consume?: boolean } {
  const body: { feature: string; amount?: number | string; consume?: boolean } = { feature: item.feature };
  if (item.amount !== undefined) body.amount = item.amount;
  if (item.consume !== undefined) body.consume = item.consume;
  return body;
}

/** Whether any item of a multi-feature call is consumed (each item's own flag, else the call's). */
function anyConsumed(items: readonly FeatureRequest[], consume: boolean): boolean {
  if (items.length === 0) return consume;
  return items.some((item) => item.consume ?? consume);
}

const RATE_HEADERS = ["ratelimit", "ratelimit-policy", "retry-after"] as const;

/** Tollgate's rate-limit headers, when it sent any. */
function rateHeadersOf(headers: Headers): RateHeaders | undefined {
  let found: RateHeaders | undefined;
  for (const name of RATE_HEADERS) {
    const value = headers.get(name);
    if (value !== null) {
      found ??= {};
      found[name] = value;
    }
  }
  return found;
}

function isOne(amount: number | string): boolean {
  return amount === 1 || amount === "1";
}

/**
 * Waits for work other callers may share (a cache fill, a key's verification) within this caller's
 * budget and signal: past the budget, a timeout, as from a request of its own. The work goes on.
 */
function within<T>(promise: Promise<T>, timeoutMs: number, signal?: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      reject(new TollgateUnavailableError("timeout", `Tollgate did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    unref(timer);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}

/** What is left of a call's budget; a spent budget is a timeout. */
function remaining(started: number, timeoutMs: number): number {
  const left = timeoutMs - (Date.now() - started);
  if (left <= 0)
    throw new TollgateUnavailableError("timeout", `Tollgate did not answer within ${timeoutMs} ms`);
  return left;
}

function positive(value: number | undefined, fallback: number): number {
  return value !== undefined && Number.isFinite(value) && value > 0 ? value : fallback;
}

function normalizeBaseUrl(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new TypeError(`new Tollgate(): baseUrl must be an absolute URL, got ${JSON.stringify(value)}`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError("new Tollgate(): baseUrl must be http or https");
  }
  return value.replace(/\/+$/, "");
}
