import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/storage.js";
import { createLogger } from "../../lib/logger.js";
import { textArray } from "./ledger.js";
import { createUsageWriter, type UsageWrite, type UsageWriter } from "./writer.js";

/** The group-commit writer on its own, against each database the suite has. */
const modes = process.env.DATABASE_URL ? (["pglite", "postgres"] as const) : (["pglite"] as const);

describe.each(modes)("the usage writer (%s)", (mode) => {
  let db: TestDatabase;
  let writer: UsageWriter;
  const period = Date.UTC(2026, 10, 1);

  beforeAll(async () => {
    db = await createTestDatabase(mode);
    writer = createUsageWriter({ database: db.handle, logger: createLogger("silent") });
  });
  afterAll(async () => {
    await writer?.close();
    await db?.drop();
  });

  const use = (orgId: string, quantity: string, answerKey?: string, response?: unknown): UsageWrite => ({
    usage: [
      {
        orgId,
        meter: "kolekts",
        periodStartMs: period,
        atMs: period + 3_600_000,
        quantity,
        count: quantity,
        sum: quantity,
        thresholds: [],
      },
    ],
    allocations: [],
    ...(answerKey
      ? { answer: { orgId, key: answerKey, fingerprint: "f", response, atMs: period + 3_600_000 } }
      : {}),
  });

  const total = async (orgId: string) => {
    const [row] = await db.handle.query<{ quantity: string }>(
      sql`select quantity::text as quantity from usage_periods where org_id = ${orgId}`,
    );
    return row?.quantity;
  };

  it("commits concurrent writes together, summed per org and period", async () => {
    await Promise.all(Array.from({ length: 50 }, (_, i) => writer.write(use(`org_w${i % 5}`, "2"))));
    for (let i = 0; i < 5; i++) expect(await total(`org_w${i}`)).toBe("20");
  });

  it("keeps the first answer when two calls with one idempotency key meet in a batch", async () => {
    // One statement may not update a row twice: without this, the whole batch would fail.
    await Promise.all([
      writer.write(use("org_dup", "1", "key-1", { first: true })),
      writer.write(use("org_dup", "1", "key-1", { first: false })),
      writer.write(use("org_other", "1")),
    ]);
    expect(await total("org_dup")).toBe("2");
    expect(await total("org_other")).toBe("1");
    const answers = await db.handle.query<{ response: unknown }>(
      sql`select response from check_idempotency where org_id = 'org_dup' and key = 'key-1'`,
    );
    expect(answers).toEqual([{ response: { first: true } }]);
  });

  it("sums rollups per hour exactly as Postgres would, weighted sums included", async () => {
    // Fractional amounts at uneven milliseconds across two hours; the reference is Postgres's own
    // arithmetic on the raw rows.
    // Large amounts too: past 10⁹ units (parsed as BigInt), and sums × offsets past 2^53.
    const large = ["999999999.999999", "123456789012.5", "4000000000000", "8999999999.000001"];
    const raw = Array.from({ length: 44 }, (_, i) => ({
      atMs: period + 3_600_000 * (1 + (i % 2)) + i * 79_193 + (i % 3),
      amount: i >= 40 ? (large[i - 40] as string) : `${i % 7}.${String(123_457 * (i + 1)).slice(-6)}`,
    }));
    await Promise.all(
      raw.map(({ atMs, amount }) =>
        writer.write({
          usage: [
            {
              orgId: "org_roll",
              meter: "gb",
              periodStartMs: period,
              atMs,
              quantity: amount,
              count: "1",
              sum: amount,
              thresholds: [],
            },
          ],
          allocations: [],
        }),
      ),
    );
    const rows = await db.handle.query<{ bucket: string; count: string; sum: string; svt: string }>(
      sql`select bucket::text as bucket, count::text as count, sum::text as sum, sum_value_time::text as svt
        from usage_rollups where org_id = 'org_roll' order by bucket`,
    );
    const expected = await db.handle.query<{ bucket: string; count: string; sum: string; svt: string }>(
      sql`select date_trunc('hour', at, 'UTC')::text as bucket, count(*)::text as count, sum(amount)::text as sum,
          sum(amount * extract(epoch from at))::text as svt
        from unnest(${textArray(raw.map((r) => new Date(r.atMs).toISOString()))}::timestamptz[],
          ${textArray(raw.map((r) => r.amount))}::numeric[]) as t(at, amount)
        group by 1 order by 1`,
    );
    expect(rows).toHaveLength(2);
    const numbers = (list: typeof rows) =>
      list.map((r) => ({
        bucket: r.bucket,
        count: Number(r.count),
        sum: r.sum.replace(/\.?0+$/, ""),
        svt: r.svt.replace(/\.?0+$/, ""),
      }));
    expect(numbers(rows)).toEqual(numbers(expected));
  });
});
