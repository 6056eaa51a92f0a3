import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/storage.js";
import { createLogger } from "../../lib/logger.js";
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
});
