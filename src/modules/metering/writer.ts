import { sql } from "drizzle-orm";
import type { DatabaseHandle } from "../../db/client.js";
import type { Logger } from "../../lib/logger.js";
import { addToPeriods, type PeriodDelta, ROLLUP_MERGE, textArray } from "./ledger.js";

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

export function createUsageWriter(options: { database: DatabaseHandle; logger: Logger }): UsageWriter {
  const { database, logger } = options;
  let queue: Pending[] = [];
  let running: Promise<void> | undefined;
  let closed = false;

  const schedule = () => {
    if (running || queue.length === 0) return;
    running = new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => runBatch())
      .finally(() => {
        running = undefined;
        schedule();
      });
  };

  async function runBatch() {
    const batch = queue;
    queue = [];
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
      while (running || queue.length > 0) {
        schedule();
        await running;
      }
    },
    async close() {
      closed = true;
      await this.flush();
    },
  };
}

async function commit(database: DatabaseHandle, writes: UsageWrite[]): Promise<void> {
  const usage = writes.flatMap((w) => w.usage);
  const allocations = mergeAllocations(writes.flatMap((w) => w.allocations));
  const answers = writes.flatMap((w) => (w.answer ? [w.answer] : []));
  await database.db.transaction(async (tx) => {
    if (usage.length > 0) {
      await tx.execute(sql`
        insert into usage_rollups (org_id, meter, period_start, bucket, count, sum, min, max, latest_at, latest_value, sum_value_time)
        select org_id, meter, period_start, date_trunc('hour', at, 'UTC') as bucket, sum(count), sum(sum),
          null::numeric, null::numeric, null::timestamptz, null::numeric, sum(sum * extract(epoch from at))
        from unnest(
          ${textArray(usage.map((u) => u.orgId))}::text[],
          ${textArray(usage.map((u) => u.meter))}::text[],
          ${textArray(usage.map((u) => new Date(u.periodStartMs).toISOString()))}::timestamptz[],
          ${textArray(usage.map((u) => new Date(u.atMs).toISOString()))}::timestamptz[],
          ${textArray(usage.map((u) => u.count))}::numeric[],
          ${textArray(usage.map((u) => u.sum))}::numeric[]) as t(org_id, meter, period_start, at, count, sum)
        group by 1, 2, 3, 4
        order by 1, 2, 3, 4
        ${ROLLUP_MERGE}`);
      await addToPeriods(tx, usage);
    }
    if (allocations.length > 0) {
      await tx.execute(sql`
        insert into allocations (org_id, feature, value)
        select * from unnest(
          ${textArray(allocations.map((a) => a.orgId))}::text[],
          ${textArray(allocations.map((a) => a.feature))}::text[],
          ${textArray(allocations.map((a) => String(a.delta)))}::bigint[])
        on conflict (org_id, feature) do update
          set value = greatest(allocations.value + excluded.value, 0), updated_at = now()`);
    }
    if (answers.length > 0) {
      await tx.execute(sql`
        insert into check_idempotency (org_id, key, fingerprint, response)
        select org_id, key, fingerprint, response::jsonb from unnest(
          ${textArray(answers.map((a) => a.orgId))}::text[],
          ${textArray(answers.map((a) => a.key))}::text[],
          ${textArray(answers.map((a) => a.fingerprint))}::text[],
          ${textArray(answers.map((a) => JSON.stringify(a.response)))}::text[]) as t(org_id, key, fingerprint, response)
        on conflict (org_id, key) do nothing`);
    }
  });
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
