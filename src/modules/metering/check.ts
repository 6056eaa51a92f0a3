import { and, eq, gt, inArray, sql } from "drizzle-orm";
import { allocations, checkIdempotency } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import type { CounterOutcome, Op, RateOutcome } from "../../infra/counters/types.js";
import { sha256Hex } from "../../lib/crypto.js";
import { AppError, type FieldError } from "../../lib/errors.js";
import type { FeatureType } from "../catalog/schema.js";
import { type OrgPlan, orgPlan } from "../plans/subscriptions.js";
import { catalogIndex, type Grant, grantOf } from "./features.js";
import { createUsageJournal, type UsageJournal } from "./journal.js";
import { allocationKey, meterCounterKey, rateKey } from "./keys.js";
import { isoCache, type ThresholdSpec, textArray } from "./ledger.js";
import {
  decimalPlaces,
  microsToText,
  numericToMicros,
  toDecimalText,
  toMicros,
  unitsToNumber,
} from "./quantities.js";
import { upgradeFor } from "./upgrades.js";
import { type ConsumedUsage, createUsageWriter, type UsageWrite, type UsageWriter } from "./writer.js";

/**
 * `POST /v1/check`: may this org use these features now, and if so, consume them — atomically, all
 * or nothing, exactly under any concurrency and across processes.
 *
 * 1. The org's plan comes from the process cache (subscriptions.ts); every feature resolves to a
 *    grant of that plan version.
 * 2. Limit, metered and rate features become ops for the counter store, applied in one atomic step
 *    (one Lua script on Redis). A counter the store lacks is seeded from Postgres and the call retried.
 * 3. Allowed consumption is made durable before the answer goes out, so a crash never loses
 *    acknowledged usage and Postgres can rebuild every counter: with Redis, metered usage is
 *    journaled in the same atomic step and committed to Postgres behind (journal.ts); otherwise —
 *    and for allocations and idempotent calls, whose answers are stored — it is committed to
 *    Postgres by the group-commit writer before the answer.
 * 4. If the counter store cannot be reached, each feature follows its `on_unavailable` policy.
 */

export type Reason =
  | "feature_not_in_plan"
  | "limit_exceeded"
  | "quota_exceeded"
  | "rate_limited"
  | "subscription_inactive"
  | "unavailable";

export interface CheckItem {
  feature: string;
  /** A decimal string or number, validated per feature type. */
  amount: unknown;
}

export interface CheckInput {
  orgId: string;
  items: CheckItem[];
  consume: boolean;
  idempotencyKey?: string | undefined;
  /** Field path of item i in the request, for validation errors. */
  fieldOf: (index: number, field: "feature" | "amount") => string;
  /**
   * When this call is part of a larger request (check-http.ts: items only checked beside the
   * consumed ones), the idempotency key covers the whole request: its fingerprint, and the whole
   * answer — what is stored under the key and replayed.
   */
  idempotency?: { fingerprint: string; whole: (answer: CheckAnswer) => CheckAnswer } | undefined;
}

export interface FeatureResult {
  allowed: boolean;
  feature: string;
  type: FeatureType;
  limit: number | null;
  used: number | null;
  remaining: number | null;
  resets_at: string | null;
  reason?: Reason;
  upgrade_url?: string;
  upgrade_plan?: string;
  retry_after_ms?: number;
}

/** Rate-limit state for the response headers (the most constrained rate feature of the call). */
export interface RateHeaderState {
  feature: string;
  limit: number;
  windowSeconds: number;
  remaining: number;
  resetSeconds: number;
  retryAfterSeconds: number | undefined;
}

export interface CheckAnswer {
  allowed: boolean;
  results: FeatureResult[];
  rate: RateHeaderState | undefined;
  /** Set when the answer is a replay of an earlier call with the same idempotency key. */
  replayed: boolean;
  /** Answered by policy because the counter store was unreachable. */
  degraded: boolean;
}

/** Idempotency keys are remembered this long (as Stripe does). */
export const IDEMPOTENCY_TTL_SECONDS = 24 * 3600;
/** A claim whose call never finished (a crash) frees the key after this long. */
const CLAIM_TTL_SECONDS = 30;
/** Allocations (seats, profiles) are kept in the store this long after their last change. */
const ALLOCATION_TTL_SECONDS = 35 * 86_400;
const MAX_SEED_ATTEMPTS = 3;
/**
 * How long after the counter store lost its counters seeding waits: longer than a usage commit takes
 * (milliseconds normally; the writer's transactions are tiny), so every call decided before the loss
 * is in Postgres when counters are rebuilt. Real time: it bounds real commits, not the app clock.
 */
const SEED_GRACE_MS = 1500;

interface Planned {
  grant: Grant;
  /** Units in the counter store (count: whole units, sum: micro-units, rate: cost). */
  units: number;
  denied: Reason | undefined;
  op: Op | undefined;
}

interface EngineState {
  /** Counter keys whose usage was recorded while the store was unreachable: stale once it returns. */
  stale: Set<string>;
  /** The deletion of stale counters under way: every apply waits for it. */
  clearing: Promise<void> | undefined;
  lastDegradedLog: number;
}

