import { Decimal } from "decimal.js";
import { eq, sql } from "drizzle-orm";
import { allocations } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import type { Interval, Meter } from "../catalog/schema.js";
import { periodAt } from "../plans/periods.js";
import { type OrgPlan, orgPlan } from "../plans/subscriptions.js";
import { periodTotals, usageJournal } from "./check.js";
import { catalogIndex, grantOf } from "./features.js";
import { rateKey } from "./keys.js";
import { microsToText } from "./quantities.js";

/**
 * Reading usage: an org's entitlements with what is used, a meter's aggregate for a billing period,
 * and usage series. Everything reads the hourly rollups (or the period totals), never raw events, so
 * a read costs the same with ten events or ten million. Each read first waits until the usage that
 * checks acknowledged before it is committed (journal.ts): reads see their own writes.
 */

/**
 * A meter's aggregate over one billing period [start, end), exactly as the spec defines it: the
 * rollups of every usage period that starts within it (one for a monthly plan, twelve for an annual
 * one). Returned as a decimal string (weighted_sum divides, and is given to 20 significant digits).
 */
export async function aggregatePeriod(
  deps: Deps,
  orgId: string,
  meter: Meter,
  period: { startMs: number; endMs: number },
): Promise<string> {
  await usageJournal(deps)?.awaitCommitted();
  const start = new Date(period.startMs).toISOString();
  const end = new Date(period.endMs).toISOString();
  const db = deps.database;
  const inPeriod = sql`period_start >= ${start} and period_start < ${end}`;
  switch (meter.aggregation) {
    case "count":
    case "sum":
    case "max":
    case "min": {
      const column = { count: sql`sum(count)`, sum: sql`sum(sum)`, max: sql`max(max)`, min: sql`min(min)` }[
        meter.aggregation
      ];
      const [row] = await db.query<{ value: string | null }>(sql`
        select (${column})::text as value from usage_rollups
        where org_id = ${orgId} and meter = ${meter.key} and ${inPeriod}`);
      return normalise(row?.value ?? "0");
    }
    case "latest": {
      const [row] = await db.query<{ value: string | null }>(sql`
        select latest_value::text as value from usage_rollups
        where org_id = ${orgId} and meter = ${meter.key} and ${inPeriod} and latest_at is not null
        order by latest_at desc, bucket desc limit 1`);
      return normalise(row?.value ?? "0");
    }
    case "unique_count": {
      // Recurring: a value seen in any earlier period still counts (say, seats that stay assigned).
      const [row] = await db.query<{ value: string }>(
        meter.recurring
          ? sql`select count(distinct value)::text as value from usage_uniques
                where org_id = ${orgId} and meter = ${meter.key} and period_start < ${end}`
          : sql`select count(distinct value)::text as value from usage_uniques
                where org_id = ${orgId} and meter = ${meter.key} and ${inPeriod}`,
      );
      return row?.value ?? "0";
    }
    case "weighted_sum": {
      const [row] = await db.query<{ carried: string | null; sum: string | null; svt: string | null }>(sql`
        select
          (select sum(sum) from usage_rollups
            where org_id = ${orgId} and meter = ${meter.key} and period_start < ${start})::text as carried,
          sum(sum)::text as sum, sum(sum_value_time)::text as svt
        from usage_rollups where org_id = ${orgId} and meter = ${meter.key} and ${inPeriod}`);
      const carried = meter.recurring ? new Exact(row?.carried ?? 0) : new Exact(0);
      return weightedAverage(carried, new Exact(row?.sum ?? 0), new Exact(row?.svt ?? 0), period).toFixed();
    }
  }
}

/**
 * Σ(level × seconds held) / seconds, for a level starting at `start` and changed by deltas whose
 * values total `sum` and whose Σ value × time (epoch seconds) is `svt`: each delta v at t holds for
 * (end − t), so the integral is start × (end − begin) + end × sum − svt.
 */
export function weightedAverage(
  start: Decimal,
  sum: Decimal,
  svt: Decimal,
  span: { startMs: number; endMs: number },
) {
  const begin = new Exact(span.startMs).div(1000);
  const end = new Exact(span.endMs).div(1000);
  const seconds = end.minus(begin);
  const integral = new Exact(start).times(seconds).plus(end.times(sum)).minus(svt);
  return integral.div(seconds).toSignificantDigits(20);
}

