import { type SQL, sql } from "drizzle-orm";
import { newId } from "../../lib/ids.js";

/**
 * Pieces of the SQL that makes usage durable, shared by checks (through the writer) and event ingest:
 * hourly rollups, period totals, threshold crossings. Postgres is the source of truth; the counter
 * store is rebuilt from `usage_periods` and `allocations` whenever it lacks a counter.
 */

/** Merges new hourly rollup rows into existing ones (the rows come grouped by key, sorted). */
export const ROLLUP_MERGE = sql`
  on conflict (org_id, meter, period_start, bucket) do update set
    count = usage_rollups.count + excluded.count,
    sum = usage_rollups.sum + excluded.sum,
    min = least(usage_rollups.min, excluded.min),
    max = greatest(usage_rollups.max, excluded.max),
    latest_value = case
      when usage_rollups.latest_at is null or excluded.latest_at >= usage_rollups.latest_at
        then coalesce(excluded.latest_value, usage_rollups.latest_value)
      else usage_rollups.latest_value end,
    latest_at = greatest(usage_rollups.latest_at, excluded.latest_at),
    sum_value_time = usage_rollups.sum_value_time + excluded.sum_value_time`;

/** One threshold of one metered feature that a period total may cross. */
export interface ThresholdMark {
  orgId: string;
  meter: string;
  periodStartMs: number;
  feature: string;
  limit: number;
  threshold: number;
}

/**
 * The CTEs `totals`, `marks` and `crossed`, for a statement that has already defined
 * `period_in(org_id, meter, period_start, delta)`: adds the deltas to the period totals (in sorted
 * order: concurrent statements lock rows alike) and records each threshold the new totals cross.
 * Exactly once: the period row stays locked while its new total is compared, and a unique index
 * backs that up.
 */
export function periodTotalsAndThresholds(marks: ThresholdMark[], iso: (ms: number) => string): SQL {
  return sql`totals as (
      insert into usage_periods (org_id, meter, period_start, quantity)
      select org_id, meter, period_start, delta from period_in
      order by 1, 2, 3
      on conflict (org_id, meter, period_start) do update
        set quantity = usage_periods.quantity + excluded.quantity, updated_at = now()
      returning org_id, meter, period_start, quantity
    ), marks as (
      select * from unnest(
        ${textArray(marks.map(() => newId("threshold")))}::text[],
        ${textArray(marks.map((m) => m.orgId))}::text[],
        ${textArray(marks.map((m) => m.meter))}::text[],
        ${textArray(marks.map((m) => iso(m.periodStartMs)))}::timestamptz[],
        ${textArray(marks.map((m) => m.feature))}::text[],
        ${textArray(marks.map((m) => String(m.threshold)))}::int[],
        ${textArray(marks.map((m) => String(m.limit)))}::numeric[]) as t(id, org_id, meter, period_start, feature, threshold, lim)
    ), crossed as (
      insert into threshold_events (id, org_id, feature, period_start, threshold, "limit", quantity)
      select m.id, m.org_id, m.feature, m.period_start, m.threshold, m.lim, t.quantity
      from marks m
      join totals t using (org_id, meter, period_start)
      join period_in d using (org_id, meter, period_start)
      -- Crossed when the total before this statement was below limit × t% and is now at or above it.
      where (t.quantity - d.delta) * 100 < m.lim * m.threshold and t.quantity * 100 >= m.lim * m.threshold
      -- No conflict target: the only other unique key is the fresh id, and a running process keeps
      -- working when this index changes under it (docs/operations.md, Migrations).
      on conflict do nothing
    )`;
}

/** A metered feature whose thresholds a period total may cross. */
export interface ThresholdSpec {
  feature: string;
  /** The limit in force (finite, > 0), as a decimal. */
  limit: number;
  thresholds: number[];
}

export interface PeriodDelta {
  orgId: string;
  meter: string;
  periodStartMs: number;
  /** Decimal text, ≤ 6 decimals. */
  quantity: string;
  /** Shared between entries (a grant's, see check.ts): never modified. */
  thresholds: readonly ThresholdSpec[];
}

/**
 * A text[] parameter. Arrays go to Postgres as one parameter each (`unnest`), so a batch of any size
 * is one statement with a fixed number of parameters.
 */
export function textArray(values: readonly (string | null)[]): SQL {
  return sql`${pgArray(values)}`;
}

/** The Postgres array literal for a list of texts (nulls allowed). */
export function pgArray(values: readonly (string | null)[]): string {
  let out = "{";
  for (let i = 0; i < values.length; i++) {
    if (i > 0) out += ",";
    const value = values[i];
    if (value === null || value === undefined) out += "NULL";
    // Most values need no escaping; checking first saves two regex passes per value on big batches.
    else if (value.indexOf('"') < 0 && value.indexOf("\\") < 0) out += `"${value}"`;
    else out += `"${value.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
  }
  return `${out}}`;
}

/**
 * Rows grouped per org, in order of creation: an org's few rows (a meter or two, an hour or two) are
 * scanned in place, so merging thousands of entries builds no composed key string per entry.
 */
export class PerOrg<T> {
  private readonly byOrg = new Map<string, T[]>();
  readonly all: T[] = [];

  /** The org's row that `same` picks, created by `create` when it has none. */
  get(orgId: string, same: (row: T) => boolean, create: () => T): T {
    let rows = this.byOrg.get(orgId);
    if (rows === undefined) {
      rows = [];
      this.byOrg.set(orgId, rows);
    }
    // Newest first: entries arrive roughly in time order, so the row they add to is usually the last.
    for (let i = rows.length - 1; i >= 0; i--) if (same(rows[i] as T)) return rows[i] as T;
    const row = create();
    rows.push(row);
    this.all.push(row);
    return row;
  }
}

/**
 * ISO texts of instants, each formatted once: per statement (a batch has few distinct hours and
 * periods), or kept by a module with `max` (emptied when it reaches that many).
 */
export function isoCache(max = Number.POSITIVE_INFINITY): (ms: number) => string {
  const cache = new Map<number, string>();
  return (ms) => {
    let text = cache.get(ms);
    if (text === undefined) {
      if (cache.size >= max) cache.clear();
      text = new Date(ms).toISOString();
      cache.set(ms, text);
    }
    return text;
  };
}
