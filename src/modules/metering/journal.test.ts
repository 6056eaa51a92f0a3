import { sql } from "drizzle-orm";
import type { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createTestDatabase,
  hasRedis,
  requireRedisUrl,
  type TestDatabase,
  uniquePrefix,
} from "../../../test/support/storage.js";
import { createRedisCounterStore } from "../../infra/counters/redis.js";
import { type CounterStore, sealedJournal } from "../../infra/counters/types.js";
import { createRedis, waitForRedis } from "../../infra/redis.js";
import { createLogger } from "../../lib/logger.js";
import { createUsageJournal, encodeUsage, type UsageJournal } from "./journal.js";
import { type ConsumedUsage, commitJournalBatch } from "./writer.js";

/**
 * The usage journal against real Postgres and Redis: what a check acknowledged reaches Postgres
 * exactly once — committed by its process, swept from Redis when that process died, committed from
 * memory when Redis lost it, never twice when a reply is lost or a process is wrongly presumed dead.
 */
const runs = hasRedis && process.env.DATABASE_URL;
const period = Date.UTC(2026, 10, 1);

describe.runIf(runs)("the usage journal (postgres + redis)", () => {
  let db: TestDatabase;
  let redis: Redis;
  let counters: CounterStore;
  const prefix = uniquePrefix();
  const open: UsageJournal[] = [];
  let orgs = 0;

  beforeAll(async () => {
    db = await createTestDatabase("postgres");
    redis = createRedis(requireRedisUrl(), { name: "tollgate-test" });
    await waitForRedis(redis);
    counters = createRedisCounterStore(redis, { prefix });
  });
  afterAll(async () => {
    await Promise.all(open.map((j) => j.close()));
    const keys = await redis.keys(`${prefix}*`);
    if (keys.length > 0) await redis.del(...keys);
    await redis.quit();
    await db?.drop();
  });

  const newJournal = () => {
    const journal = createUsageJournal({ database: db.handle, counters, logger: createLogger("silent") });
    open.push(journal);
    return journal;
  };
  const newOrg = () => `org_journal_${++orgs}`;
  const usage = (orgId: string, quantity = "1"): ConsumedUsage => ({
    orgId,
    meter: "kolekts",
    periodStartMs: period,
    atMs: period + 60_000,
    quantity,
    count: quantity,
    sum: quantity,
    thresholds: [{ feature: "kolekts", limit: 10, thresholds: [80, 100] }],
  });
  const counterKey = (orgId: string) => `m:${orgId}:kolekts:${period}`;

  /** A consuming check's journaled step, as check.ts makes it. */
  async function consume(journal: UsageJournal, orgId: string, quantity = "1"): Promise<boolean> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const ticket = journal.issue([usage(orgId, quantity)]);
      const result = await counters.apply(
        [
          {
            kind: "counter",
            key: counterKey(orgId),
            amount: 1,
            limit: null,
            ttlSeconds: 3600,
          },
        ],
        Date.now(),
        { journal: ticket.append },
      );
      journal.settle(ticket, result.status === "done" && result.allowed);
      if (result.status === "unjournaled") {
        await journal.recover();
        continue;
      }
      if (result.status === "missing") {
        await counters.seed(counterKey(orgId), 0, 3600);
        continue;
      }
      return result.status === "done" && result.allowed;
    }
    throw new Error("not applied");
  }

  const total = async (orgId: string) => {
    const [row] = await db.handle.query<{ quantity: string }>(
      sql`select quantity::text as quantity from usage_periods where org_id = ${orgId}`,
    );
    return Number(row?.quantity ?? 0);
  };
  const crossings = async (orgId: string) =>
    (
      await db.handle.query<{ threshold: number }>(
        sql`select threshold from threshold_events where org_id = ${orgId} order by threshold`,
      )
    ).map((r) => r.threshold);
  const rows = () =>
    db.handle.query<{ journal_id: string; epoch: number; committed_seq: string }>(
      sql`select journal_id, epoch, committed_seq from usage_journals order by created_at`,
    );
  const eventually = async (check: () => Promise<boolean>, ms = 10_000) => {
    const deadline = Date.now() + ms;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error("timed out");
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const registered = async (journal: UsageJournal) => eventually(async () => journal.ready());

  it("commits acknowledged usage behind, once, with its thresholds, and trims the stream", async () => {
    const journal = newJournal();
    await registered(journal);
    const org = newOrg();
    await Promise.all(Array.from({ length: 40 }, () => consume(journal, org, "0.25")));
    await journal.awaitCommitted();
    expect(await total(org)).toBe(10);
    expect(await crossings(org)).toEqual([80, 100]);
    expect(journal.backlog()).toBe(0);
    const [row] = (await rows()).slice(-1);
    expect(Number(row?.committed_seq)).toBeGreaterThanOrEqual(40);
    expect(await counters.journalBounds([String(row?.journal_id)])).toEqual([null]);
  });

  it("counts a batch once when its commit is repeated (a reply lost with the connection)", async () => {
    const journal = newJournal();
    await registered(journal);
    const [row] = (await rows()).slice(-1);
    const journalId = String(row?.journal_id);
    const org = newOrg();
    const guard = { journalId, epoch: 0, firstSeq: 1_000_000, lastSeq: 1_000_001, throughMs: Date.now() };
    expect(await commitJournalBatch(db.handle, [usage(org, "3")], guard)).toBe(true);
    expect(await commitJournalBatch(db.handle, [usage(org, "3")], guard)).toBe(false);
    // A journal taken over (epoch raised) refuses its old holder's commits.
    await db.handle.query(sql`update usage_journals set epoch = epoch + 1 where journal_id = ${journalId}`);
    expect(
      await commitJournalBatch(db.handle, [usage(org, "3")], {
        ...guard,
        firstSeq: 1_000_002,
        lastSeq: 1_000_002,
      }),
    ).toBe(false);
    expect(await total(org)).toBe(3);
  });

  it("sweeps the journal of a process that died, committing what its stream holds exactly once", async () => {
    // A process that died: its row's heartbeat lapsed, its entries are in its stream, one of them
    // already committed before it died.
    const dead = "jrn_dead_process_0000000001";
    const org = newOrg();
    await db.handle.query(sql`insert into usage_journals (journal_id, committed_seq, committed_through_ms, heartbeat_at)
      values (${dead}, 1, 0, now() - interval '1 minute')`);
    await counters.openJournal(dead, Date.now());
    await counters.seed(counterKey(org), 0, 3600);
    for (let seq = 1; seq <= 4; seq++) {
      await counters.apply(
        [{ kind: "counter", key: counterKey(org), amount: 2, limit: null, ttlSeconds: 3600 }],
        Date.now(),
        { journal: { journal: dead, seq, data: encodeUsage([usage(org, "2")]) } },
      );
    }
    const reader = newJournal();
    await registered(reader);
    // Reads for one org see that org's uncommitted entries only (seq 1 is there too: the reader
    // skips what usage_journals says is committed).
    const other = newOrg();
    expect((await reader.uncommitted(org)).get(dead)?.map((e) => e.seq)).toEqual([1, 2, 3, 4]);
    expect((await reader.uncommitted(other)).get(dead)).toEqual([]);
    expect((await reader.uncommitted()).get(dead)).toHaveLength(4);
    // A read waits for what the dead process acknowledged, sweeping it rather than waiting.
    await reader.awaitCommitted();
    expect(await total(org)).toBe(6); // seq 1 was committed before: 3 × 2
    expect((await rows()).some((r) => r.journal_id === dead)).toBe(false);
    expect(await counters.journalBounds([dead, sealedJournal(dead)])).toEqual([null, null]);
  });

  it("moves to a new journal when taken over while alive, losing and doubling nothing", async () => {
    const journal = newJournal();
    await registered(journal);
    const org = newOrg();
    await consume(journal, org);
    await journal.awaitCommitted();
    const [row] = (await rows()).slice(-1);
    const first = String(row?.journal_id);
    // Presumed dead (a stall, say) after journaling two more calls it has not committed yet (a call
    // still awaiting the store holds them back): another process takes the journal over.
    const stalled = journal.issue([usage(org)]);
    await consume(journal, org);
    await consume(journal, org);
    const sweeper = newJournal();
    expect(await sweeper.sweep({ journalId: first })).toBe(true);
    expect(await total(org)).toBe(3);
    // The owner wakes up: its commit is refused, and it drops what the sweeper committed.
    journal.settle(stalled, false);
    // The owner's next call finds its journal sealed, takes a new one and goes on.
    expect(await consume(journal, org)).toBe(true);
    await journal.awaitCommitted();
    expect(await total(org)).toBe(4);
    expect((await rows()).some((r) => r.journal_id === first)).toBe(false);
  });

  it("commits from memory what Redis lost, and makes rebuilds wait for it", async () => {
    const journal = newJournal();
    await registered(journal);
    const [row] = (await rows()).slice(-1);
    const journalId = String(row?.journal_id);
    const org = newOrg();
    // Postgres refuses the commit for now, so the entry stays in memory; then Redis loses the stream.
    await db.handle.query(sql`create or replace function test_refuse() returns trigger language plpgsql as
      $$ begin raise exception 'refused for the test'; end $$`);
    await db.handle.query(
      sql`create trigger test_refuse_usage before insert on usage_periods for each row execute function test_refuse()`,
    );
    try {
      await consume(journal, org, "5");
      const lostAt = Date.now();
      await redis.del(`${prefix}j:${journalId}`, `${prefix}j:${journalId}:opened`);
      // A rebuild waits: the usage is only in the process's memory.
      await expect(journal.awaitThrough(lostAt, 300)).rejects.toThrow(/not committed/);
    } finally {
      await db.handle.query(sql`drop trigger test_refuse_usage on usage_periods`);
    }
    await eventually(async () => journal.backlog() === 0);
    expect(await total(org)).toBe(5);
    await journal.awaitThrough(Date.now() - 1);
    // The next call finds no stream, reopens it (the journal is still its own) and goes on.
    expect(await consume(journal, org, "1")).toBe(true);
    await journal.awaitCommitted();
    expect(await total(org)).toBe(6);
    expect((await rows()).find((r) => r.journal_id === journalId)?.epoch).toBe(0);
  });

  it("removes its journal on close once everything is committed", async () => {
    const journal = createUsageJournal({ database: db.handle, counters, logger: createLogger("silent") });
    await registered(journal);
    const before = await rows();
    const org = newOrg();
    await consume(journal, org, "2");
    await journal.close();
    expect(await total(org)).toBe(2);
    expect((await rows()).length).toBe(before.length - 1);
  });
});