/**
 * Decimals with room for every digit of the integral (epoch seconds with milliseconds times values),
 * so that the only rounding is the final one to 20 significant digits.
 */
const Exact = Decimal.clone({ precision: 100 });

/** A numeric as a plain decimal string (never exponent notation, which Decimal uses below 1e-7). */
const normalise = (text: string) => new Decimal(text).toFixed();

/** Every feature of the catalog as the org's plan grants it, with what is used now. */
export async function entitlementsOf(deps: Deps, orgId: string) {
  const nowMs = deps.clock.nowMs();
  const org = await orgPlan(deps, orgId, nowMs);
  if (!org) throw new AppError("not_found", `No organization ${orgId}.`);
  const [totals, allocationRows] = await Promise.all([
    // Journaled usage not yet committed included: every process reads what any acknowledged.
    periodTotals(deps, orgId, org.period.startMs, undefined, { strict: false }),
    deps.database.db
      .select({ feature: allocations.feature, value: allocations.value })
      .from(allocations)
      .where(eq(allocations.orgId, orgId)),
  ]);
  const used = new Map([...totals].map(([meter, micros]) => [meter, Number(microsToText(micros))]));
  // Clamped: a release recorded while the counter store was away may overshoot (see check.ts).
  const allocated = new Map(allocationRows.map((r) => [r.feature, Math.max(0, r.value)]));
  const rateRemaining = await ratesRemaining(deps, org, nowMs);
  const resetsAt = new Date(org.period.endMs).toISOString();
  const billing = periodAt(org.anchorMs, org.interval, nowMs);

  const features = deps.catalog.features.map((feature) => {
    const grant = grantOf(deps.catalog, org.plan, feature);
    const common = { feature: feature.key, name: feature.name ?? feature.key, type: feature.type };
    switch (grant.type) {
      case "boolean":
        return {
          ...common,
          enabled: grant.enabled && org.entitled,
          limit: null,
          used: null,
          remaining: null,
          resets_at: null,
        };
      case "limit": {
        const value = allocated.get(feature.key) ?? 0;
        return {
          ...common,
          enabled: org.entitled && (grant.limit === null || grant.limit > 0),
          limit: grant.limit,
          used: value,
          remaining: grant.limit === null ? null : Math.max(0, grant.limit - value),
          resets_at: null,
        };
      }
      case "metered": {
        const value = used.get(grant.meter.key) ?? 0;
        return {
          ...common,
          enabled: org.entitled && (grant.limit === null || grant.limit > 0 || grant.overage === "allow"),
          limit: grant.limit,
          overage: grant.overage,
          meter: grant.meter.key,
          used: value,
          remaining: grant.limit === null ? null : Math.max(0, grant.limit - value),
          resets_at: resetsAt,
        };
      }
      default: {
        const remaining = rateRemaining.get(feature.key);
        return {
          ...common,
          enabled: org.entitled && grant.rate !== undefined,
          limit: grant.rate?.limit ?? null,
          window: grant.rate?.window ?? null,
          used: null,
          remaining: grant.rate ? (remaining ?? null) : null,
          resets_at: null,
        };
      }
    }
  });
  return {
    org_id: orgId,
    plan: org.planKey,
    plan_version: org.planVersion,
    status: org.status,
    current_period_start: new Date(billing.startMs).toISOString(),
    current_period_end: new Date(billing.endMs).toISOString(),
    usage_period_start: new Date(org.period.startMs).toISOString(),
    usage_period_end: resetsAt,
    features,
  };
}

/** What each rate feature has left right now (a zero-cost dry run); empty when the store is away. */
async function ratesRemaining(deps: Deps, org: OrgPlan, nowMs: number): Promise<Map<string, number>> {
  const rates = deps.catalog.features.flatMap((feature) => {
    const grant = grantOf(deps.catalog, org.plan, feature);
    return grant.type === "rate" && grant.rate ? [{ feature: feature.key, rate: grant.rate }] : [];
  });
  const remaining = new Map<string, number>();
  if (rates.length === 0) return remaining;
  try {
    const result = await deps.counters.apply(
      rates.map(({ feature, rate }) => ({
        kind: "rate" as const,
        key: rateKey(org.orgId, feature),
        limit: rate.limit,
        periodMs: rate.window_ms,
        cost: 0,
      })),
      nowMs,
      { dryRun: true },
    );
    if (result.status === "done") {
      result.outcomes.forEach((o, i) => {
        if (o.kind === "rate") remaining.set((rates[i] as { feature: string }).feature, o.remaining);
      });
    }
  } catch {
    // Unknown while the store is unreachable.
  }
  return remaining;
}