const states = new WeakMap<Deps, EngineState>();

function stateOf(deps: Deps): EngineState {
  let state = states.get(deps);
  if (!state) {
    state = { stale: new Set(), clearing: undefined, lastDegradedLog: 0 };
    states.set(deps, state);
  }
  return state;
}

/** TTL of a period's counter: until the period ends, plus two days of slack for late reads. */
export function meterCounterTtl(periodEndMs: number, nowMs: number): number {
  return Math.max(1, Math.ceil((periodEndMs - nowMs) / 1000) + 2 * 86_400);
}

export async function runCheck(deps: Deps, input: CheckInput): Promise<CheckAnswer> {
  const nowMs = deps.clock.nowMs();
  const org = await orgPlan(deps, input.orgId, nowMs);
  if (!org) throw new AppError("not_found", `No organization ${input.orgId}.`);
  const planned = planItems(deps, org, input, nowMs);
  const consume = input.consume;
  const ops: Op[] = [];
  const opIndex: number[] = [];
  for (const item of planned) {
    opIndex.push(item.op ? ops.length : -1);
    if (item.op) ops.push(item.op);
  }
  const staticallyAllowed = planned.every((p) => p.denied === undefined);
  const dryRun = !consume || !staticallyAllowed;

  // Idempotency applies to consuming calls: a dry run has nothing to repeat.
  const idempotent = consume && input.idempotencyKey !== undefined;
  const fingerprint = idempotent ? (input.idempotency?.fingerprint ?? fingerprintOf(input)) : "";
  const heldKey = idempotent ? `${input.orgId}:${input.idempotencyKey}` : "";
  if (idempotent) {
    const earlier = await earlierAnswer(deps, input.orgId, input.idempotencyKey as string, fingerprint);
    if (earlier) return earlier;
  }

  const journal = consume && staticallyAllowed && !idempotent ? usageJournal(deps) : undefined;
  const journaled =
    journal && deps.env.checkAck === "journal" ? journalUsage(org, planned, nowMs) : undefined;
  const journaling = journal && journaled && journal.ready() ? { journal, usage: journaled } : undefined;

  let outcome: Awaited<ReturnType<typeof applyOps>>;
  try {
    outcome = await applyOps(
      deps,
      org,
      ops,
      planned.filter((p) => p.op),
      nowMs,
      dryRun,
      idempotent
        ? {
            key: heldKey,
            claim: `p:${nowMs + CLAIM_TTL_SECONDS * 1000}:${fingerprint}`,
            ttlSeconds: CLAIM_TTL_SECONDS,
          }
        : undefined,
      journaling,
    );
  } catch (error) {
    if (error instanceof AppError || error instanceof RangeError) throw error;
    return degraded(deps, org, input, planned, nowMs, error as Error, fingerprint);
  }
  if (outcome.status === "replay") {
    return awaitReplay(deps, input, heldKey, fingerprint, outcome.held);
  }

  const allowed = staticallyAllowed && outcome.allowed;
  const applied = allowed && !dryRun;
  const results = planned.map((item, i) => {
    const index = opIndex[i] as number;
    const result = index >= 0 ? outcome.outcomes[index] : undefined;
    return describe(deps, org, item, result, applied, outcome.allowed, nowMs);
  });
  const answer: CheckAnswer = {
    allowed,
    results,
    rate: rateHeaders(planned, results, nowMs),
    replayed: false,
    degraded: false,
  };

  // Journaled with the counters: durable already, committed to Postgres behind.
  if (!consume || journaling) return answer;
  const write: UsageWrite = { usage: [], allocations: [] };
  if (applied) collectWrites(org, planned, outcome.outcomes, opIndex, nowMs, write);
  if (idempotent) {
    write.answer = {
      orgId: input.orgId,
      key: input.idempotencyKey as string,
      fingerprint,
      response: storedForm(input, answer),
      atMs: nowMs,
    };
  }
  if (write.usage.length === 0 && write.allocations.length === 0 && !write.answer) return answer;
  try {
    await usageWriter(deps).write(write);
  } catch {
    // Not acknowledged. Most likely nothing was committed, but a commit whose reply was lost may have
    // been: rather than guess, the counters are rebuilt from Postgres (after the grace) before the
    // next decision on them.
    if (applied) markStale(deps, counterKeys(planned));
    if (idempotent) await deps.counters.forget(heldKey).catch(() => {});
    throw new AppError(
      "unavailable",
      "Usage could not be recorded; it was most likely not consumed. Retry shortly (with an idempotency key to be sure).",
    );
  }
  if (idempotent) {
    await deps.counters
      .remember(
        heldKey,
        `d:${nowMs + IDEMPOTENCY_TTL_SECONDS * 1000}:${fingerprint}:${JSON.stringify(storedForm(input, answer))}`,
        IDEMPOTENCY_TTL_SECONDS,
      )
      .catch(() => {});
  }
  return answer;
}

