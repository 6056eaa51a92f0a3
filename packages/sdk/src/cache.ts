import type { Transport } from "./http.js";
import type { CheckResult, FeatureType, Schemas } from "./types.js";

/**
 * The local entitlement cache: per org, the answers Tollgate gives to a non-consuming check of each
 * boolean and limit feature, so "does this plan have premium templates?" and "how many seats may it
 * have?" are a Map lookup. An org is filled with `GET /v1/orgs/{org}/entitlements` (the plan, and
 * every feature's type and limit) and one dry-run `POST /v1/check` of its boolean and limit features
 * (the exact answers, denial reasons and upgrade URLs included), and kept `ttlMs`.
 *
 * It is dropped for an org when the org's plan changes: on a `subscription.*` webhook, on
 * `invalidate()`, and whenever an answer from Tollgate shows a different plan or grant than the cached
 * one (a verification naming another plan, a boolean answered differently, another limit).
 */

interface OrgEntry {
  plan: string;
  expiresAt: number;
  /**
   * Past this, a cached answer triggers a background refill (the entry still serves meanwhile).
   * Pushed back after a refill fails.
   */
  refreshAt: number;
  /** Frozen answers with `source: "cache"`, shared by every hit: no allocation on a hit. */
  features: Map<string, CheckResult>;
  /** Limit and metered features' limits, to notice a plan change in any answer. */
  limits: Map<string, number | null>;
}

interface Load {
  promise: Promise<void>;
  /** Set by invalidate(): what the load read may be from before the change, so it is not stored. */
  stale: boolean;
  /**
   * Limit features a consuming check through this client changed while the load ran: its answers
   * for them may be from before, so they are not stored (the next read asks Tollgate).
   */
  dropped: Set<string>;
}

/**
 * After a background refresh fails (of an org here, of a key in the client), no other is started
 * for this long: during an outage, retrying on every read would be one request to Tollgate per
 * request served. The cached answer serves meanwhile, until it expires.
 */
export const BACKGROUND_RETRY_MS = 1000;

/** The dry-run check carries at most this many features (the API's limit). */
const CHECK_MAX_FEATURES = 20;
const DECIMAL = /^-?\d+(\.\d+)?$/;

export class EntitlementCache {
  /** Every feature's type, learned from entitlements and answers (the catalog is global). */
  readonly types = new Map<string, FeatureType>();
  private readonly orgs = new Map<string, OrgEntry>();
  private readonly loads = new Map<string, Load>();

  constructor(
    private readonly transport: Transport,
    readonly ttlMs: number,
    private readonly maxOrgs: number,
    private readonly timeoutMs: number,
  ) {}

  get enabled(): boolean {
    return this.ttlMs > 0;
  }

  /**
   * The cached answer for a boolean or limit feature (as a non-consuming check of 1 unit), or
   * undefined. No allocation, and no waiting: an entry in its last fifth is refilled in the background.
   */
  lookup(orgId: string, feature: string): CheckResult | undefined {
    const entry = this.orgs.get(orgId);
    if (entry === undefined) return undefined;
    const now = Date.now();
    if (entry.expiresAt <= now) return undefined;
    if (entry.refreshAt <= now) this.refreshSoon(orgId, entry);
    return entry.features.get(feature);
  }

  /**
   * The answer to a check of `feature` for `amount` units from the cache: a result, `null` when the
   * org is cached but this answer cannot be derived from it (ask Tollgate), or undefined when the org
   * is not cached (fill it first).
   */
  answer(orgId: string, feature: string, amount: number | string): CheckResult | null | undefined {
    const entry = this.orgs.get(orgId);
    if (entry === undefined) return undefined;
    const now = Date.now();
    if (entry.expiresAt <= now) return undefined;
    if (entry.refreshAt <= now) this.refreshSoon(orgId, entry);
    const cached = entry.features.get(feature);
    if (cached === undefined) return null;
    return derive(cached, amount) ?? null;
  }

  /** Whether the org has a fresh entry. */
  has(orgId: string): boolean {
    const entry = this.orgs.get(orgId);
    return entry !== undefined && entry.expiresAt > Date.now();
  }

  /** Fills the org (one load at a time per org, shared by every caller). */
  load(orgId: string): Promise<void> {
    const running = this.loads.get(orgId);
    if (running) return running.promise;
    const load: Load = { promise: Promise.resolve(), stale: false, dropped: new Set() };
    load.promise = this.fill(orgId, load).finally(() => {
      if (this.loads.get(orgId) === load) this.loads.delete(orgId);
    });
    this.loads.set(orgId, load);
    return load.promise;
  }

  /** Drops one org's entry (or every entry) and any fill under way for it. */
  invalidate(orgId?: string): void {
    if (orgId === undefined) {
      this.orgs.clear();
      for (const load of this.loads.values()) load.stale = true;
      this.loads.clear();
      return;
    }
    this.orgs.delete(orgId);
    const load = this.loads.get(orgId);
    if (load) {
      load.stale = true;
      this.loads.delete(orgId);
    }
  }

  /** An answer from Tollgate named the org's plan: drop the entry if it was filled for another. */
  noticePlan(orgId: string, plan: string): void {
    const entry = this.orgs.get(orgId);
    if (entry !== undefined && entry.plan !== plan) this.invalidate(orgId);
  }