export const GRANULARITIES = ["hour", "day", "month"] as const;
export type Granularity = (typeof GRANULARITIES)[number];
const MAX_BUCKETS = 10_000;

function truncate(ms: number, granularity: Granularity): number {
  const d = new Date(ms);
  if (granularity === "hour")
    return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate(), d.getUTCHours());
  if (granularity === "day") return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate());
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1);
}

function nextBucket(ms: number, granularity: Granularity): number {
  const d = new Date(ms);
  if (granularity === "hour") return ms + 3_600_000;
  if (granularity === "day") return ms + 86_400_000;
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
}

export interface SeriesQuery {
  meter: Meter;
  /** The org's subscription anchor and interval: billing periods, where weighted levels restart. */
  anchorMs: number;
  interval: Interval;
  fromMs: number;
  toMs: number;
  granularity: Granularity;
}

/** Resolves the query's defaults (the open period up to now) and bounds. */
export async function resolveSeriesQuery(
  deps: Deps,
  orgId: string,
  input: {
    meter: string;
    from?: string | undefined;
    to?: string | undefined;
    granularity?: Granularity | undefined;
  },
): Promise<SeriesQuery> {
  const meter = catalogIndex(deps.catalog).meters.get(input.meter);
  if (!meter) {
    throw new AppError("validation_failed", `There is no meter ${input.meter} in the catalog.`, {
      errors: [
        {
          field: "meter",
          message: `no meter has the key "${input.meter}"`,
          code: "unknown_meter",
          location: "query",
        },
      ],
    });
  }
  const nowMs = deps.clock.nowMs();
  const org = await orgPlan(deps, orgId, nowMs);
  if (!org) throw new AppError("not_found", `No organization ${orgId}.`);
  const granularity = input.granularity ?? "day";
  const fromMs = input.from ? Date.parse(input.from) : org.period.startMs;
  // With no range at all, a period that starts this very millisecond is one bucket, not an error.
  const toMs = input.to ? Date.parse(input.to) : input.from ? nowMs : Math.max(nowMs, fromMs + 1);
  if (toMs <= fromMs) {
    throw new AppError("validation_failed", "`to` must be after `from`.", {
      errors: [{ field: "to", message: "must be after from", code: "invalid_range", location: "query" }],
    });
  }
  let buckets = 0;
  for (
    let b = truncate(fromMs, granularity);
    b < toMs && buckets <= MAX_BUCKETS;
    b = nextBucket(b, granularity)
  )
    buckets++;
  if (buckets > MAX_BUCKETS) {
    throw new AppError(
      "validation_failed",
      `The range spans more than ${MAX_BUCKETS} ${granularity}s; use a coarser granularity.`,
      {
        errors: [
          {
            field: "granularity",
            message: `too many buckets (more than ${MAX_BUCKETS})`,
            code: "too_many_buckets",
            location: "query",
          },
        ],
      },
    );
  }
  return { meter, fromMs, toMs, granularity, anchorMs: org.anchorMs, interval: org.interval };
}

/**
 * Usage per hour, day or month (UTC) between `from` and `to`, every bucket present (empty ones are 0).
 * Each bucket aggregates as its meter does: count and sum add up, max and min, latest is the last value
 * in the bucket, unique_count counts values first seen in the bucket (so buckets add up to the period's
 * count), and weighted_sum is the average level over the bucket.
 */