/** Resolves every item to a grant and its op, validating amounts; all problems are reported at once. */
function planItems(deps: Deps, org: OrgPlan, input: CheckInput, nowMs: number): Planned[] {
  const index = catalogIndex(deps.catalog);
  const errors: FieldError[] = [];
  const planned: Planned[] = [];
  input.items.forEach((item, i) => {
    const feature = index.features.get(item.feature);
    if (!feature) {
      errors.push({
        field: input.fieldOf(i, "feature"),
        message: `no feature has the key "${item.feature}"`,
        code: "unknown_feature",
        location: "body",
      });
      return;
    }
    const grant = grantOf(deps.catalog, org.plan, feature);
    const units = amountUnits(grant, item.amount, (message) =>
      errors.push({ field: input.fieldOf(i, "amount"), message, code: "invalid_amount", location: "body" }),
    );
    if (units === undefined) return;
    planned.push(planOne(org, grant, units, nowMs));
  });
  if (errors.length > 0) {
    throw new AppError(
      "validation_failed",
      `Invalid check: ${errors.map((e) => `${e.field} ${e.message}`).join("; ")}`,
      {
        errors,
      },
    );
  }
  return planned;
}

/** The amount in counter-store units, or undefined after reporting why it is not valid for the feature. */
function amountUnits(grant: Grant, amount: unknown, fail: (message: string) => void): number | undefined {
  const text = toDecimalText(amount);
  if (text === undefined) {
    fail("must be a number or a decimal string");
    return undefined;
  }
  const negative = text.startsWith("-");
  switch (grant.type) {
    case "boolean":
      return 0;
    case "limit":
    case "rate":
      if (decimalPlaces(text) > 0 && !/^-?\d+\.0+$/.test(text)) {
        fail(`must be a whole number for a ${grant.type} feature`);
        return undefined;
      }
      if (grant.type === "rate" && negative) {
        fail("must not be negative for a rate feature");
        return undefined;
      }
      return bounded(Number.parseInt(text, 10), fail);
    case "metered":
      if (negative) {
        fail("must not be negative for a metered feature (only limit features release)");
        return undefined;
      }
      if (grant.scale === 1) {
        if (decimalPlaces(text) > 0 && !/^\d+\.0+$/.test(text)) {
          fail(`must be a whole number: meter ${grant.meter.key} counts units`);
          return undefined;
        }
        return bounded(Number.parseInt(text, 10), fail);
      }
      if (decimalPlaces(text) > 6) {
        fail("must have at most 6 decimal places");
        return undefined;
      }
      return bounded(Number(toMicros(text)), fail);
  }
}

function bounded(units: number, fail: (message: string) => void): number | undefined {
  if (!Number.isSafeInteger(units) || Math.abs(units) > 2 ** 50) {
    fail("is too large");
    return undefined;
  }
  return units;
}

function planOne(org: OrgPlan, grant: Grant, units: number, nowMs: number): Planned {
  const { orgId, period } = org;
  if (!org.entitled && grant.type !== "boolean") {
    return { grant, units, denied: "subscription_inactive", op: undefined };
  }
  switch (grant.type) {
    case "boolean":
      return {
        grant,
        units,
        denied: !org.entitled ? "subscription_inactive" : grant.enabled ? undefined : "feature_not_in_plan",
        op: undefined,
      };
    case "limit":
      return {
        grant,
        units,
        denied: undefined,
        op: {
          kind: "counter",
          key: allocationKey(orgId, grant.feature.key),
          amount: units,
          limit: grant.limit,
          ttlSeconds: ALLOCATION_TTL_SECONDS,
        },
      };
    case "metered":
      return {
        grant,
        units,
        denied: undefined,
        op: {
          kind: "counter",
          key: meterCounterKey(orgId, grant.meter.key, period.startMs),
          amount: units,
          limit: grant.overage === "allow" ? null : grant.limitUnits,
          ttlSeconds: meterCounterTtl(period.endMs, nowMs),
        },
      };
    case "rate":
      if (!grant.rate) return { grant, units, denied: "feature_not_in_plan", op: undefined };
      // More than the whole burst can never pass: denied without a retry time (a larger plan may fit it).
      if (units > grant.rate.limit) return { grant, units, denied: "rate_limited", op: undefined };
      return {
        grant,
        units,
        denied: undefined,
        op: {
          kind: "rate",
          key: rateKey(orgId, grant.feature.key),
          limit: grant.rate.limit,
          periodMs: grant.rate.window_ms,
          cost: units,
        },
      };
  }
}

type Applied =
  | { status: "done"; allowed: boolean; outcomes: (CounterOutcome | RateOutcome)[] }
  | { status: "replay"; held: string };

