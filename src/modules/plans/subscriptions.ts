import { and, eq, isNull, ne, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { orgs, type SubscriptionStatus, subscriptions } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { newId } from "../../lib/ids.js";
import { recordAudit } from "../audit/service.js";
import type { Caller } from "../auth/caller.js";
import { emitSubscriptionEvent } from "../billing/events.js";
import type { Interval, Plan } from "../catalog/schema.js";
import { apiRateKey, rateKey } from "../metering/keys.js";
import { type Period, periodAt, usagePeriodAt } from "./periods.js";

/**
 * Every org has one subscription: created with the org on the catalog's default plan, changed by
 * the operator here (checkout, proration and invoices come with billing). The hot path reads it
 * through an in-process cache that every change invalidates in every process.
 */

type SubscriptionRow = typeof subscriptions.$inferSelect;

/** What the hot path needs about an org's subscription, cached per process. */
export interface OrgPlan {
  orgId: string;
  subscriptionId: string;
  planKey: string;
  planVersion: number;
  plan: Plan;
  interval: Interval;
  status: SubscriptionStatus;
  anchorMs: number;
  trialEndsMs: number | null;
  /** past_due: when the dunning grace period ends. */
  graceEndsMs: number | null;
  /** Whether the subscription's current state grants the plan's entitlements. */
  entitled: boolean;
  /**
   * The usage period (monthly from the anchor; see usagePeriodAt) last computed, reused until it
   * ends. Metered quotas, counters and rollups are per usage period.
   */
  period: Period;
}

/** Carries an org id whose subscription (or existence) changed to every process. */
export const SUBSCRIPTION_CHANNEL = "subscriptions.changed";

/** A cached subscription is re-read after this long even if no change message arrived. */
const CACHE_TTL_MS = 10_000;
const MAX_ENTRIES = 50_000;

/** The default plan's interval: monthly when it has a monthly price. */
export function defaultInterval(plan: Plan): Interval {
  return plan.price.month !== undefined ? "month" : "year";
}

/** The subscription row a new org starts with: the default plan, a trial if the plan has one. */
export function defaultSubscription(deps: Deps, orgId: string, now: Date): typeof subscriptions.$inferInsert {
  const current = deps.plans.current(deps.catalog.default_plan);
  if (!current) throw new Error(`default plan ${deps.catalog.default_plan} has no version`);
  const trialDays = current.plan.trial_days;
  const interval = defaultInterval(current.plan);
  return {
    id: newId("subscription"),
    orgId,
    planKey: current.plan.key,
    planVersion: current.version,
    interval,
    status: trialDays > 0 ? "trialing" : "active",
    anchorAt: now,
    trialEndsAt: trialDays > 0 ? new Date(now.getTime() + trialDays * 86_400_000) : null,
    billedThrough: now,
    nextBillingAt: new Date(periodAt(now.getTime(), interval, now.getTime()).endMs),
    createdAt: now,
    updatedAt: now,
  };
}

/** Inserts a new org's subscription in the org's own transaction. */
export async function insertDefaultSubscription(tx: Database, deps: Deps, orgId: string, now: Date) {
  // Its history (subscription_history) starts here, written by the table's trigger.
  await tx.insert(subscriptions).values(defaultSubscription(deps, orgId, now));
}

/**
 * Active and trialing subscriptions grant their plan; a canceled one grants the default plan (the hot
 * path swaps it in); past_due keeps the plan during the dunning grace period, then grants nothing paid.
 */
export function isEntitled(
  status: SubscriptionStatus,
  trialEndsMs: number | null,
  nowMs: number,
  graceEndsMs: number | null = null,
): boolean {
  if (status === "active" || status === "canceled") return true;
  if (status === "trialing") return trialEndsMs === null || nowMs < trialEndsMs;
  return graceEndsMs !== null && nowMs < graceEndsMs;
}

/** When a past_due subscription's grace ends: `grace_days` (default: the last retry) after it went past due. */
export function graceEndsAt(deps: Deps, pastDueSince: Date | null): number | null {
  if (pastDueSince === null) return null;
  const { retry_days: retries, grace_days: grace } = deps.catalog.dunning;
  const days = grace ?? retries[retries.length - 1] ?? 0;
  return pastDueSince.getTime() + days * 86_400_000;
}

export function subscriptionOut(row: SubscriptionRow, plan: Plan, nowMs: number) {
  const period = periodAt(row.anchorAt.getTime(), row.interval, nowMs);
  const usage = usagePeriodAt(row.anchorAt.getTime(), nowMs);
  return {
    id: row.id,
    org_id: row.orgId,
    plan: row.planKey,
    plan_name: plan.name,
    plan_version: row.planVersion,
    interval: row.interval,
    status: row.status,
    price: plan.price[row.interval] ?? null,
    current_period_start: new Date(period.startMs).toISOString(),
    current_period_end: new Date(period.endMs).toISOString(),
    usage_period_start: new Date(usage.startMs).toISOString(),
    usage_period_end: new Date(usage.endMs).toISOString(),
    anchor_at: row.anchorAt.toISOString(),
    trial_ends_at: row.trialEndsAt?.toISOString() ?? null,
    cancel_at_period_end: row.cancelAtPeriodEnd,
    canceled_at: row.canceledAt?.toISOString() ?? null,
    pending_change:
      row.pendingPlanKey !== null && row.pendingPlanVersion !== null
        ? {
            plan: row.pendingPlanKey,
            plan_version: row.pendingPlanVersion,
            interval: row.pendingInterval ?? row.interval,
            effective_at: (row.nextBillingAt ?? new Date(period.endMs)).toISOString(),
          }
        : null,
    created_at: row.createdAt.toISOString(),
    updated_at: row.updatedAt.toISOString(),
  };
}

/**
 * Locks a subscription row in `tx` and tells whether it is still at the revision it was read (and
 * priced) at. Every update bumps the revision (a trigger), so false means someone changed it since;
 * with `skipLocked`, also that another process holds it now.
 */
export async function lockAtRevision(
  tx: Database,
  sub: Pick<SubscriptionRow, "id" | "revision">,
  options: { skipLocked?: boolean } = {},
): Promise<boolean> {
  const query = tx
    .select({ revision: subscriptions.revision })
    .from(subscriptions)
    .where(eq(subscriptions.id, sub.id));
  const [locked] = await (options.skipLocked
    ? query.for("update", { skipLocked: true })
    : query.for("update"));
  return locked?.revision === sub.revision;
}

/** The org's subscription row and its plan version; 404 for an unknown or deleted org. */
export async function getSubscription(
  deps: Deps,
  orgId: string,
): Promise<{ row: SubscriptionRow; plan: Plan }> {
  const [row] = await deps.database.db
    .select({ sub: subscriptions })
    .from(subscriptions)
    .innerJoin(orgs, eq(orgs.id, subscriptions.orgId))
    .where(and(eq(subscriptions.orgId, orgId), isNull(orgs.deletedAt)));
  if (!row) throw new AppError("not_found", `No organization ${orgId}.`);
  const plan = await deps.plans.load(row.sub.planKey, row.sub.planVersion);
  if (!plan) throw new Error(`plan ${row.sub.planKey} v${row.sub.planVersion} is missing from plan_versions`);
  return { row: row.sub, plan };
}

/**
 * The plan version and interval a change asks for, or a 400 naming the bad field. The interval
 * defaults to `preferred` when the plan is sold by it (keeping an org's interval across a change), and
 * otherwise to the plan's own default.
 */
export function resolveTargetPlan(
  deps: Deps,
  input: { plan: string; interval?: Interval | undefined },
  preferred?: Interval,
): { current: { version: number; plan: Plan }; interval: Interval } {
  const current = deps.plans.current(input.plan);
  if (!current) {
    throw new AppError("validation_failed", `There is no plan ${input.plan} in the catalog.`, {
      errors: [
        {
          field: "plan",
          message: `no plan has the key ${input.plan}`,
          code: "unknown_plan",
          location: "body",
        },
      ],
    });
  }
  const interval =
    input.interval ??
    (preferred !== undefined && current.plan.price[preferred] !== undefined
      ? preferred
      : defaultInterval(current.plan));
  if (current.plan.price[interval] === undefined) {
    throw new AppError("validation_failed", `Plan ${input.plan} has no ${interval}ly price.`, {
      errors: [
        {
          field: "interval",
          message: `plan ${input.plan} is not sold by the ${interval}`,
          code: "unknown_interval",
          location: "body",
        },
      ],
    });
  }
  return { current, interval };
}

/**
 * Puts an org on a plan without payment (the operator's comps, migrations and tests). The period
 * anchor is kept when the interval stays — usage counted so far in the period counts against the new
 * plan's limits — and restarts now when the interval changes.
 */
export async function setPlan(
  deps: Deps,
  caller: Caller,
  orgId: string,
  input: { plan: string; interval?: Interval | undefined },
): Promise<{ row: SubscriptionRow; plan: Plan }> {
  const { current, interval } = resolveTargetPlan(deps, input);
  const now = deps.clock.now();
  const before = await getSubscription(deps, orgId);
  const trialDays = current.plan.trial_days;
  const onTrial = trialDays > 0 && before.row.planKey !== current.plan.key && before.row.trialEndsAt === null;
  const [row] = await deps.database.db.transaction(async (tx) => {
    const updated = await tx
      .update(subscriptions)
      .set({
        planKey: current.plan.key,
        planVersion: current.version,
        interval,
        status: onTrial ? "trialing" : "active",
        // A new interval restarts the periods now (what was running is not billed: the operator comps).
        cancelAtPeriodEnd: false,
        canceledAt: null,
        pendingPlanKey: null,
        pendingPlanVersion: null,
        pendingInterval: null,
        ...(interval === before.row.interval && before.row.status !== "canceled"
          ? {}
          : {
              anchorAt: now,
              billedThrough: now,
              nextBillingAt: new Date(periodAt(now.getTime(), interval, now.getTime()).endMs),
            }),
        trialEndsAt: onTrial ? new Date(now.getTime() + trialDays * 86_400_000) : before.row.trialEndsAt,
        updatedAt: now,
      })
      .where(eq(subscriptions.orgId, orgId))
      .returning();
    await recordAudit(tx, {
      orgId,
      actor: caller,
      action: "subscription.plan_changed",
      target: { type: "subscription", id: before.row.id },
      metadata: {
        from: { plan: before.row.planKey, version: before.row.planVersion, interval: before.row.interval },
        to: { plan: current.plan.key, version: current.version, interval },
        payment: "skipped",
      },
    });
    await emitSubscriptionEvent(deps, tx, "subscription.updated", before.row.id, {
      previous: { plan: before.row.planKey, interval: before.row.interval },
    });
    return updated;
  });
  await subscriptionChanged(deps, orgId);
  // A new plan starts with full rate limiters: state kept from the old limits would hold an org that
  // upgraded because it was rate limited for up to a window longer.
  const rateKeys = deps.catalog.features.filter((f) => f.type === "rate").map((f) => rateKey(orgId, f.key));
  await deps.counters.delete([...rateKeys, apiRateKey(orgId)]).catch(() => {});
  if (!row) throw new AppError("not_found", `No organization ${orgId}.`);
  return { row, plan: current.plan };
}

/**
 * Moves a plan's grandfathered subscribers (every other version, or one) to the version in the
 * catalog now. Returns how many moved; each move is audited in its org.
 */
export async function migrateSubscribers(
  deps: Deps,
  caller: Caller,
  planKey: string,
  fromVersion: number | undefined,
): Promise<{ migrated: number; to_version: number }> {
  const current = deps.plans.current(planKey);
  if (!current) throw new AppError("not_found", `There is no plan ${planKey} in the catalog.`);
  const now = deps.clock.now();
  const moved = await deps.database.db.transaction(async (tx) => {
    const rows = await tx
      .update(subscriptions)
      .set({ planVersion: current.version, updatedAt: now })
      .where(
        and(
          eq(subscriptions.planKey, planKey),
          // Every other version: after a catalog went back to an earlier definition, the current
          // version can be lower than some subscribers'.
          fromVersion === undefined
            ? ne(subscriptions.planVersion, current.version)
            : eq(subscriptions.planVersion, fromVersion),
          sql`${subscriptions.planVersion} <> ${current.version}`,
        ),
      )
      .returning({ orgId: subscriptions.orgId, id: subscriptions.id });
    for (const row of rows) {
      await recordAudit(tx, {
        orgId: row.orgId,
        actor: caller,
        action: "subscription.plan_migrated",
        target: { type: "subscription", id: row.id },
        metadata: { plan: planKey, from_version: fromVersion ?? "older", to_version: current.version },
      });
    }
    return rows;
  });
  for (const row of moved) await subscriptionChanged(deps, row.orgId);
  return { migrated: moved.length, to_version: current.version };
}

// ---------------------------------------------------------------------------------------------
// The hot path's cache

interface CacheEntry {
  value: OrgPlan;
  fetchedAt: number;
  ttlMs: number;
}

interface CacheState {
  entries: Map<string, CacheEntry>;
  inflight: Map<string, Promise<OrgPlan | undefined>>;
  generation: number;
  subscription: Promise<(() => Promise<void>) | undefined> | undefined;
  closed: boolean;
}

const caches = new WeakMap<Deps, CacheState>();

function cacheOf(deps: Deps): CacheState {
  let state = caches.get(deps);
  if (!state) {
    state = {
      entries: new Map(),
      inflight: new Map(),
      generation: 0,
      subscription: undefined,
      closed: false,
    };
    caches.set(deps, state);
  }
  return state;
}

/** Evicts an org here and tells every other process to. Call after any change to a subscription or org. */
export async function subscriptionChanged(deps: Deps, orgId: string): Promise<void> {
  const state = caches.get(deps);
  if (state) evict(state, orgId);
  await deps.pubsub
    .publish(SUBSCRIPTION_CHANNEL, orgId)
    .catch((error: Error) =>
      deps.logger.warn(
        { err: error.message, org: orgId },
        "publishing a subscription change failed; caches expire within 10 s",
      ),
    );
}

function evict(state: CacheState, orgId: string) {
  state.generation++;
  state.entries.delete(orgId);
  // A fetch already under way may have read the old state: later requests start their own.
  state.inflight.delete(orgId);
}

/**
 * The org's plan for the hot path: from the process cache, or one query. Undefined for an unknown
 * or deleted org. The period is recomputed only once the cached one has ended.
 */
export async function orgPlan(deps: Deps, orgId: string, nowMs: number): Promise<OrgPlan | undefined> {
  const state = cacheOf(deps);
  const entry = state.entries.get(orgId);
  let value: OrgPlan | undefined;
  if (entry) {
    value = entry.value;
    // Past its age the entry is refreshed in the background and served meanwhile: changes evict
    // entries at once (pub/sub), so the age only bounds a lost message, and no request waits on it.
    if (performance.now() - entry.fetchedAt >= entry.ttlMs)
      void refresh(deps, state, orgId, nowMs).catch(() => {});
  } else {
    value = await refresh(deps, state, orgId, nowMs);
  }
  if (!value) return undefined;
  // Never mutated in place: a request holding the object keeps the period it started with.
  const periodOver = nowMs >= value.period.endMs || nowMs < value.period.startMs;
  const trialOver = value.entitled && value.trialEndsMs !== null && nowMs >= value.trialEndsMs;
  const graceOver = value.entitled && value.graceEndsMs !== null && nowMs >= value.graceEndsMs;
  if (periodOver || trialOver || graceOver) {
    const next: OrgPlan = {
      ...value,
      period: periodOver ? usagePeriodAt(value.anchorMs, nowMs) : value.period,
      entitled: isEntitled(value.status, value.trialEndsMs, nowMs, value.graceEndsMs),
    };
    const current = state.entries.get(orgId);
    if (current?.value === value) current.value = next;
    return next;
  }
  return value;
}

/** One fetch per org at a time, shared by every request that needs it. */
function refresh(deps: Deps, state: CacheState, orgId: string, nowMs: number): Promise<OrgPlan | undefined> {
  let pending = state.inflight.get(orgId);
  if (!pending) {
    pending = fetchOrgPlan(deps, state, orgId, nowMs).finally(() => state.inflight.delete(orgId));
    state.inflight.set(orgId, pending);
  }
  return pending;
}

async function fetchOrgPlan(deps: Deps, state: CacheState, orgId: string, nowMs: number) {
  subscribe(deps, state);
  const generation = state.generation;
  const started = performance.now();
  let row: SubscriptionRow | undefined;
  try {
    [row] = await deps.database.db
      .select({ sub: subscriptions })
      .from(subscriptions)
      .innerJoin(orgs, eq(orgs.id, subscriptions.orgId))
      .where(and(eq(subscriptions.orgId, orgId), isNull(orgs.deletedAt)))
      .then((rows) => rows.map((r) => r.sub));
  } catch (error) {
    deps.logger.warn({ err: (error as Error).message }, "subscription lookup failed");
    throw new AppError("unavailable", "The database cannot be reached; try again shortly.");
  }
  if (!row) {
    state.entries.delete(orgId);
    return undefined;
  }
  // A canceled subscription falls back to the default (free) plan's grants until the org subscribes again.
  const fallback = row.status === "canceled" ? deps.plans.current(deps.catalog.default_plan) : undefined;
  const planKey = fallback ? fallback.plan.key : row.planKey;
  const planVersion = fallback ? fallback.version : row.planVersion;
  const plan = fallback ? fallback.plan : await deps.plans.load(row.planKey, row.planVersion);
  if (!plan) throw new Error(`plan ${row.planKey} v${row.planVersion} is missing from plan_versions`);
  const anchorMs = row.anchorAt.getTime();
  const trialEndsMs = row.trialEndsAt?.getTime() ?? null;
  const graceEndsMs = row.status === "past_due" ? graceEndsAt(deps, row.pastDueSince) : null;
  const value: OrgPlan = {
    orgId,
    subscriptionId: row.id,
    planKey,
    planVersion,
    plan,
    interval: row.interval,
    status: row.status,
    anchorMs,
    trialEndsMs,
    graceEndsMs,
    entitled: isEntitled(row.status, trialEndsMs, nowMs, graceEndsMs),
    period: usagePeriodAt(anchorMs, nowMs),
  };
  // A change message that arrived while we read may describe a newer state than the row.
  if (!state.closed && generation === state.generation) {
    if (state.entries.size >= MAX_ENTRIES) {
      const oldest = state.entries.keys().next();
      if (!oldest.done) state.entries.delete(oldest.value);
    }
    // Jittered, so entries fetched together (a burst of new orgs, a restart) do not expire together.
    state.entries.set(orgId, {
      value,
      fetchedAt: started,
      ttlMs: CACHE_TTL_MS * (0.8 + Math.random() * 0.4),
    });
  }
  return value;
}

function subscribe(deps: Deps, state: CacheState) {
  if (state.subscription || state.closed) return;
  state.subscription = deps.pubsub
    .subscribe(SUBSCRIPTION_CHANNEL, (orgId) => evict(state, orgId))
    .then(
      async (unsubscribe) => {
        if (state.closed) await unsubscribe().catch(() => {});
        return unsubscribe;
      },
      (error: Error) => {
        deps.logger.warn(
          { err: error.message },
          "subscription change channel failed; caches expire within 10 s",
        );
        state.subscription = undefined;
        return undefined;
      },
    );
}

/** For closeDeps: ends the change subscription. */
export async function closeSubscriptionCache(deps: Deps): Promise<void> {
  const state = caches.get(deps);
  if (!state) return;
  state.closed = true;
  state.entries.clear();
  const unsubscribe = await state.subscription;
  await unsubscribe?.().catch(() => {});
}