export async function usageSeries(
  deps: Deps,
  orgId: string,
  query: SeriesQuery,
): Promise<{ start: string; value: string }[]> {
  const { meter, fromMs, toMs, granularity } = query;
  await usageJournal(deps)?.awaitCommitted();
  const first = truncate(fromMs, granularity);
  const from = new Date(first).toISOString();
  const to = new Date(toMs).toISOString();
  const values = new Map<number, string>();
  const db = deps.database;
  const unit = sql.raw(`'${granularity}'`);
  const key = (v: unknown) => (v instanceof Date ? v.getTime() : Date.parse(String(v)));

  if (meter.aggregation === "unique_count") {
    const rows = await db.query<{ b: string; value: string }>(sql`
      select date_trunc(${unit}, first_seen_at, 'UTC') as b, count(*)::text as value from usage_uniques
      where org_id = ${orgId} and meter = ${meter.key} and first_seen_at >= ${from} and first_seen_at < ${to}
      group by 1`);
    for (const row of rows) values.set(key(row.b), row.value);
  } else if (meter.aggregation === "weighted_sum") {
    return weightedSeries(deps, orgId, query);
  } else {
    const column =
      meter.aggregation === "latest"
        ? sql`(array_agg(latest_value order by latest_at desc nulls last))[1]`
        : { count: sql`sum(count)`, sum: sql`sum(sum)`, max: sql`max(max)`, min: sql`min(min)` }[
            meter.aggregation
          ];
    const rows = await db.query<{ b: string; value: string | null }>(sql`
      select date_trunc(${unit}, bucket, 'UTC') as b, (${column})::text as value from usage_rollups
      where org_id = ${orgId} and meter = ${meter.key} and bucket >= ${from} and bucket < ${to}
      group by 1`);
    for (const row of rows) if (row.value !== null) values.set(key(row.b), normalise(row.value));
  }
  const series: { start: string; value: string }[] = [];
  for (let b = first; b < toMs; b = nextBucket(b, granularity)) {
    series.push({ start: new Date(b).toISOString(), value: values.get(b) ?? "0" });
  }
  return series;
}

/** weighted_sum per bucket: the level carried in (from the period's start, or all time if recurring). */
async function weightedSeries(deps: Deps, orgId: string, query: SeriesQuery) {
  const { meter, fromMs, toMs, granularity } = query;
  const rows = await deps.database.query<{
    bucket: string | Date;
    period_start: string | Date;
    sum: string;
    svt: string;
  }>(sql`
    select bucket, period_start, sum::text as sum, sum_value_time::text as svt from usage_rollups
    where org_id = ${orgId} and meter = ${meter.key} and bucket < ${new Date(toMs).toISOString()}
    order by bucket`);
  const ms = (v: string | Date) => (v instanceof Date ? v.getTime() : Date.parse(v));
  // Σ deltas so far per usage period: the level at a time is the sum over the periods of its billing
  // period (non-recurring: the level restarts at 0 each billing period) or over all (recurring).
  const cumulative = new Map<number, InstanceType<typeof Exact>>();
  const series: { start: string; value: string }[] = [];
  let i = 0;
  for (let b = truncate(fromMs, granularity); b < toMs; b = nextBucket(b, granularity)) {
    const end = nextBucket(b, granularity);
    const since = meter.recurring
      ? Number.NEGATIVE_INFINITY
      : periodAt(query.anchorMs, query.interval, b).startMs;
    const counts = (period: number) => period >= since;
    for (; i < rows.length && ms((rows[i] as (typeof rows)[number]).bucket) < b; i++) {
      const row = rows[i] as (typeof rows)[number];
      const period = ms(row.period_start);
      cumulative.set(period, (cumulative.get(period) ?? new Exact(0)).plus(row.sum));
    }
    let startLevel = new Exact(0);
    for (const [period, total] of cumulative) if (counts(period)) startLevel = startLevel.plus(total);
    let sum = new Exact(0);
    let svt = new Exact(0);
    for (; i < rows.length && ms((rows[i] as (typeof rows)[number]).bucket) < end; i++) {
      const row = rows[i] as (typeof rows)[number];
      const period = ms(row.period_start);
      cumulative.set(period, (cumulative.get(period) ?? new Exact(0)).plus(row.sum));
      // A bucket straddling a period boundary shows the new period (the old one's tail is left out).
      if (!counts(period)) continue;
      sum = sum.plus(row.sum);
      svt = svt.plus(row.svt);
    }
    series.push({
      start: new Date(b).toISOString(),
      value: weightedAverage(startLevel, sum, svt, { startMs: b, endMs: end }).toFixed(),
    });
  }
  return series;
}

/** The series as CSV (one meter, or every meter of the catalog). */
export function seriesCsv(rows: { meter: string; start: string; value: string }[]): string {
  const lines = ["meter,start,value"];
  for (const row of rows) lines.push(`${row.meter},${row.start},${row.value}`);
  return `${lines.join("\r\n")}\r\n`;
}