/** Applies the ops, seeding counters the store lacks from Postgres and retrying. */
async function applyOps(
  deps: Deps,
  org: OrgPlan,
  ops: Op[],
  planned: Planned[],
  nowMs: number,
  dryRun: boolean,
  idempotency: { key: string; claim: string; ttlSeconds: number } | undefined,
  journaling: { journal: UsageJournal; usage: ConsumedUsage[] } | undefined,
): Promise<Applied> {
  if (ops.length === 0 && !idempotency) return { status: "done", allowed: true, outcomes: [] };
  for (let attempt = 0; ; attempt++) {
    // Stale counters go before anything is decided on them (throws while the store is still away).
    const state = states.get(deps);
    if (state && (state.clearing || state.stale.size > 0)) await clearStale(deps, state);
    // Issued right before the call reaches the store, so seqs reach the journal in order.
    const ticket = journaling?.journal.issue(journaling.usage);
    let result: Awaited<ReturnType<typeof deps.counters.apply>>;
    try {
      result = await deps.counters.apply(ops, nowMs, {
        dryRun,
        ...(idempotency ? { idempotency } : {}),
        ...(ticket ? { journal: ticket.append } : {}),
      });
    } catch (error) {
      // Answered as not applied (by policy): an entry the store may have appended must not count.
      if (ticket) journaling?.journal.discard(ticket);
      throw error;
    }
    if (ticket) journaling?.journal.settle(ticket, result.status === "done" && result.allowed && !dryRun);
    if (result.status === "unjournaled") {
      if (attempt >= MAX_SEED_ATTEMPTS) throw new Error("the usage journal could not be reopened");
      await journaling?.journal.recover();
      continue;
    }
    if (result.status !== "missing") return result;
    if (attempt >= MAX_SEED_ATTEMPTS) throw new Error("counters vanished while being seeded");
    await seedCounters(
      deps,
      org,
      result.missing.map((i) => planned[i] as Planned),
    );
  }
}

/** Rebuilds counters from Postgres, the source of truth; set only if still absent (another process may win). */
async function seedCounters(deps: Deps, org: OrgPlan, items: Planned[]): Promise<void> {
  const { db } = deps.database;
  // If the store lost its counters a moment ago (a Redis that restarted empty, or a process that just
  // dropped them), calls decided on the old counters may not be committed yet: Postgres would not
  // show them. Wait until they have landed, or the rebuilt counter would hand out their units again.
  const lostAt = await deps.counters.counterEpoch(Date.now());
  const wait = lostAt + SEED_GRACE_MS - Date.now();
  if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  const meters = items
    .filter((p) => p.grant.type === "metered")
    .map((p) => (p.grant as Extract<Grant, { type: "metered" }>).meter.key);
  const features = items.filter((p) => p.grant.type === "limit").map((p) => p.grant.feature.key);
  const [periodRows, allocationRows] = await Promise.all([
    meters.length > 0 ? meteredTotals(deps, org, meters, lostAt) : [],
    features.length > 0
      ? db
          .select({ feature: allocations.feature, value: allocations.value })
          .from(allocations)
          .where(and(eq(allocations.orgId, org.orgId), inArray(allocations.feature, features)))
      : [],
  ]);
  for (const item of items) {
    const op = item.op;
    if (op?.kind !== "counter") continue;
    let value = 0;
    if (item.grant.type === "metered") {
      const grant = item.grant;
      const row = periodRows.find((r) => r.meter === grant.meter.key);
      if (row)
        value = grant.scale === 1 ? Math.floor(Number(row.quantity)) : Number(numericToMicros(row.quantity));
    } else {
      const row = allocationRows.find((r) => r.feature === item.grant.feature.key);
      value = row?.value ?? 0;
    }
    // Clamped to the counter store's exact range (a sum meter's total past ~9 billion units).
    await deps.counters.seed(op.key, Math.min(Math.max(0, value), Number.MAX_SAFE_INTEGER), op.ttlSeconds);
  }
}

/**
 * An org's period totals of some meters (all with `meters` undefined): what Postgres holds plus what
 * journals hold that is not committed yet — read-your-writes for every process, even right after
 * the one that answered was killed. The journals are read first, then Postgres — totals and each
 * journal's committed seq in one snapshot — so an entry is counted exactly once: in Postgres if it
 * was committed by then, else from its journal (trimmed entries were committed before).
 */
export async function periodTotals(
  deps: Deps,
  orgId: string,
  periodStartMs: number,
  meters: string[] | undefined,
  options: { strict: boolean },
): Promise<Map<string, bigint>> {
  const journal = usageJournal(deps);
  // Without the store, reads show what Postgres holds (strict callers — seeding — fail instead).
  const journaled = journal
    ? await journal.uncommitted(orgId).catch((error: Error) => {
        if (options.strict) throw error;
        return new Map<string, { seq: number; usage: ConsumedUsage[] }[]>();
      })
    : new Map<string, { seq: number; usage: ConsumedUsage[] }[]>();
  const periodStart = new Date(periodStartMs).toISOString();
  const [snapshot] = await deps.database.query<{
    periods: { meter: string; quantity: string }[];
    journals: Record<string, number>;
  }>(sql`
    select
      (select coalesce(json_agg(json_build_object('meter', meter, 'quantity', quantity::text)), '[]'::json)
        from usage_periods
        where org_id = ${orgId} and period_start = ${periodStart}::timestamptz
          ${meters ? sql`and meter = any(${textArray(meters)}::text[])` : sql``}
      ) as periods,
      (select coalesce(json_object_agg(journal_id, committed_seq), '{}'::json) from usage_journals) as journals`);
  const micros = new Map<string, bigint>();
  for (const row of snapshot?.periods ?? []) micros.set(row.meter, numericToMicros(row.quantity));
  for (const [journalId, found] of journaled) {
    const committed = snapshot?.journals[journalId];
    if (committed === undefined) continue; // swept and removed: all of it is committed
    for (const { seq, usage } of found) {
      if (seq <= Number(committed)) continue;
      for (const u of usage) {
        if (u.orgId !== orgId || u.periodStartMs !== periodStartMs) continue;
        if (meters && !meters.includes(u.meter)) continue;
        micros.set(u.meter, (micros.get(u.meter) ?? 0n) + toMicros(u.quantity));
      }
    }
  }
  return micros;
}