  /**
   * Learns from an answer Tollgate gave for the org: feature types; a plan change (a boolean answered
   * differently from the cache, or another limit) drops the entry; a consuming check that changed an
   * allocation drops that feature's answer; a non-consuming single check of 1 unit is cached.
   */
  observe(
    orgId: string,
    results: readonly CheckResult[],
    consume: boolean,
    allowed: boolean,
    singleUnit: boolean,
  ): void {
    for (const r of results) if (r.type !== null) this.types.set(r.feature, r.type);
    const load = consume && allowed ? this.loads.get(orgId) : undefined;
    // Whether or not an entry is cached: a fill under way may have read the allocation before.
    if (load) for (const r of results) if (r.type === "limit") load.dropped.add(r.feature);
    const entry = this.orgs.get(orgId);
    if (entry === undefined || entry.expiresAt <= Date.now()) return;
    for (const r of results) {
      if (r.reason === "unavailable") continue;
      if (r.type === "boolean") {
        const cached = entry.features.get(r.feature);
        if (cached !== undefined && cached.allowed !== r.allowed) {
          this.invalidate(orgId);
          return;
        }
      } else if (r.type === "limit" || r.type === "metered") {
        const limit = entry.limits.get(r.feature);
        if (limit !== undefined && limit !== r.limit) {
          this.invalidate(orgId);
          return;
        }
      }
    }
    if (consume && allowed) {
      for (const r of results) if (r.type === "limit") entry.features.delete(r.feature);
    }
    const only = results.length === 1 ? results[0] : undefined;
    if (only && only.reason !== "unavailable") {
      if (only.type === "boolean" || (only.type === "limit" && !consume && singleUnit)) {
        entry.features.set(only.feature, frozen(only));
      }
    }
  }

  private refreshSoon(orgId: string, entry: OrgEntry): void {
    if (this.loads.has(orgId)) return;
    // Background refill: the current entry keeps serving; a failure leaves it to expire, and the
    // next attempt for BACKGROUND_RETRY_MS.
    this.load(orgId).catch(() => {
      if (this.orgs.get(orgId) === entry) entry.refreshAt = Date.now() + BACKGROUND_RETRY_MS;
    });
  }

  private async fill(orgId: string, load: Load): Promise<void> {
    const org = encodeURIComponent(orgId);
    const entitlements = await this.transport.send<Schemas["Entitlements"]>(
      "GET",
      `/v1/orgs/${org}/entitlements`,
      undefined,
      this.timeoutMs,
    );
    const cacheable: string[] = [];
    const limits = new Map<string, number | null>();
    for (const f of entitlements.body.features) {
      this.types.set(f.feature, f.type);
      if (f.type === "boolean" || f.type === "limit") cacheable.push(f.feature);
      if (f.type === "limit" || f.type === "metered") limits.set(f.feature, f.limit);
    }
    const chunks: string[][] = [];
    for (let i = 0; i < cacheable.length; i += CHECK_MAX_FEATURES) {
      chunks.push(cacheable.slice(i, i + CHECK_MAX_FEATURES));
    }
    const answers = await Promise.all(
      chunks.map((chunk) =>
        this.transport.send<{ allowed: boolean; results: Schemas["CheckResult"][] }>(
          "POST",
          "/v1/check",
          {
            org_id: orgId,
            features: chunk.map((feature) => ({ feature })),
            consume: false,
          } satisfies Schemas["CheckManyRequest"],
          this.timeoutMs,
        ),
      ),
    );
    const features = new Map<string, CheckResult>();
    for (const answer of answers) {
      for (const r of answer.body.results) {
        // A decision by policy (the counter store was away) is not the plan's answer: not cached.
        if (r.reason !== "unavailable") features.set(r.feature, frozen({ ...r, source: "cache" }));
      }
    }
    if (load.stale) return;
    for (const feature of load.dropped) features.delete(feature);
    const now = Date.now();
    this.orgs.delete(orgId);
    this.orgs.set(orgId, {
      plan: entitlements.body.plan,
      expiresAt: now + this.ttlMs,
      refreshAt: now + this.ttlMs * 0.8,
      features,
      limits,
    });
    for (const oldest of this.orgs.keys()) {
      if (this.orgs.size <= this.maxOrgs) break;
      this.orgs.delete(oldest);
    }
  }
}

function frozen(result: CheckResult | Schemas["CheckResult"]): CheckResult {
  const copy: CheckResult = { ...result, source: "cache" };
  delete copy.error;
  return Object.freeze(copy);
}

/**
 * A cached answer (a dry run of 1 unit) stands for `amount` units when the decision cannot differ:
 * booleans ignore the amount; a limit that allowed 1 allows any amount that still fits (or a
 * release), one that denied 1 denies any more. Anything else is asked of Tollgate.
 */
function derive(cached: CheckResult, amount: number | string): CheckResult | undefined {
  if (typeof amount === "number" ? !Number.isFinite(amount) : !DECIMAL.test(amount)) return undefined;
  if (cached.type === "boolean" || amount === 1) return cached;
  const units = Number(amount);
  if (!Number.isInteger(units)) return undefined;
  if (cached.allowed) {
    if (units <= 0 || cached.limit === null) return cached;
    return cached.used !== null && cached.used + units <= cached.limit ? cached : undefined;
  }
  return units >= 1 ? cached : undefined;
}
