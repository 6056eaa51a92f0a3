/**
 * The hot-path store: usage counters and GCRA rate limits behind one interface, because a single
 * check may name a per-minute rate and a monthly quota and must apply them all or not at all.
 * Embedded twin: in-process maps. Production twin: Redis, one Lua script per call (one round trip).
 *
 * Amounts and limits are integers (callers scale decimals to integer units); values stay within
 * Number.MAX_SAFE_INTEGER.
 */

/** Adds `amount` to a counter if the result stays within `limit` (null = unlimited). */
export interface CounterOp {
  kind: "counter";
  key: string;
  /** May be negative: a release (e.g. a seat freed). A counter never goes below zero. */
  amount: number;
  limit: number | null;
  /** The counter expires this long after its last write (e.g. the end of its billing period + slack). */
  ttlSeconds: number;
}

/** A GCRA rate limit: `limit` requests per `periodMs`, bursts up to `limit`, costing `cost`. */
export interface RateOp {
  kind: "rate";
  key: string;
  limit: number;
  periodMs: number;
  cost: number;
}

export type Op = CounterOp | RateOp;

export interface CounterOutcome {
  kind: "counter";
  allowed: boolean;
  /** The value held before the call. */
  previous: number;
  /** The value after the call (unchanged if the call was denied or nothing was applied). */
  value: number;
  limit: number | null;
}

export interface RateOutcome {
  kind: "rate";
  allowed: boolean;
  limit: number;
  /** Requests of cost 1 that would still be allowed right now. */
  remaining: number;
  /** Milliseconds until the limiter is fully replenished. */
  resetMs: number;
  /** The same, before this call: what a call that takes nothing (a dry run) reports. */
  resetBeforeMs: number;
  /** Milliseconds to wait before this request would be allowed; 0 when allowed. */
  retryAfterMs: number;
}

export type Outcome = CounterOutcome | RateOutcome;

export type ApplyResult =
  /** Every op was evaluated; `allowed` is true only if all were allowed, and then all were applied. */
  | { status: "done"; allowed: boolean; outcomes: Outcome[] }
  /**
   * Some counters are not in the store (first use, or lost with a Redis restart). Nothing was
   * applied: the caller seeds them from Postgres — the source of truth — and calls again.
   */
  | { status: "missing"; missing: number[] }
  /**
   * The idempotency key was already claimed: nothing was evaluated or applied. `held` is what the
   * first call stored with {@link CounterStore.remember} (or its pending claim).
   */
  | { status: "replay"; held: string }
  /**
   * The call would have been applied, but its journal does not exist (Redis lost it, or another
   * process sealed it): nothing was applied. The caller reopens or replaces its journal and retries.
   */
  | { status: "unjournaled" };

/**
 * Claims an idempotency key in the same atomic step as the ops: the first call evaluates and stores
 * `claim` under the key; any later call with the key gets `replay` and changes nothing.
 */
export interface IdempotencyClaim {
  key: string;
  /**
   * Stored as the key's value until the caller replaces it with the final answer. A value of the
   * form `x:<expiresAtMs>:…` expires at that time of the caller's clock, whatever the store's TTL.
   */
  claim: string;
  ttlSeconds: number;
}

/**
 * An entry appended to a journal in the same atomic step as the ops, only when they are applied: what
 * was consumed, so that it can be committed to Postgres later — by the process that answered, or, if
 * that process dies, by another one reading the journal (src/modules/metering/journal.ts).
 */
export interface JournalAppend {
  journal: string;
  /** Positive, and greater than every earlier entry's: entries are read back in this order. */
  seq: number;
  data: string;
}

export interface JournalEntry {
  seq: number;
  data: string;
}

export interface ApplyOptions {
  /** Evaluate without applying anything (a check with consume = false). */
  dryRun?: boolean;
  idempotency?: IdempotencyClaim;
  /** Appended to this journal when the call is applied; the journal must exist (see openJournal). */
  journal?: JournalAppend;
}

/** An unconditional addition to a counter that exists (usage that already happened). */
export interface Increment {
  key: string;
  amount: number;
  ttlSeconds: number;
}

/** Where a sealed journal's entries go. */
export const sealedJournal = (journal: string) => `${journal}:sealed`;

export interface CounterStore {
  readonly kind: "memory" | "redis";
  /** Applies every op atomically, all or nothing, at time `nowMs` (from the clock). */
  apply(ops: Op[], nowMs: number, options?: ApplyOptions): Promise<ApplyResult>;
  /**
   * Adds to each counter the store holds, each on its own (no limit: the usage already happened);
   * absent counters stay absent and are seeded from Postgres when next needed.
   */
  increment(increments: Increment[]): Promise<void>;
  /** Stores a value (an idempotent answer) under an idempotency key. */
  remember(key: string, value: string, ttlSeconds: number): Promise<void>;
  /** The value under an idempotency key, or null. */
  recall(key: string): Promise<string | null>;
  /** Removes an idempotency key (its call failed and may be retried). */
  forget(key: string): Promise<void>;
  /**
   * Drops every counter (not rate-limit state, not idempotency keys), so each is rebuilt from Postgres
   * on next use, and records when (see counterEpoch). Returns how many were dropped.
   */
  clearCounters(): Promise<number>;
  /**
   * When the store's counters were last lost or dropped, as real epoch milliseconds: read from a
   * sentinel key, which is set to `nowRealMs` when absent (a Redis that restarted empty has lost it
   * with everything else). Seeding waits until every commit that was in flight then has landed.
   */
  counterEpoch(nowRealMs: number): Promise<number>;
  /** Records that counters were just dropped (see counterEpoch). */
  resetCounterEpoch(nowRealMs: number): Promise<void>;
  /** Current counter values; null for a counter the store does not hold. */
  get(keys: string[]): Promise<(number | null)[]>;
  /** Sets a counter only if absent (rebuild from Postgres); returns the value now held. */
  seed(key: string, value: number, ttlSeconds: number): Promise<number>;
  delete(keys: string[]): Promise<void>;
  /**
   * Creates a journal, empty, unless it exists, noting `nowRealMs` as when it was opened. Appends to
   * a journal that does not exist fail.
   */
  openJournal(journal: string, nowRealMs: number): Promise<void>;
  /**
   * When each journal was opened (real epoch ms), or null if it is not open. A journal opened after
   * the store lost its data holds nothing from before (see journal.ts, awaitThrough).
   */
  journalOpenedAt(journals: string[]): Promise<(number | null)[]>;
  /**
   * Seals a journal: from now on appends to it fail ("unjournaled"), and its entries move to the
   * journal named `sealedJournal(journal)` (added to whatever that holds already).
   */
  sealJournal(journal: string): Promise<void>;
  /** Entries with seq > afterSeq, oldest first, at most `count`. */
  readJournal(journal: string, afterSeq: number, count: number): Promise<JournalEntry[]>;
  /** Removes the entries with seq ≤ throughSeq (committed to Postgres); the journal stays open. */
  trimJournal(journal: string, throughSeq: number): Promise<void>;
  /** Removes these entries, wherever they are in the journal. */
  deleteJournalEntries(journal: string, seqs: number[]): Promise<void>;
  /** The first and last seq held by each journal; null for an empty or absent one. */
  journalBounds(journals: string[]): Promise<({ first: number; last: number } | null)[]>;
  dropJournal(journal: string): Promise<void>;
  ping(): Promise<void>;
  close(): Promise<void>;
}
