import { and, eq, lt, ne, sql } from "drizzle-orm";
import type { DatabaseHandle } from "../../db/client.js";
import { usageJournals } from "../../db/schema.js";
import { type CounterStore, type JournalAppend, sealedJournal } from "../../infra/counters/types.js";
import { newId } from "../../lib/ids.js";
import type { Logger } from "../../lib/logger.js";
import type { ThresholdSpec } from "./ledger.js";
import { type ConsumedUsage, commitJournalBatch } from "./writer.js";

/**
 * The usage journal: how a consuming check is acknowledged without waiting for Postgres.
 *
 * The counter store appends what a check consumed to this process's journal — a Redis stream — in
 * the same atomic step that applies it to the counters, and the process keeps a copy in memory. The
 * check is answered at once; the process commits its copies to Postgres behind, in large batches,
 * and then trims the stream. So acknowledged usage is in two places until it is in Postgres:
 *
 * - the process dies (`kill -9`): its entries are in the stream. Every process sweeps, now and then,
 *   journals whose heartbeat has lapsed: it takes the journal over (raising its epoch in Postgres),
 *   seals the stream (appends to it fail from then on) and commits what it holds.
 * - Redis loses its data: every process still holds what it acknowledged, and commits it; a counter
 *   rebuilt meanwhile waits until the live journals are committed past the loss (`awaitThrough`).
 *
 * Only losing a process and Redis's data at once loses acknowledged usage. A batch is committed
 * exactly once: `usage_journals` holds each journal's epoch and committed seq, and a batch commits
 * only while its journal is held at the committer's epoch and none of its entries is committed
 * (writer.ts, commitJournalBatch), in the same statement as the usage itself.
 *
 * Seqs are issued in the order calls reach the counter store, so the stream holds them in order. A
 * batch takes only entries below every seq still awaiting its answer from the store: an entry
 * committed past is never committed again, so none may be left behind.
 */

export interface UsageJournal {
  /** True once the journal is registered; until then (or while it cannot be) checks commit first. */
  ready(): boolean;
  /** The entry for a call about to be applied: issued right before the call reaches the store. */
  issue(usage: ConsumedUsage[]): Ticket;
  /** The store answered (or failed): an applied entry is kept until committed. */
  settle(ticket: Ticket, applied: boolean): void;
  /**
   * The store failed to answer: the entry may or may not be in the journal, and the call is answered
   * as not applied (by policy), so the entry must not count — it is deleted by `purge`.
   */
  discard(ticket: Ticket): void;
  /** Deletes discarded entries from the journal: before a counter they touched is rebuilt. */
  purge(): Promise<void>;
  /** After an append failed for a missing journal: reopens it, or takes a new one if it was taken over. */
  recover(): Promise<void>;
  /** Waits until everything acknowledged so far, by this process and the others, is in Postgres. */
  awaitCommitted(timeoutMs?: number): Promise<void>;
  /**
   * Waits until every live journal has committed everything it acknowledged before `realMs` (after
   * Redis lost its data, the entries are only in the processes' memory). Rejects after `timeoutMs`.
   */
  awaitThrough(realMs: number, timeoutMs?: number): Promise<void>;
  /**
   * Usage journaled but not committed, per journal, for rebuilding counters (see seedCounters). With
   * `forOrg`, entries of other orgs are left out without being decoded (a stream holds every org's).
   */
  uncommitted(forOrg?: string): Promise<Map<string, { seq: number; usage: ConsumedUsage[] }[]>>;
  /**
   * Takes over one journal whose heartbeat lapsed (or, with `journalId`, that journal whatever its
   * heartbeat: an operator sure its process is gone), commits what its stream holds and removes it.
   * Resolves to whether it swept one. Every process runs this every few seconds by itself.
   */
  sweep(options?: { journalId?: string }): Promise<boolean>;
  /** Entries held in memory, not yet committed. */
  backlog(): number;
  /** Commits what is held, stops the timers and, once all is committed, removes the journal. */
  close(): Promise<void>;
}

export interface Ticket {
  append: JournalAppend;
  usage: ConsumedUsage[];
  /** Real ms when issued. */
  issuedMs: number;
}

interface Entry {
  journal: string;
  seq: number;
  usage: ConsumedUsage[];
  atMs: number;
}