/**
 * Period totals for seeding counters. While counters are missing nothing is journaled for them, so
 * no entry is added meanwhile. After Redis lost its data, the journals' streams went with it, and
 * what the live processes hold in memory is awaited first (awaitThrough).
 */
async function meteredTotals(
  deps: Deps,
  org: OrgPlan,
  meters: string[],
  lostAt: number,
): Promise<{ meter: string; quantity: string }[]> {
  await usageJournal(deps)?.awaitThrough(lostAt);
  const totals = await periodTotals(deps, org.orgId, org.period.startMs, meters, { strict: true });
  return [...totals].map(([meter, micros]) => ({ meter, quantity: microsToText(micros) }));
}

/**
 * What a consuming call journals: its metered usage. Undefined when it has none (nothing to write)
 * or when it changes an allocation: a release is clamped at zero by the store, so its amount is
 * known only after the call, and allocations are few — those calls commit before answering.
 */
function journalUsage(org: OrgPlan, planned: Planned[], nowMs: number): ConsumedUsage[] | undefined {
  const usage: ConsumedUsage[] = [];
  for (const item of planned) {
    if (item.grant.type === "limit" && item.op) return undefined;
    if (item.grant.type === "metered" && item.units > 0)
      usage.push(consumedUsage(org, item.grant, item.units, nowMs));
  }
  return usage.length > 0 ? usage : undefined;
}

/** One result per item, as the caller sees it. */
function describe(
  deps: Deps,
  org: OrgPlan,
  item: Planned,
  outcome: CounterOutcome | RateOutcome | undefined,
  applied: boolean,
  storeAllowed: boolean,
  nowMs: number,
): FeatureResult {
  const { grant } = item;
  const feature = grant.feature.key;
  const denied = (reason: Reason, base: Omit<FeatureResult, "allowed" | "reason">): FeatureResult => {
    const upgrade = reason === "unavailable" ? undefined : upgradeFor(deps, org, grant);
    return {
      ...base,
      allowed: false,
      reason,
      ...(upgrade
        ? { upgrade_url: upgrade.url, ...(upgrade.plan ? { upgrade_plan: upgrade.plan } : {}) }
        : {}),
    };
  };
  switch (grant.type) {
    case "boolean": {
      const base = {
        feature,
        type: "boolean" as const,
        limit: null,
        used: null,
        remaining: null,
        resets_at: null,
      };
      return item.denied ? denied(item.denied, base) : { allowed: true, ...base };
    }
    case "limit":
    case "metered": {
      const scale = grant.type === "metered" ? grant.scale : 1;
      const counter = outcome as CounterOutcome | undefined;
      const usedUnits = counter ? (applied ? counter.value : counter.previous) : 0;
      const used = counter ? unitsToNumber(usedUnits, scale) : null;
      const limit = grant.limit;
      const remaining = limit === null || used === null ? null : Math.max(0, roundTo(limit - used, scale));
      const resets = grant.type === "metered" ? isoOf(org.period.endMs) : null;
      if (item.denied || (counter && !counter.allowed)) {
        const base = { feature, type: grant.type, limit, used, remaining, resets_at: resets };
        if (item.denied) return denied(item.denied, base);
        // A plan that grants none of it (not listed, or 0) does not include the feature at all.
        if (limit === 0) return denied("feature_not_in_plan", base);
        return denied(grant.type === "metered" ? "quota_exceeded" : "limit_exceeded", base);
      }
      // The allowed answer built in one literal (this is every allowed check): same fields, same order.
      return { allowed: true, feature, type: grant.type, limit, used, remaining, resets_at: resets };
    }
    case "rate": {
      const rate = outcome as RateOutcome | undefined;
      const limit = grant.rate?.limit ?? 0;
      // Reported as before the call when nothing was applied (see rateRemaining).
      const remaining = rate ? rateRemaining(rate, item.units, applied, storeAllowed) : 0;
      const base = {
        feature,
        type: "rate" as const,
        limit,
        used: null,
        remaining,
        resets_at: rate
          ? new Date(nowMs + (applied || !storeAllowed ? rate.resetMs : rate.resetBeforeMs)).toISOString()
          : null,
      };
      if (item.denied) return denied(item.denied, base);
      if (rate && !rate.allowed)
        return { ...denied("rate_limited", base), retry_after_ms: rate.retryAfterMs };
      return { allowed: true, ...base };
    }
  }
}

