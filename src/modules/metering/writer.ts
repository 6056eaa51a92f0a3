import { sql } from "drizzle-orm";
import type { DatabaseHandle } from "../../db/client.js";
import type { Logger } from "../../lib/logger.js";
import {
  isoCache,
  type PeriodDelta,
  PerOrg,
  periodTotalsAndThresholds,
  ROLLUP_MERGE,
  type ThresholdMark,
  type ThresholdSpec,
  textArray,
} from "./ledger.js";
import { microsToText, toMicros } from "./quantities.js";

/**
 * Group commit for consumption decided on the hot path. A check that consumes is answered only once
 * its usage is committed to Postgres — so a crash never loses acknowledged usage — but checks do not
 * each pay for a transaction: everything that arrives while one flush runs goes into the next, one
 * transaction for the whole batch (a few rows: usage is summed per org, meter and hour).
 */

export interface ConsumedUsage extends PeriodDelta {
  /** When it was consumed (for the hourly rollup). */
  atMs: number;
  /** Added to the rollup's count: units for count meters, 1 for sum meters. */
  count: string;
  /** Added to the rollup's sum: the amount. */
  sum: string;
}

export interface AllocationDelta {
  orgId: string;
  feature: string;
  delta: number;
}

export interface IdempotentAnswer {
  orgId: string;
  key: string;
  fingerprint: string;
  response: unknown;
  /** When it was answered, on the app clock (keys are remembered 24 hours of that clock). */
  atMs: number;
}

export interface UsageWrite {
  usage: ConsumedUsage[];
  allocations: AllocationDelta[];
  answer?: IdempotentAnswer | undefined;
}

interface Pending {
  write: UsageWrite;
  resolve: () => void;
  reject: (error: Error) => void;
}

