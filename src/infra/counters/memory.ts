import {
  type Evaluation,
  type GcraState,
  gcraBacklog,
  gcraDecide,
  gcraState,
  toOutcome,
  validateAppend,
  validateClaim,
  validateOps,
} from "./gcra.js";
import {
  type ApplyOptions,
  type ApplyResult,
  type CounterStore,
  type Increment,
  type JournalEntry,
  type Op,
  sealedJournal,
} from "./types.js";

interface CounterEntry {
  value: number;
  expiresAtMs: number;
}

interface RateEntry {
  state: GcraState;
  expiresAtMs: number;
}

/** Expired entries are dropped when touched; a full sweep every so often bounds the rest. */
const SWEEP_EVERY_APPLIES = 4096;

/**
 * The embedded counter store: in-process maps, for a single Tollgate process. Same semantics as the
 * Redis twin (see redis.ts, whose Lua script mirrors `apply` step for step).
 *
 * Expiry runs on the `nowMs` handed to `apply`, so a test clock expires counters as it moves.
 * `get` and `seed` have no `nowMs`: they use `options.now` if given, else the `nowMs` of the last
 * `apply` (else the wall clock), so one store never mixes two clocks once it is in use.
 */
export function createMemoryCounterStore(options: { now?: () => number } = {}): CounterStore {
  const counters = new Map<string, CounterEntry>();
  const rates = new Map<string, RateEntry>();
  const held = new Map<string, { value: string; expiresAtMs: number }>();
  /** Journals: entries in seq order, and the highest seq ever appended (as a Redis stream's last id). */
  const journals = new Map<string, { entries: JournalEntry[]; lastSeq: number; openedAt: number | null }>();
  let lastNowMs: number | undefined;
  let appliesSinceSweep = 0;
  // In one process nothing is in flight when the store is created: no wait before the first seeds.
  let epochMs = 0;
  const clock = (): number => options.now?.() ?? lastNowMs ?? Date.now();

  function live<E extends { expiresAtMs: number }>(map: Map<string, E>, key: string, nowMs: number) {
    const entry = map.get(key);
    if (entry && nowMs >= entry.expiresAtMs) {
      map.delete(key);
      return undefined;
    }
    return entry;
  }

  function sweep(nowMs: number): void {
    for (const [key, entry] of counters) if (nowMs >= entry.expiresAtMs) counters.delete(key);
    for (const [key, entry] of rates) if (nowMs >= entry.expiresAtMs) rates.delete(key);
    for (const [key, entry] of held) if (nowMs >= entry.expiresAtMs) held.delete(key);
  }

  return {
    kind: "memory",

    async apply(ops: Op[], nowMs: number, applyOptions: ApplyOptions = {}): Promise<ApplyResult> {
      validateOps(ops, nowMs);
      lastNowMs = nowMs;
      if (++appliesSinceSweep >= SWEEP_EVERY_APPLIES) {
        appliesSinceSweep = 0;
        sweep(nowMs);
      }

      const claim = applyOptions.idempotency;
      validateClaim(claim);
      if (claim) {
        const previous = live(held, claim.key, nowMs);
        // Mirrors the Redis script: an expiry on the caller's clock inside the value ("x:<ms>:…").
        const expires = previous
          ? Number(/^[a-z]:(\d+):/i.exec(previous.value)?.[1] ?? Number.NaN)
          : Number.NaN;
        if (previous && !(expires <= nowMs)) return { status: "replay", held: previous.value };
      }

      const missing: number[] = [];
      ops.forEach((op, index) => {
        if (op.kind === "counter" && !live(counters, op.key, nowMs)) missing.push(index);
      });
      if (missing.length > 0) return { status: "missing", missing };

      // Evaluated in order against working copies, so two ops on one key see each other's effect;
      // nothing touches the maps until every op is known to be allowed.
      const values = new Map<string, number>();
      const states = new Map<string, GcraState | undefined>();
      const evaluated = ops.map((op): Evaluation => {
        if (op.kind === "counter") {
          const stored = counters.get(op.key)?.value ?? 0;
          const current = values.get(op.key) ?? stored;
          const next = Math.max(current + op.amount, 0);
          const allowed = op.limit === null || op.amount <= 0 || next <= op.limit;
          if (allowed) values.set(op.key, next);
          return { allowed, stored, next, retryAfterMs: 0 };
        }
        const stored = live(rates, op.key, nowMs)?.state;
        const current = states.has(op.key) ? states.get(op.key) : stored;
        const decision = gcraDecide(gcraBacklog(current, nowMs, op.limit), op.limit, op.periodMs, op.cost);
        if (decision.allowed) states.set(op.key, gcraState(decision.next, nowMs, op.limit));
        const storedBacklog = gcraBacklog(stored, nowMs, op.limit);
        return {
          allowed: decision.allowed,
          stored: storedBacklog,
          next: decision.next,
          retryAfterMs: decision.retryAfterMs,
        };
      });
      const allowed = evaluated.every((evaluation) => evaluation.allowed);
      const outcomes = ops.map((op, index) => toOutcome(op, evaluated[index] as Evaluation, allowed));

      const append = applyOptions.journal;
      if (append && allowed && !applyOptions.dryRun) {
        const journal = journals.get(append.journal);
        if (!journal) return { status: "unjournaled" };
        validateAppend(append, journal.lastSeq);
        journal.entries.push({ seq: append.seq, data: append.data });
        journal.lastSeq = append.seq;
      }
      if (claim && !applyOptions.dryRun) {
        held.set(claim.key, { value: claim.claim, expiresAtMs: nowMs + claim.ttlSeconds * 1000 });
      }
      if (allowed && !applyOptions.dryRun) {
        for (const op of ops) {
          if (op.kind !== "counter") continue;
          counters.set(op.key, { value: values.get(op.key) ?? 0, expiresAtMs: nowMs + op.ttlSeconds * 1000 });
        }
        for (const [key, state] of states) {
          if (!state) rates.delete(key);
          // Kept until the TAT passes: after that the state equals a fresh limiter.
          else rates.set(key, { state, expiresAtMs: state.tatMs + (state.frac > 0 ? 1 : 0) });
        }
      }
      return { status: "done", allowed, outcomes };
    },

    async increment(increments: Increment[]): Promise<void> {
      const nowMs = clock();
      for (const { key, amount, ttlSeconds } of increments) {
        validateOps([{ kind: "counter", key, amount, limit: null, ttlSeconds }], 0);
        const entry = live(counters, key, nowMs);
        if (!entry) continue;
        entry.value = Math.max(entry.value + amount, 0);
        entry.expiresAtMs = nowMs + ttlSeconds * 1000;
      }
    },

    async clearCounters(): Promise<number> {
      const dropped = counters.size;
      counters.clear();
      if (dropped > 0) epochMs = Date.now();
      return dropped;
    },

    async counterEpoch(): Promise<number> {
      return epochMs;
    },

    async resetCounterEpoch(nowRealMs: number): Promise<void> {
      epochMs = nowRealMs;
    },

    async remember(key: string, value: string, ttlSeconds: number): Promise<void> {
      held.set(key, { value, expiresAtMs: clock() + ttlSeconds * 1000 });
    },

    async recall(key: string): Promise<string | null> {
      return live(held, key, clock())?.value ?? null;
    },

    async forget(key: string): Promise<void> {
      held.delete(key);
    },

    async get(keys: string[]): Promise<(number | null)[]> {
      const nowMs = clock();
      return keys.map((key) => live(counters, key, nowMs)?.value ?? null);
    },

    async seed(key: string, value: number, ttlSeconds: number): Promise<number> {
      validateOps([{ kind: "counter", key, amount: value, limit: null, ttlSeconds }], 0);
      if (value < 0) throw new RangeError(`seed value must be >= 0, got ${value}`);
      const nowMs = clock();
      const existing = live(counters, key, nowMs);
      if (existing) return existing.value;
      counters.set(key, { value, expiresAtMs: nowMs + ttlSeconds * 1000 });
      return value;
    },

    async delete(keys: string[]): Promise<void> {
      for (const key of keys) {
        counters.delete(key);
        rates.delete(key);
      }
    },

    async openJournal(journal: string, nowRealMs: number): Promise<void> {
      if (!journals.has(journal)) journals.set(journal, { entries: [], lastSeq: 0, openedAt: nowRealMs });
    },

    async journalOpenedAt(names: string[]) {
      return names.map((name) => journals.get(name)?.openedAt ?? null);
    },

    async sealJournal(journal: string): Promise<void> {
      const open = journals.get(journal);
      if (!open) return;
      journals.delete(journal);
      const sealed = journals.get(sealedJournal(journal));
      if (sealed) {
        sealed.entries.push(...open.entries.filter((e) => e.seq > sealed.lastSeq));
        sealed.lastSeq = Math.max(sealed.lastSeq, open.lastSeq);
      } else journals.set(sealedJournal(journal), { ...open, openedAt: null });
    },

    async readJournal(journal: string, afterSeq: number, count: number): Promise<JournalEntry[]> {
      const entries = journals.get(journal)?.entries ?? [];
      return entries.filter((e) => e.seq > afterSeq).slice(0, count);
    },

    async trimJournal(journal: string, throughSeq: number): Promise<void> {
      const open = journals.get(journal);
      if (open) open.entries = open.entries.filter((e) => e.seq > throughSeq);
    },

    async deleteJournalEntries(journal: string, seqs: number[]): Promise<void> {
      const open = journals.get(journal);
      if (open) open.entries = open.entries.filter((e) => !seqs.includes(e.seq));
    },

    async journalBounds(names: string[]) {
      return names.map((name) => {
        const entries = journals.get(name)?.entries ?? [];
        const first = entries[0];
        const last = entries[entries.length - 1];
        return first && last ? { first: first.seq, last: last.seq } : null;
      });
    },

    async dropJournal(journal: string): Promise<void> {
      journals.delete(journal);
    },

    async ping(): Promise<void> {},

    async close(): Promise<void> {
      journals.clear();
      counters.clear();
      rates.clear();
      held.clear();
    },
  };
}