/**
 * The store reports a dry run (or a call whose every op fit) as if applied. When nothing was applied
 * although this op fit, the remaining count before the call is the reported one plus the cost: GCRA
 * removes exactly `cost` whole requests (floor((C − b − P·cost) / P) = floor((C − b) / P) − cost).
 */
function rateRemaining(rate: RateOutcome, cost: number, applied: boolean, storeAllowed: boolean): number {
  if (applied || !storeAllowed) return rate.remaining;
  return rate.remaining + cost;
}

/** Period ends as ISO text (one per org and period), so a check formats none. */
const isoOf = isoCache(10_000);

function roundTo(value: number, scale: number): number {
  return scale === 1 ? value : Math.round(value * scale) / scale;
}

/** The most constrained rate feature of the call, for the RateLimit headers. */
function rateHeaders(
  planned: Planned[],
  results: FeatureResult[],
  nowMs: number,
): RateHeaderState | undefined {
  let chosen: RateHeaderState | undefined;
  planned.forEach((item, i) => {
    const result = results[i] as FeatureResult;
    if (item.grant.type !== "rate" || !item.grant.rate || result.remaining === null) return;
    const state: RateHeaderState = {
      feature: item.grant.feature.key,
      limit: item.grant.rate.limit,
      windowSeconds: Math.ceil(item.grant.rate.window_ms / 1000),
      remaining: result.remaining,
      resetSeconds: result.resets_at
        ? Math.max(0, Math.ceil((Date.parse(result.resets_at) - nowMs) / 1000))
        : 0,
      retryAfterSeconds:
        result.retry_after_ms !== undefined ? Math.ceil(result.retry_after_ms / 1000) : undefined,
    };
    if (!chosen || state.remaining < chosen.remaining) chosen = state;
  });
  return chosen;
}

/** What Postgres must record for an applied call: usage per meter and allocation changes. */
function collectWrites(
  org: OrgPlan,
  planned: Planned[],
  outcomes: (CounterOutcome | RateOutcome)[],
  opIndex: number[],
  nowMs: number,
  write: UsageWrite,
): void {
  // Per counter, not per item: two items on one counter (the same feature twice, or two metered
  // features on one meter) each report the value before the call, and the last one the value after.
  const byKey = new Map<string, { item: Planned; previous: number; value: number; specs: ThresholdSpec[] }>();
  planned.forEach((item, i) => {
    const outcome = outcomes[opIndex[i] as number];
    if (outcome?.kind !== "counter" || item.op?.kind !== "counter") return;
    const entry = byKey.get(item.op.key);
    const specs = item.grant.type === "metered" ? thresholdSpecs(item.grant) : [];
    if (entry) {
      entry.value = outcome.value;
      entry.specs.push(...specs.filter((s) => !entry.specs.some((e) => e.feature === s.feature)));
    } else byKey.set(item.op.key, { item, previous: outcome.previous, value: outcome.value, specs });
  });
  for (const { item, previous, value, specs } of byKey.values()) {
    const delta = value - previous;
    if (delta === 0) continue;
    if (item.grant.type === "metered") {
      write.usage.push({ ...consumedUsage(org, item.grant, delta, nowMs), thresholds: specs });
    } else if (item.grant.type === "limit") {
      write.allocations.push({ orgId: org.orgId, feature: item.grant.feature.key, delta });
    }
  }
}

function thresholdSpecs(grant: Extract<Grant, { type: "metered" }>): ThresholdSpec[] {
  return grant.limit !== null && grant.limit > 0
    ? [{ feature: grant.feature.key, limit: grant.limit, thresholds: grant.thresholds }]
    : [];
}

function consumedUsage(
  org: OrgPlan,
  grant: Extract<Grant, { type: "metered" }>,
  units: number,
  nowMs: number,
): ConsumedUsage {
  const quantity = grant.scale === 1 ? String(units) : String(unitsToNumber(units, grant.scale));
  return {
    orgId: org.orgId,
    meter: grant.meter.key,
    periodStartMs: org.period.startMs,
    atMs: nowMs,
    quantity,
    count: grant.scale === 1 ? quantity : "1",
    sum: quantity,
    thresholds: grantSpecs(grant),
  };
}

const NO_SPECS: readonly ThresholdSpec[] = Object.freeze([]);
const specsOfGrant = new WeakMap<Grant, readonly ThresholdSpec[]>();

/**
 * The thresholds a metered grant's usage may cross, one array per grant (grants are cached per plan
 * version), shared by every entry that consumes it: the journal encodes it once (journal.ts).
 */
function grantSpecs(grant: Extract<Grant, { type: "metered" }>): readonly ThresholdSpec[] {
  if (grant.limit === null || grant.limit <= 0) return NO_SPECS;
  let specs = specsOfGrant.get(grant);
  if (specs === undefined) {
    specs = Object.freeze(thresholdSpecs(grant));
    specsOfGrant.set(grant, specs);
  }
  return specs;
}