/** Heartbeats this often; a journal without one for SWEEP_AFTER_SECONDS is taken over. */
const HEARTBEAT_MS = 1000;
const SWEEP_AFTER_SECONDS = 5;
const SWEEP_EVERY_MS = 5000;
/** Entries per commit at most. */
const MAX_BATCH = 5000;
/**
 * How long an entry waits for company before it is committed: a commit then carries everything the
 * process acknowledged meanwhile, summed per org, meter and hour into a few rows (writer.ts). No
 * check waits for it. Anything that reads usage and must see it all commits at once instead
 * (`awaitCommitted`, `awaitThrough`, `close`), as does a backlog of MAX_BATCH.
 */
const COMMIT_EVERY_MS = 100;
const MAX_RETRY_MS = 2000;

export function createUsageJournal(options: {
  database: DatabaseHandle;
  counters: CounterStore;
  logger: Logger;
}): UsageJournal {
  const { database, counters, logger } = options;
  let id = "";
  let epoch = 0;
  let registered = false;
  let registering: Promise<void> | undefined;
  let nextRegisterMs = 0;
  let recovering: Promise<void> | undefined;
  let closed = false;
  let nextSeq = 1;
  const pending = new Map<number, number>();
  let entries: Entry[] = [];
  let committing = false;
  /** A commit is due on the next turn of the event loop, or at `timer`. */
  let immediate = false;
  let timer: NodeJS.Timeout | undefined;
  /** Callers waiting for this process's commits without being in `waiters` (awaitThrough). */
  let hurrying = 0;
  /** After a failed commit: no attempt before then. */
  let backoffUntil = 0;
  /** `close` has finished: nothing is committed from here on (what is left is swept from the stream). */
  let stopped = false;
  let failures = 0;
  let waiters: { seq: number; resolve: () => void }[] = [];
  let discarded: { journal: string; seq: number }[] = [];

  const heartbeat = setInterval(() => void beat().catch(() => {}), HEARTBEAT_MS);
  const sweeper = setInterval(
    () =>
      void sweepOne().catch((error: Error) =>
        logger.warn({ err: error.message }, "sweeping usage journals failed"),
      ),
    SWEEP_EVERY_MS + Math.floor(Math.random() * 1000),
  );
  heartbeat.unref();
  sweeper.unref();

  function register(): void {
    if (registered || registering || closed || Date.now() < nextRegisterMs) return;
    registering = (async () => {
      const journal = newId("journal");
      await database.db.insert(usageJournals).values({ journalId: journal, committedThroughMs: Date.now() });
      await counters.openJournal(journal, Date.now());
      id = journal;
      epoch = 0;
      registered = true;
    })()
      .catch((error: Error) => {
        nextRegisterMs = Date.now() + 1000;
        logger.warn({ err: error.message }, "could not open a usage journal; checks commit before answering");
      })
      .finally(() => {
        registering = undefined;
      });
  }

  /** The instant before which everything this process acknowledged is committed, once `batch` is. */
  function throughMs(excluding?: Set<Entry>): number {
    let through = Date.now();
    for (const issued of pending.values()) through = Math.min(through, issued);
    for (const entry of entries) if (!excluding?.has(entry)) through = Math.min(through, entry.atMs);
    return through;
  }

  /** Arranges the next commit: at once when someone waits for it, else COMMIT_EVERY_MS after the oldest entry. */
  function schedule(): void {
    if (committing || immediate || stopped || entries.length === 0) return;
    const now = Date.now();
    const urgent = waiters.length > 0 || hurrying > 0 || closed || entries.length >= MAX_BATCH;
    const dueMs = Math.max(backoffUntil, urgent ? now : (entries[0] as Entry).atMs + COMMIT_EVERY_MS);
    if (dueMs <= now) {
      if (timer) clearTimeout(timer);
      timer = undefined;
      immediate = true;
      setImmediate(() => {
        immediate = false;
        void commitNext();
      });
    } else if (!timer) {
      timer = setTimeout(() => {
        timer = undefined;
        void commitNext();
      }, dueMs - now);
    }
  }

  async function commitNext(): Promise<void> {
    if (committing) return;
    let below = Number.POSITIVE_INFINITY;
    for (const seq of pending.keys()) below = Math.min(below, seq);
    const journal = id;
    const batch = entries
      .filter((e) => e.journal === journal && e.seq < below)
      .sort((a, b) => a.seq - b.seq)
      .slice(0, MAX_BATCH);
    const first = batch[0];
    const last = batch[batch.length - 1];
    if (!first || !last) return;
    committing = true;
    let retryMs = 0;
    try {
      const taken = new Set(batch);
      const ok = await commitJournalBatch(
        database,
        batch.flatMap((e) => e.usage),
        { journalId: journal, epoch, firstSeq: first.seq, lastSeq: last.seq, throughMs: throughMs(taken) },
      );
      if (ok) {
        failures = 0;
        entries = entries.filter((e) => !taken.has(e));
        counters.trimJournal(journal, last.seq).catch(() => {}); // trimmed by a later commit otherwise
      } else {
        await refused(journal, first.seq);
      }
    } catch (error) {
      failures++;
      retryMs = Math.min(MAX_RETRY_MS, 50 * 2 ** failures);
      if (failures === 1 || failures % 20 === 0)
        logger.error(
          { err: (error as Error).message, entries: batch.length, backlog: entries.length },
          "committing journaled usage failed; it is kept and retried",
        );
    } finally {
      committing = false;
      wake();
      backoffUntil = Date.now() + retryMs;
      schedule();
    }
  }

  /** A commit the guard refused: already committed (a lost reply), or the journal was taken over. */
  async function refused(journal: string, firstSeq: number): Promise<void> {
    const [row] = await database.db
      .select({ epoch: usageJournals.epoch, committedSeq: usageJournals.committedSeq })
      .from(usageJournals)
      .where(eq(usageJournals.journalId, journal));
    if (row && row.epoch === epoch && journal === id) {
      if (row.committedSeq >= firstSeq) {
        // Committed already: the reply of an earlier attempt was lost.
        entries = entries.filter((e) => e.journal !== journal || e.seq > row.committedSeq);
        return;
      }
      throw new Error(`usage journal ${journal} refused a commit it should take`);
    }
    await takenOver(journal);
  }

  /**
   * Another process took the journal over (this one looked dead: no heartbeat for a while). What it
   * held is in the sealed stream, committed by the taker; this process starts a new journal.
   */
  async function takenOver(journal: string): Promise<void> {
    if (journal !== id) return;
    logger.error({ journal }, "usage journal taken over by another process; starting a new one");
    entries = entries.filter((e) => e.journal !== journal);
    registered = false;
    register();
    await registering;
  }

  async function beat(): Promise<void> {
    if (!registered) return;
    const journal = id;
    const rows = await database.db
      .update(usageJournals)
      .set({
        heartbeatAt: sql`now()`,
        committedThroughMs: sql`greatest(${usageJournals.committedThroughMs}, ${throughMs()}::bigint)`,
      })
      .where(and(eq(usageJournals.journalId, journal), eq(usageJournals.epoch, epoch)))
      .returning({ id: usageJournals.journalId });
    if (rows.length === 0) await takenOver(journal);
  }

  /** Takes over one journal whose heartbeat lapsed, commits what its stream holds, and removes it. */
  async function sweepOne(only?: string): Promise<boolean> {
    const which = only
      ? sql`journal_id = ${only}`
      : sql`heartbeat_at < now() - make_interval(secs => ${SWEEP_AFTER_SECONDS}) and journal_id <> ${id}`;
    const [victim] = await database.query<{ journal_id: string; epoch: number; committed_seq: string }>(sql`
      update usage_journals set epoch = epoch + 1, heartbeat_at = now()
      where journal_id = (
        select journal_id from usage_journals where ${which}
        order by heartbeat_at limit 1
        for update skip locked)
      returning journal_id, epoch, committed_seq`);
    if (!victim) return false;
    const journal = victim.journal_id;
    const held = Number(victim.epoch);
    let after = Number(victim.committed_seq);
    await counters.sealJournal(journal);
    const sealed = sealedJournal(journal);
    let swept = 0;
    for (;;) {
      const batch = await counters.readJournal(sealed, after, MAX_BATCH);
      const first = batch[0];
      const last = batch[batch.length - 1];
      if (!first || !last) break;
      const ok = await commitJournalBatch(
        database,
        batch.flatMap((e) => decodeUsage(e.data)),
        { journalId: journal, epoch: held, firstSeq: first.seq, lastSeq: last.seq, throughMs: Date.now() },
      );
      if (!ok) {
        const [row] = await database.db
          .select({ epoch: usageJournals.epoch, committedSeq: usageJournals.committedSeq })
          .from(usageJournals)
          .where(eq(usageJournals.journalId, journal));
        if (!row || row.epoch !== held) return false; // another sweeper took it over meanwhile
        after = row.committedSeq;
        continue;
      }
      swept += batch.length;
      after = last.seq;
    }
    await counters.dropJournal(sealed);
    await database.db
      .delete(usageJournals)
      .where(and(eq(usageJournals.journalId, journal), eq(usageJournals.epoch, held)));
    logger.warn({ journal, entries: swept }, "swept the usage journal of a process that stopped");
    return true;
  }

  function drained(seq: number): boolean {
    for (const issued of pending.keys()) if (issued <= seq) return false;
    return !entries.some((e) => e.seq <= seq);
  }

  function wake(): void {
    if (waiters.length === 0) return;
    const still: typeof waiters = [];
    for (const waiter of waiters) {
      if (drained(waiter.seq)) waiter.resolve();
      else still.push(waiter);
    }
    waiters = still;
  }

  /** Waits for this process's entries issued so far. */
  function awaitLocal(timeoutMs: number): Promise<void> {
    const seq = nextSeq - 1;
    if (drained(seq)) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        waiters = waiters.filter((w) => w.resolve !== done);
        resolve();
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      waiters.push({ seq, resolve: done });
      schedule();
    });
  }

  async function awaitOthers(deadline: number): Promise<void> {
    const others = await database.db
      .select({ id: usageJournals.journalId })
      .from(usageJournals)
      .where(ne(usageJournals.journalId, id));
    if (others.length === 0) return;
    const names = others.flatMap((o) => [o.id, sealedJournal(o.id)]);
    const targets = (await counters.journalBounds(names)).map((b) => b?.last ?? 0);
    let nextSweep = Date.now() + 200;
    while (Date.now() < deadline) {
      const bounds = await counters.journalBounds(names);
      if (bounds.every((b, i) => b === null || b.first > (targets[i] ?? 0))) return;
      // A journal that stays behind may belong to a process that died: sweep it, not wait for
      // the sweeper's next round.
      if (Date.now() >= nextSweep) {
        nextSweep = Date.now() + 500;
        await sweepOne().catch(() => {});
      }
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /** awaitThrough's loop: polls until no live journal lags behind `realMs`; throws at `deadline`. */
  async function awaitThroughUntil(realMs: number, deadline: number): Promise<void> {
    for (;;) {
      const lagging = await database.db
        .select({ id: usageJournals.journalId })
        .from(usageJournals)
        .where(
          and(
            lt(usageJournals.committedThroughMs, realMs),
            sql`${usageJournals.heartbeatAt} > now() - make_interval(secs => ${SWEEP_AFTER_SECONDS})`,
          ),
        );
      // A journal open in the store since before then holds everything it had: read from it
      // (uncommitted), nothing to wait for. One opened since has lost what only its process holds.
      const openedAt = await counters.journalOpenedAt(lagging.map((j) => j.id));
      const behind = lagging.filter((_, i) => {
        const opened = openedAt[i];
        return opened === null || opened === undefined || opened > realMs;
      });
      if (behind.length === 0) return;
      if (Date.now() > deadline)
        throw new Error(
          `usage journals ${behind.map((b) => b.id).join(", ")} are not committed up to the loss`,
        );
      if (behind.some((b) => b.id === id) && drained(nextSeq - 1)) await beat().catch(() => {});
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  const journal: UsageJournal = {
    ready() {
      if (!registered) register();
      return registered && !closed;
    },

    issue(usage) {
      const seq = nextSeq++;
      const issuedMs = Date.now();
      pending.set(seq, issuedMs);
      return { append: { journal: id, seq, data: encodeUsage(usage) }, usage, issuedMs };
    },

    settle(ticket, applied) {
      const { seq } = ticket.append;
      pending.delete(seq);
      if (applied)
        entries.push({ journal: ticket.append.journal, seq, usage: ticket.usage, atMs: ticket.issuedMs });
      schedule();
      wake();
    },

    discard(ticket) {
      discarded.push({ journal: ticket.append.journal, seq: ticket.append.seq });
      journal.settle(ticket, false);
    },

    async purge() {
      if (discarded.length === 0) return;
      const taken = discarded;
      discarded = [];
      try {
        for (const name of new Set(taken.map((d) => d.journal))) {
          const seqs = taken.filter((d) => d.journal === name).map((d) => d.seq);
          await counters.deleteJournalEntries(name, seqs);
        }
      } catch (error) {
        discarded.push(...taken);
        throw error;
      }
    },

    recover() {
      if (!recovering) {
        const journal = id;
        recovering = (async () => {
          const [row] = await database.db
            .select({ epoch: usageJournals.epoch })
            .from(usageJournals)
            .where(eq(usageJournals.journalId, journal));
          // Still ours: Redis lost the stream (what it held is in memory here). Else: taken over.
          if (row && row.epoch === epoch) await counters.openJournal(journal, Date.now());
          else await takenOver(journal);
        })().finally(() => {
          recovering = undefined;
        });
      }
      return recovering;
    },

    async awaitCommitted(timeoutMs = 8000) {
      const deadline = Date.now() + timeoutMs;
      await awaitLocal(timeoutMs);
      // Other processes' journals: wait until their streams are trimmed past what they hold now
      // (best effort: without Redis or Postgres, the read shows what Postgres has).
      await awaitOthers(deadline).catch(() => {});
    },

    async awaitThrough(realMs, timeoutMs = 5000) {
      hurrying++;
      schedule();
      try {
        await awaitThroughUntil(realMs, Date.now() + timeoutMs);
      } finally {
        hurrying--;
      }
    },

    async uncommitted(forOrg) {
      // An entry's data holds its org id JSON-encoded, exactly as this produces it.
      const needle = forOrg === undefined ? undefined : JSON.stringify(forOrg);
      const rows = await database.db.select({ id: usageJournals.journalId }).from(usageJournals);
      const out = new Map<string, { seq: number; usage: ConsumedUsage[] }[]>();
      for (const { id: journalId } of rows) {
        const found: { seq: number; usage: ConsumedUsage[] }[] = [];
        for (const name of [journalId, sealedJournal(journalId)]) {
          let after = 0;
          for (;;) {
            const batch = await counters.readJournal(name, after, MAX_BATCH);
            for (const entry of batch) {
              if (needle !== undefined && !entry.data.includes(needle)) continue;
              found.push({ seq: entry.seq, usage: decodeUsage(entry.data) });
            }
            const last = batch[batch.length - 1];
            if (!last || batch.length < MAX_BATCH) break;
            after = last.seq;
          }
        }
        out.set(journalId, found);
      }
      return out;
    },

    sweep(options = {}) {
      return sweepOne(options.journalId);
    },

    backlog() {
      return entries.length + pending.size;
    },

    async close() {
      closed = true;
      clearInterval(sweeper);
      await registering;
      const deadline = Date.now() + 10_000;
      while ((entries.length > 0 || pending.size > 0) && Date.now() < deadline) {
        schedule();
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      clearInterval(heartbeat);
      stopped = true;
      if (timer) clearTimeout(timer);
      timer = undefined;
      if (!registered) return;
      if (entries.length > 0 || pending.size > 0) {
        // Left for another process to sweep from the stream once the heartbeat lapses.
        logger.error({ journal: id, entries: entries.length }, "closing with usage not yet committed");
        return;
      }
      await counters.dropJournal(id).catch(() => {});
      await database.db
        .delete(usageJournals)
        .where(and(eq(usageJournals.journalId, id), eq(usageJournals.epoch, epoch)))
        .catch(() => {});
    },
  };
  return journal;
}

/**
 * An entry's data: its usage as arrays (shorter and faster to write and read than objects):
 * [orgId, meter, periodStartMs, atMs, quantity, count, sum, [[feature, limit, thresholds]...]].
 */
type EncodedUsage = [string, string, number, number, string, string, string, [string, number, number[]][]];

export function encodeUsage(usage: ConsumedUsage[]): string {
  // The JSON written by hand (what JSON.stringify of EncodedUsage[] gives): this runs for every
  // consuming check, and a grant's thresholds are encoded once (their arrays are shared, check.ts).
  let out = "[";
  for (let i = 0; i < usage.length; i++) {
    const u = usage[i] as ConsumedUsage;
    if (i > 0) out += ",";
    out += `[${JSON.stringify(u.orgId)},${JSON.stringify(u.meter)},${u.periodStartMs},${u.atMs},${JSON.stringify(u.quantity)},${JSON.stringify(u.count)},${JSON.stringify(u.sum)},${encodedSpecs(u.thresholds)}]`;
  }
  return `${out}]`;
}

const specsJson = new WeakMap<readonly ThresholdSpec[], string>();

function encodedSpecs(specs: readonly ThresholdSpec[]): string {
  let json = specsJson.get(specs);
  if (json === undefined) {
    json = JSON.stringify(specs.map((t) => [t.feature, t.limit, t.thresholds]));
    specsJson.set(specs, json);
  }
  return json;
}

export function decodeUsage(data: string): ConsumedUsage[] {
  return (JSON.parse(data) as EncodedUsage[]).map(
    ([orgId, meter, periodStartMs, atMs, quantity, count, sum, specs]) => ({
      orgId,
      meter,
      periodStartMs,
      atMs,
      quantity,
      count,
      sum,
      thresholds: specs.map(
        ([feature, limit, thresholds]): ThresholdSpec => ({ feature, limit, thresholds }),
      ),
    }),
  );
}