export interface UsageWriter {
  /** Resolves once the write is committed (with whatever else was waiting); rejects if the batch failed. */
  write(write: UsageWrite): Promise<void>;
  /** Waits for everything queued so far. */
  flush(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Batches committing at once. One: while a batch commits, the next one gathers everything that
 * arrives, so a busier writer makes fewer, larger statements. Measured on the check benchmark, two or
 * four batches in flight were slower than one (they contend in Postgres — on the hot period rows and
 * at commit — more than they overlap); sharding them by org so they share no rows did not help either
 * (docs/benchmarks.md). Each batch locks its rows in one sorted order, so raising this cannot deadlock.
 */
const MAX_IN_FLIGHT = 1;

export function createUsageWriter(options: { database: DatabaseHandle; logger: Logger }): UsageWriter {
  const { database, logger } = options;
  let queue: Pending[] = [];
  const running = new Set<Promise<void>>();
  let scheduled = false;
  let closed = false;

  // Writes arriving in the same turn of the event loop share a batch.
  const schedule = () => {
    if (scheduled || queue.length === 0 || running.size >= MAX_IN_FLIGHT) return;
    scheduled = true;
    setImmediate(() => {
      scheduled = false;
      if (queue.length === 0 || running.size >= MAX_IN_FLIGHT) return;
      const batch = queue;
      queue = [];
      const run = runBatch(batch).finally(() => {
        running.delete(run);
        schedule();
      });
      running.add(run);
      schedule();
    });
  };

  async function runBatch(batch: Pending[]) {
    try {
      await commit(
        database,
        batch.map((p) => p.write),
      );
      for (const pending of batch) pending.resolve();
    } catch (error) {
      logger.error({ err: error, writes: batch.length }, "committing consumed usage failed");
      for (const pending of batch) pending.reject(error as Error);
    }
  }

  return {
    write(write) {
      if (closed) return Promise.reject(new Error("the usage writer is closed"));
      return new Promise<void>((resolve, reject) => {
        queue.push({ write, resolve, reject });
        schedule();
      });
    },
    async flush() {
      while (running.size > 0 || queue.length > 0 || scheduled) {
        schedule();
        if (running.size > 0) await Promise.all(running);
        else await new Promise((resolve) => setImmediate(resolve));
      }
    },
    async close() {
      closed = true;
      await this.flush();
    },
  };
}

/**
 * One statement, so one round trip and atomic on its own: hourly rollups, period totals, the
 * thresholds the new totals cross (each recorded once: the period row is locked while its new total
 * is compared), allocations and idempotent answers.
 */
async function commit(database: DatabaseHandle, writes: UsageWrite[]): Promise<void> {
  await commitStatement(database, writes, undefined);
}

/** Commits a journal's entries `firstSeq`..`lastSeq` once (see journal.ts), by the journal's holder. */
export interface JournalGuard {
  journalId: string;
  /** The holder's epoch: a journal taken over since then refuses the commit. */
  epoch: number;
  firstSeq: number;
  lastSeq: number;
  /** Everything the journal acknowledged before this real epoch ms is committed with this batch. */
  throughMs: number;
}

/**
 * Commits journaled usage if, and only if, the journal is still held at `epoch` and none of these
 * entries is committed yet — atomically with advancing the journal's committed seq, so a batch whose
 * commit's reply was lost, or that another process swept meanwhile, is never counted twice.
 * Returns whether it committed.
 */
export async function commitJournalBatch(
  database: DatabaseHandle,
  usage: ConsumedUsage[],
  guard: JournalGuard,
): Promise<boolean> {
  return commitStatement(database, [{ usage, allocations: [] }], guard);
}

async function commitStatement(
  database: DatabaseHandle,
  writes: UsageWrite[],
  guard: JournalGuard | undefined,
): Promise<boolean> {
  const usage = writes.flatMap((w) => w.usage);
  const periods = mergePeriods(usage);
  const rollups = mergeRollups(usage);
  const marks: ThresholdMark[] = periods.flatMap((p) =>
    [...p.specs.values()].flatMap((spec) =>
      spec.thresholds.map((threshold) => ({ ...p.key, feature: spec.feature, limit: spec.limit, threshold })),
    ),
  );
  const allocations = mergeAllocations(writes.flatMap((w) => w.allocations));
  const answers = firstAnswers(writes);
  const iso = isoCache();
  // With a guard, every row of the statement comes from usage_in or period_in, and both are empty
  // unless the guard's update went through.
  const guardCte = guard
    ? sql`guard as (
      update usage_journals
        set committed_seq = ${guard.lastSeq},
          committed_through_ms = greatest(committed_through_ms, ${guard.throughMs}::bigint),
          heartbeat_at = now()
        where journal_id = ${guard.journalId} and epoch = ${guard.epoch} and committed_seq < ${guard.firstSeq}
        returning 1
    ), `
    : sql``;
  const guarded = guard ? sql` where exists (select 1 from guard)` : sql``;
  const [row] = await database.query<{ done: number }>(
    sql`
    with ${guardCte}usage_in as (
      select * from unnest(
        ${textArray(rollups.map((r) => r.orgId))}::text[],
        ${textArray(rollups.map((r) => r.meter))}::text[],
        ${textArray(rollups.map((r) => iso(r.periodStartMs)))}::timestamptz[],
        ${textArray(rollups.map((r) => iso(r.bucketMs)))}::timestamptz[],
        ${textArray(rollups.map((r) => r.count))}::numeric[],
        ${textArray(rollups.map((r) => r.sum))}::numeric[],
        ${textArray(rollups.map((r) => r.sumValueTime))}::numeric[]
      ) as t(org_id, meter, period_start, bucket, count, sum, sum_value_time)${guarded}
    ), rollups as (
      insert into usage_rollups (org_id, meter, period_start, bucket, count, sum, min, max, latest_at, latest_value, sum_value_time)
      select org_id, meter, period_start, bucket, count, sum,
        null::numeric, null::numeric, null::timestamptz, null::numeric, sum_value_time
      from usage_in
      -- Rows locked in the order event ingest locks them (the database's collation): no deadlock.
      order by 1, 2, 3, 4
      ${ROLLUP_MERGE}
    ), period_in as (
      select * from unnest(
        ${textArray(periods.map((p) => p.key.orgId))}::text[],
        ${textArray(periods.map((p) => p.key.meter))}::text[],
        ${textArray(periods.map((p) => iso(p.key.periodStartMs)))}::timestamptz[],
        ${textArray(periods.map((p) => p.delta))}::numeric[]) as t(org_id, meter, period_start, delta)${guarded}
    ), ${periodTotalsAndThresholds(marks, iso)}, allocated as (
      insert into allocations (org_id, feature, value)
      select * from unnest(
        ${textArray(allocations.map((a) => a.orgId))}::text[],
        ${textArray(allocations.map((a) => a.feature))}::text[],
        ${textArray(allocations.map((a) => String(a.delta)))}::bigint[])
      on conflict (org_id, feature) do update
        set value = greatest(allocations.value + excluded.value, 0), updated_at = now()
    ), answered as (
      insert into check_idempotency (org_id, key, fingerprint, response, created_at)
      select org_id, key, fingerprint, response::jsonb, created_at from unnest(
        ${textArray(answers.map((a) => a.orgId))}::text[],
        ${textArray(answers.map((a) => a.key))}::text[],
        ${textArray(answers.map((a) => a.fingerprint))}::text[],
        ${textArray(answers.map((a) => JSON.stringify(a.response)))}::text[],
        ${textArray(answers.map((a) => iso(a.atMs)))}::timestamptz[]
      ) as t(org_id, key, fingerprint, response, created_at)
      -- A key older than 24 hours is free again: its new answer replaces the old one.
      on conflict (org_id, key) do update
        set fingerprint = excluded.fingerprint, response = excluded.response, created_at = excluded.created_at
        where check_idempotency.created_at <= excluded.created_at - interval '24 hours' 
    )
    select ${guard ? sql`(select count(*) from guard)::int` : sql`1`} as done`,
    // Prepared once per connection: planning this statement costs about as much as running it.
    { name: guard ? "tollgate_commit_journal" : "tollgate_commit_usage" },
  );
  return Number(row?.done) === 1;
}

const HOUR_MS = 3_600_000;

interface RollupRow {
  orgId: string;
  meter: string;
  periodStartMs: number;
  bucketMs: number;
  count: string;
  sum: string;
  /** Σ sum × epoch seconds of each consumption (the weighted_sum aggregation), exact. */
  sumValueTime: string;
}

/**
 * One row per (org, meter, period, hour), summed here rather than in Postgres: a batch of thousands
 * of checks becomes about one row per org. (The statement orders the rows it locks itself.)
 * Exact: counts and sums in micro-units, sum × time in 10⁻⁹ (micro-units × milliseconds) — the
 * same value Postgres computes as `sum * extract(epoch from at)`, whose epoch has millisecond
 * precision here.
 */
function mergeRollups(usage: ConsumedUsage[]): RollupRow[] {
  interface Row {
    orgId: string;
    meter: string;
    periodStartMs: number;
    bucketMs: number;
    count: ExactSum;
    sum: ExactSum;
    /** Σ sum × (at − bucket start), ms; Σ sum × at = this + bucket start × Σ sum. */
    sumOffset: ExactSum;
  }
  const rows = new PerOrg<Row>();
  for (const u of usage) {
    const bucketMs = Math.floor(u.atMs / HOUR_MS) * HOUR_MS;
    const row = rows.get(
      u.orgId,
      (r) => r.bucketMs === bucketMs && r.meter === u.meter && r.periodStartMs === u.periodStartMs,
      () => ({
        orgId: u.orgId,
        meter: u.meter,
        periodStartMs: u.periodStartMs,
        bucketMs,
        count: new ExactSum(),
        sum: new ExactSum(),
        sumOffset: new ExactSum(),
      }),
    );
    row.count.addText(u.count);
    const sum = row.sum.addText(u.sum);
    const offset = u.atMs - bucketMs;
    const product = typeof sum === "number" ? sum * offset : undefined;
    if (product !== undefined && Number.isSafeInteger(product)) row.sumOffset.add(product);
    else row.sumOffset.addBig(BigInt(sum) * BigInt(offset));
  }
  return rows.all.map((r) => {
    const sum = r.sum.value();
    return {
      orgId: r.orgId,
      meter: r.meter,
      periodStartMs: r.periodStartMs,
      bucketMs: r.bucketMs,
      count: microsToText(r.count.value()),
      sum: microsToText(sum),
      sumValueTime: scaledToText(sum * BigInt(r.bucketMs) + r.sumOffset.value(), 9),
    };
  });
}

/**
 * A decimal text of at most 9 integer and 6 fractional digits (no sign) in micro-units, or undefined
 * for anything else: read digit by digit, without a regex match per entry.
 */
export function smallMicros(text: string): number | undefined {
  const length = text.length;
  let whole = 0;
  let i = 0;
  for (; i < length; i++) {
    const digit = text.charCodeAt(i) - 48;
    if (digit < 0 || digit > 9) break;
    whole = whole * 10 + digit;
  }
  if (i === 0 || i > 9) return undefined;
  if (i === length) return whole * 1_000_000;
  if (text.charCodeAt(i) !== 46 /* . */) return undefined;
  let fraction = 0;
  let digits = 0;
  for (i++; i < length; i++, digits++) {
    const digit = text.charCodeAt(i) - 48;
    if (digit < 0 || digit > 9) return undefined;
    fraction = fraction * 10 + digit;
  }
  if (digits === 0 || digits > 6) return undefined;
  return whole * 1_000_000 + fraction * 10 ** (6 - digits);
}

/**
 * An exact sum of micro-units: added as plain numbers while it stays a safe integer (the common
 * case: a commit sums about a thousand small quantities), in a BigInt beyond. BigInt arithmetic on
 * every entry made merging a commit a visible pause in the event loop.
 */
class ExactSum {
  private small = 0;
  private big = 0n;

  /** Adds a decimal text (≤ 6 decimals) in micro-units; returns what it added, as a number when safe. */
  addText(text: string): number | bigint {
    const small = smallMicros(text);
    if (small !== undefined) {
      this.add(small);
      return small;
    }
    const micros = toMicros(text);
    this.addBig(micros);
    return micros;
  }

  /** Adds a safe integer. */
  add(value: number): void {
    const next = this.small + value;
    if (Number.isSafeInteger(next)) this.small = next;
    else {
      this.big += BigInt(this.small) + BigInt(value);
      this.small = 0;
    }
  }

  addBig(value: bigint): void {
    this.big += value;
  }

  value(): bigint {
    return this.big + BigInt(this.small);
  }
}

/** A whole number of 10⁻ᵈ units as a decimal string. */
function scaledToText(value: bigint, decimals: number): string {
  const negative = value < 0n;
  const digits = (negative ? -value : value).toString().padStart(decimals + 1, "0");
  const int = digits.slice(0, -decimals);
  const frac = digits.slice(-decimals).replace(/0+$/, "");
  return `${negative ? "-" : ""}${int}${frac ? `.${frac}` : ""}`;
}

interface PeriodKey {
  orgId: string;
  meter: string;
  periodStartMs: number;
}

/** One row per (org, meter, period), sorted; the delta summed exactly (micro-units). */
function mergePeriods(usage: ConsumedUsage[]) {
  interface Entry {
    id: string;
    key: PeriodKey;
    micros: ExactSum;
    specs: Map<string, ThresholdSpec>;
  }
  const entries = new PerOrg<Entry>();
  for (const u of usage) {
    const entry = entries.get(
      u.orgId,
      (e) => e.key.meter === u.meter && e.key.periodStartMs === u.periodStartMs,
      () => ({
        // The lock order: rows sorted by this.
        id: `${u.orgId}\u0000${u.meter}\u0000${u.periodStartMs}`,
        key: { orgId: u.orgId, meter: u.meter, periodStartMs: u.periodStartMs },
        micros: new ExactSum(),
        specs: new Map(),
      }),
    );
    entry.micros.addText(u.quantity);
    for (const spec of u.thresholds) entry.specs.set(spec.feature, spec);
  }
  return entries.all
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    .map((e) => ({ key: e.key, delta: microsToText(e.micros.value()), specs: e.specs }));
}

/**
 * One answer per (org, key), the first: two calls with one key can meet in a batch when the first's
 * claim ran out while its commit waited, and one statement may not update a row twice.
 */
function firstAnswers(writes: UsageWrite[]): IdempotentAnswer[] {
  const first = new Map<string, IdempotentAnswer>();
  for (const { answer } of writes) {
    const key = answer ? `${answer.orgId}\u0000${answer.key}` : undefined;
    if (answer && key !== undefined && !first.has(key)) first.set(key, answer);
  }
  return [...first.values()];
}

/** One row per (org, feature), sorted, so concurrent batches lock in the same order. */
function mergeAllocations(deltas: AllocationDelta[]): AllocationDelta[] {
  const merged = new Map<string, AllocationDelta>();
  for (const d of deltas) {
    const key = `${d.orgId}\u0000${d.feature}`;
    const existing = merged.get(key);
    if (existing) existing.delta += d.delta;
    else merged.set(key, { ...d });
  }
  return [...merged.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([, d]) => d);
}