function counterKeys(planned: Planned[]): string[] {
  return planned.flatMap((item) => (item.op?.kind === "counter" ? [item.op.key] : []));
}

/**
 * The counter store is unreachable: each feature follows its policy. Allowed consumption is still
 * recorded in Postgres, and its counters are marked stale, to be rebuilt once the store is back.
 */
async function degraded(
  deps: Deps,
  org: OrgPlan,
  input: CheckInput,
  planned: Planned[],
  nowMs: number,
  error: Error,
  fingerprint: string,
): Promise<CheckAnswer> {
  const state = stateOf(deps);
  const results = planned.map((item): FeatureResult => {
    const base = describe(deps, org, item, undefined, false, false, nowMs);
    if (!item.op || item.denied) return base;
    const open = item.grant.type !== "boolean" && item.grant.onUnavailable === "open";
    deps.metrics.degraded.inc({
      component: `check:${item.grant.feature.key}`,
      decision: open ? "open" : "closed",
    });
    const unknown = { ...base, used: null, remaining: null };
    if (open) return { ...unknown, allowed: true };
    return { ...unknown, allowed: false, reason: "unavailable" };
  });
  const allowed = results.every((r) => r.allowed);
  if (performance.now() - state.lastDegradedLog > 5000) {
    state.lastDegradedLog = performance.now();
    deps.logger.warn(
      {
        err: error.message,
        org: org.orgId,
        decisions: results.map((r) => `${r.feature}:${r.allowed ? "open" : "closed"}`),
      },
      "counter store unreachable: checks follow each feature's on_unavailable policy",
    );
  }
  const answer: CheckAnswer = { allowed, results, rate: undefined, replayed: false, degraded: true };
  if (!input.consume) return answer;
  // Whatever the decision, the store may have applied this call before the connection dropped (its
  // answer lost): every counter it names is rebuilt from Postgres once the store is back.
  const touched = planned.flatMap((item) => (item.op?.kind === "counter" ? [item.op.key] : []));
  for (const key of touched) state.stale.add(key);
  const write: UsageWrite = { usage: [], allocations: [] };
  if (allowed) {
    for (const item of planned) {
      if (item.op?.kind !== "counter" || item.units === 0) continue;
      if (item.grant.type === "metered") write.usage.push(consumedUsage(org, item.grant, item.units, nowMs));
      else if (item.grant.type === "limit")
        write.allocations.push({ orgId: org.orgId, feature: item.grant.feature.key, delta: item.units });
    }
  }
  // A denial for an outage is not an answer worth repeating: a retry once the store is back decides anew.
  if (input.idempotencyKey !== undefined && !results.some((r) => r.reason === "unavailable")) {
    write.answer = {
      orgId: input.orgId,
      key: input.idempotencyKey,
      fingerprint,
      response: storedForm(input, answer),
      atMs: nowMs,
    };
  }
  if (write.usage.length > 0 || write.allocations.length > 0 || write.answer) {
    try {
      await usageWriter(deps).write(write);
    } catch {
      throw new AppError(
        "unavailable",
        "Neither the counter store nor the database can record usage right now.",
      );
    }
    // Again once committed: had the store come back meanwhile, a counter rebuilt before this commit
    // would lack it.
    for (const key of touched) state.stale.add(key);
  }
  return answer;
}

/**
 * Once the store answers again, counters that missed usage while it was away are dropped (and
 * reseeded from Postgres). Awaited before every apply, so no decision is ever taken on a stale
 * counter; concurrent callers share one deletion. Rejects while the store is still unreachable.
 */
async function clearStale(deps: Deps, state: EngineState): Promise<void> {
  while (state.clearing) await state.clearing;
  if (state.stale.size === 0) return;
  const keys = [...state.stale];
  state.stale.clear();
  // Journal entries of calls whose answer was lost go first: rebuilt counters read the journals.
  const journal = usageJournal(deps);
  // Dropped counters are rebuilt after the grace (see seedCounters): calls decided on them a moment
  // ago, here or in another process, may still be committing.
  state.clearing = Promise.resolve(journal?.purge())
    .then(() => deps.counters.delete(keys))
    .then(() => deps.counters.resetCounterEpoch(Date.now()))
    .catch((error: Error) => {
      for (const key of keys) state.stale.add(key);
      throw error;
    })
    .finally(() => {
      state.clearing = undefined;
    });
  await state.clearing;
}

/**
 * Marks counters to be dropped and rebuilt from Postgres before the next decision on them: after a
 * failed increment (event ingest while the store was away) or a usage commit that may or may not have
 * landed.
 */
export function markStale(deps: Deps, keys: string[]): void {
  const state = stateOf(deps);
  for (const key of keys) state.stale.add(key);
}

export function fingerprintOf(input: CheckInput): string {
  return sha256Hex(
    JSON.stringify([
      input.orgId,
      input.consume,
      input.items.map((i) => [i.feature, toDecimalText(i.amount)]),
    ]),
  );
}

