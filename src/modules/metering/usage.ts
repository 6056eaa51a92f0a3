import { Decimal } from "decimal.js";
import { and, eq, sql } from "drizzle-orm";
import { allocations, usagePeriods } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import type { Meter } from "../catalog/schema.js";
import { type OrgPlan, orgPlan } from "../plans/subscriptions.js";
import { catalogIndex, grantOf } from "./features.js";

/**
 * Reading usage: an org's entitlements with what is used, a meter's aggregate for a billing period,
 * and usage series. Everything reads the hourly rollups (or the period totals), never raw events, so
 * a read costs the same with ten events or ten million.
 */

const _rowsOf = <T>(result: unknown) => (result as { rows: T[] }).rows;

/**
 * A meter's aggregate over one billing period [start, end), exactly as the spec defines it. Returned
 * as a decimal string (weighted_sum divides, and is given to 20 significant digits).
 */
export async function aggregatePeriod(
  deps: Deps,
  orgId: string,
  meter: Meter,
  period: { startMs: number; endMs: number },
): Promise<string> {
  const start = new Date(period.startMs).toISOString();
  const db = deps.database;
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
        where org_id = ${orgId} and meter = ${meter.key} and period_start = ${start}`);
      return normalise(row?.value ?? "0");
    }
    case "latest": {
      const [row] = await db.query<{ value: string | null }>(sql`
        select latest_value::text as value from usage_rollups
        where org_id = ${orgId} and meter = ${meter.key} and period_start = ${start} and latest_at is not null
        order by latest_at desc, bucket desc limit 1`);
      return normalise(row?.value ?? "0");
    }
    case "unique_count": {
      // Recurring: a value seen in any earlier period still counts (say, seats that stay assigned).
      const [row] = await db.query<{ value: string }>(
        meter.recurring
          ? sql`select count(distinct value)::text as value from usage_uniques
                where org_id = ${orgId} and meter = ${meter.key} and period_start <= ${start}`
          : sql`select count(*)::text as value from usage_uniques
                where org_id = ${orgId} and meter = ${meter.key} and period_start = ${start}`,
      );
      return row?.value ?? "0";
    }
    case "weighted_sum": {
      const [row] = await db.query<{ carried: string | null; sum: string | null; svt: string | null }>(sql`
        select
          (select sum(sum) from usage_rollups
            where org_id = ${orgId} and meter = ${meter.key} and period_start < ${start})::text as carried,
          sum(sum)::text as sum, sum(sum_value_time)::text as svt
        from usage_rollups where org_id = ${orgId} and meter = ${meter.key} and period_start = ${start}`);
      const carried = meter.recurring ? new Decimal(row?.carried ?? 0) : new Decimal(0);
      return weightedAverage(
        carried,
        new Decimal(row?.sum ?? 0),
        new Decimal(row?.svt ?? 0),
        period,
      ).toString();
    }
  }
}

/**
 * Σ(level × seconds held) / seconds, for a level starting at `start` and changed by deltas whose
 * values total `sum` and whose Σ value × time (epoch seconds) is `svt`: each delta v at t holds for
 * (end − t), so the integral is start × (end − begin) + end × sum − svt.
 */
function weightedAverage(
  start: Decimal,
  sum: Decimal,
  svt: Decimal,
  span: { startMs: number; endMs: number },
) {
  const begin = new Decimal(span.startMs).div(1000);
  const end = new Decimal(span.endMs).div(1000);
  const seconds = end.minus(begin);
  const integral = start.times(seconds).plus(end.times(sum)).minus(svt);
  return integral.div(seconds).toSignificantDigits(20);
}

const normalise = (text: string) => new Decimal(text).toString();

/** Every feature of the catalog as the org's plan grants it, with what is used now. */
export async function entitlementsOf(deps: Deps, orgId: string) {
  const nowMs = deps.clock.nowMs();
  const org = await orgPlan(deps, orgId, nowMs);
  if (!org) throw new AppError("not_found", `No organization ${orgId}.`);
  const start = new Date(org.period.startMs);
  const [periodRows, allocationRows] = await Promise.all([
    deps.database.db
      .select({ meter: usagePeriods.meter, quantity: usagePeriods.quantity })
      .from(usagePeriods)
      .where(and(eq(usagePeriods.orgId, orgId), eq(usagePeriods.periodStart, start))),
    deps.database.db
      .select({ feature: allocations.feature, value: allocations.value })
      .from(allocations)
      .where(eq(allocations.orgId, orgId)),
  ]);
  const used = new Map(periodRows.map((r) => [r.meter, Number(r.quantity)]));
  const allocated = new Map(allocationRows.map((r) => [r.feature, r.value]));
  const rateRemaining = await ratesRemaining(deps, org, nowMs);
  const resetsAt = new Date(org.period.endMs).toISOString();

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
    current_period_start: start.toISOString(),
    current_period_end: resetsAt,
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
        key: `r:${org.orgId}:${feature}`,
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
  const toMs = input.to ? Date.parse(input.to) : nowMs;
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
  return { meter, fromMs, toMs, granularity };
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
  const first = truncate(fromMs, granularity);
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
  const series: { start: string; value: string }[] = [];
  let level = new Decimal(0);
  let periodStart: number | undefined;
  let i = 0;
  // Levels before the first bucket.
  for (; i < rows.length && ms((rows[i] as (typeof rows)[number]).bucket) < first; i++) {
    const row = rows[i] as (typeof rows)[number];
    if (!meter.recurring && periodStart !== ms(row.period_start)) {
      level = new Decimal(0);
      periodStart = ms(row.period_start);
    }
    level = level.plus(row.sum);
  }
  for (let b = first; b < toMs; b = nextBucket(b, granularity)) {
    const end = nextBucket(b, granularity);
    let sum = new Decimal(0);
    let svt = new Decimal(0);
    let startLevel = level;
    for (; i < rows.length && ms((rows[i] as (typeof rows)[number]).bucket) < end; i++) {
      const row = rows[i] as (typeof rows)[number];
      if (!meter.recurring && periodStart !== undefined && periodStart !== ms(row.period_start)) {
        // A new period starts inside this bucket: its level restarts at 0 (approximated at the bucket's start).
        startLevel = new Decimal(0);
        sum = new Decimal(0);
        svt = new Decimal(0);
      }
      periodStart = ms(row.period_start);
      sum = sum.plus(row.sum);
      svt = svt.plus(row.svt);
    }
    series.push({
      start: new Date(b).toISOString(),
      value: weightedAverage(startLevel, sum, svt, { startMs: b, endMs: end }).toString(),
    });
    level = startLevel.plus(sum);
  }
  return series;
}

/** The series as CSV (one meter, or every meter of the catalog). */
export function seriesCsv(rows: { meter: string; start: string; value: string }[]): string {
  const lines = ["meter,start,value"];
  for (const row of rows) lines.push(`${row.meter},${row.start},${row.value}`);
  return `${lines.join("\r\n")}\r\n`;
}
