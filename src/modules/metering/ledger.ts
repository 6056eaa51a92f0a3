import { type SQL, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { newId } from "../../lib/ids.js";
import { microsToText, numericToMicros, toMicros } from "./quantities.js";

/**
 * The SQL that makes usage durable, shared by checks (through the writer) and event ingest:
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
  thresholds: ThresholdSpec[];
}

const periodKey = (orgId: string, meter: string, periodStartMs: number) =>
  `${orgId}\u0000${meter}\u0000${periodStartMs}`;

/**
 * Adds to period totals and records each threshold crossed, exactly once per threshold and period:
 * row locks serialise the updates, so exactly one transaction sees the total pass a threshold, and a
 * unique index backs that up. Returns how many crossings were recorded.
 */
export async function addToPeriods(tx: Database, deltas: PeriodDelta[]): Promise<number> {
  if (deltas.length === 0) return 0;
  const merged = new Map<string, { delta: bigint; specs: Map<string, ThresholdSpec>; first: PeriodDelta }>();
  for (const delta of deltas) {
    const key = periodKey(delta.orgId, delta.meter, delta.periodStartMs);
    let entry = merged.get(key);
    if (!entry) {
      entry = { delta: 0n, specs: new Map(), first: delta };
      merged.set(key, entry);
    }
    entry.delta += toMicros(delta.quantity);
    for (const spec of delta.thresholds) entry.specs.set(spec.feature, spec);
  }
  // Sorted so that concurrent transactions lock rows in the same order (no deadlocks).
  const rows = [...merged.values()].sort((a, b) =>
    periodKey(a.first.orgId, a.first.meter, a.first.periodStartMs) <
    periodKey(b.first.orgId, b.first.meter, b.first.periodStartMs)
      ? -1
      : 1,
  );
  const result = await tx.execute(sql`
    insert into usage_periods (org_id, meter, period_start, quantity)
    select * from unnest(
      ${textArray(rows.map((r) => r.first.orgId))}::text[],
      ${textArray(rows.map((r) => r.first.meter))}::text[],
      ${textArray(rows.map((r) => new Date(r.first.periodStartMs).toISOString()))}::timestamptz[],
      ${textArray(rows.map((r) => microsToText(r.delta)))}::numeric[])
    on conflict (org_id, meter, period_start) do update
      set quantity = usage_periods.quantity + excluded.quantity, updated_at = now()
    returning org_id, meter, period_start, quantity::text as quantity`);
  const totals = new Map<string, string>();
  for (const row of (result as unknown as { rows: Record<string, unknown>[] }).rows) {
    const start =
      row.period_start instanceof Date ? row.period_start.getTime() : Date.parse(String(row.period_start));
    totals.set(periodKey(String(row.org_id), String(row.meter), start), String(row.quantity));
  }

  const crossings: {
    orgId: string;
    feature: string;
    periodStartMs: number;
    threshold: number;
    limit: number;
    quantity: string;
  }[] = [];
  for (const row of rows) {
    if (row.specs.size === 0) continue;
    const total = totals.get(periodKey(row.first.orgId, row.first.meter, row.first.periodStartMs));
    if (total === undefined) continue;
    const after = numericToMicros(total);
    const before = after - row.delta;
    for (const spec of row.specs.values()) {
      const limit = toMicros(String(spec.limit));
      for (const threshold of spec.thresholds) {
        // Crossed when before < limit × t% <= after, compared ×100 to stay in integers.
        const mark = limit * BigInt(threshold);
        if (before * 100n < mark && after * 100n >= mark) {
          crossings.push({
            orgId: row.first.orgId,
            feature: spec.feature,
            periodStartMs: row.first.periodStartMs,
            threshold,
            limit: spec.limit,
            quantity: total,
          });
        }
      }
    }
  }
  if (crossings.length === 0) return 0;
  await tx.execute(sql`
    insert into threshold_events (id, org_id, feature, period_start, threshold, "limit", quantity)
    select * from unnest(
      ${textArray(crossings.map(() => newId("threshold")))}::text[],
      ${textArray(crossings.map((c) => c.orgId))}::text[],
      ${textArray(crossings.map((c) => c.feature))}::text[],
      ${textArray(crossings.map((c) => new Date(c.periodStartMs).toISOString()))}::timestamptz[],
      ${textArray(crossings.map((c) => String(c.threshold)))}::int[],
      ${textArray(crossings.map((c) => String(c.limit)))}::numeric[],
      ${textArray(crossings.map((c) => c.quantity))}::numeric[])
    on conflict (org_id, feature, period_start, threshold) do nothing`);
  return crossings.length;
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
    else out += `"${value.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
  }
  return `${out}}`;
}