/**
 * The answer stored under an idempotency key for a request with this fingerprint, replayed; a 409
 * when the key was used for a different request; undefined when the key is new (or expired).
 */
export async function earlierAnswer(
  deps: Deps,
  orgId: string,
  key: string,
  fingerprint: string,
): Promise<CheckAnswer | undefined> {
  const earlier = await storedAnswer(deps, orgId, key);
  return earlier ? replay(earlier.fingerprint, fingerprint, earlier.response) : undefined;
}

async function storedAnswer(deps: Deps, orgId: string, key: string) {
  const since = new Date(deps.clock.nowMs() - IDEMPOTENCY_TTL_SECONDS * 1000);
  const [row] = await deps.database.db
    .select({ fingerprint: checkIdempotency.fingerprint, response: checkIdempotency.response })
    .from(checkIdempotency)
    .where(
      and(
        eq(checkIdempotency.orgId, orgId),
        eq(checkIdempotency.key, key),
        gt(checkIdempotency.createdAt, since),
      ),
    );
  return row;
}

function replay(storedFingerprint: string, fingerprint: string, response: unknown): CheckAnswer {
  if (storedFingerprint !== fingerprint) {
    throw new AppError(
      "conflict",
      "This idempotency key was used with different parameters; use a new key for a different request.",
    );
  }
  const json = response as { allowed: boolean; results: FeatureResult[]; rate?: RateHeaderState };
  return { allowed: json.allowed, results: json.results, rate: json.rate, replayed: true, degraded: false };
}

/** Another call holds the key: wait for its answer (briefly), then replay it. */
async function awaitReplay(
  deps: Deps,
  input: CheckInput,
  heldKey: string,
  fingerprint: string,
  held: string,
): Promise<CheckAnswer> {
  const deadline = performance.now() + 3000;
  let value = parseHeld(held, deps.clock.nowMs());
  for (;;) {
    if (value?.answer !== undefined) return replay(value.fingerprint, fingerprint, JSON.parse(value.answer));
    // A different request under the same key is refused at once, even while the first is running.
    if (value && value.fingerprint !== fingerprint) return replay(value.fingerprint, fingerprint, {});
    if (value === undefined) {
      const earlier = await storedAnswer(deps, input.orgId, input.idempotencyKey as string);
      if (earlier) return replay(earlier.fingerprint, fingerprint, earlier.response);
    }
    if (performance.now() > deadline) {
      throw new AppError(
        "conflict",
        "A request with this idempotency key is still in progress; retry shortly.",
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
    const raw = await deps.counters.recall(heldKey);
    value = raw === null ? undefined : parseHeld(raw, deps.clock.nowMs());
  }
}

/**
 * What the counter store holds under an idempotency key: `p:<expires>:<fingerprint>` while the first
 * call runs, `d:<expires>:<fingerprint>:<answer JSON>` once answered. The expiry is on the app clock
 * (the store's own TTL runs on real time, which the test clock does not move); an expired value is
 * treated as absent, here and in the store's atomic claim.
 */
function parseHeld(value: string, nowMs: number): { fingerprint: string; answer?: string } | undefined {
  const match = /^([pd]):(\d+):([0-9a-f]+)(?::([\s\S]*))?$/.exec(value);
  if (!match || Number(match[2]) <= nowMs) return undefined;
  return match[1] === "d"
    ? { fingerprint: match[3] as string, answer: match[4] ?? "null" }
    : { fingerprint: match[3] as string };
}

/** What is stored under the call's idempotency key: its answer, or the whole request's. */
function storedForm(input: CheckInput, answer: CheckAnswer) {
  return toJson(input.idempotency ? input.idempotency.whole(answer) : answer);
}

/** The stored (and replayed) form of an answer. */
function toJson(answer: CheckAnswer) {
  return { allowed: answer.allowed, results: answer.results, ...(answer.rate ? { rate: answer.rate } : {}) };
}

// The writer and the journal are created lazily per deps (closed by closeMetering).

const journals = new WeakMap<Deps, UsageJournal>();

/** The usage journal, with Redis (without it, counters live in one process: nothing to journal). */
export function usageJournal(deps: Deps): UsageJournal | undefined {
  if (deps.counters.kind !== "redis") return undefined;
  let journal = journals.get(deps);
  if (!journal) {
    journal = createUsageJournal({ database: deps.database, counters: deps.counters, logger: deps.logger });
    journals.set(deps, journal);
  }
  return journal;
}

const writers = new WeakMap<Deps, UsageWriter>();

export function usageWriter(deps: Deps): UsageWriter {
  let writer = writers.get(deps);
  if (!writer) {
    writer = createUsageWriter({ database: deps.database, logger: deps.logger });
    writers.set(deps, writer);
  }
  return writer;
}

/** For closeDeps: commits whatever usage is still queued. */
export async function closeMetering(deps: Deps): Promise<void> {
  await Promise.all([writers.get(deps)?.close(), journals.get(deps)?.close()]);
}
