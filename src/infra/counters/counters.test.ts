import type { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hasRedis, requireRedisUrl, uniquePrefix } from "../../../test/support/storage.js";
import { TcpProxy, viaProxy } from "../../../test/support/tcp-proxy.js";
import { createRedis, waitForRedis } from "../redis.js";
import { createMemoryCounterStore } from "./memory.js";
import { createRedisCounterStore } from "./redis.js";
import {
  type ApplyOptions,
  type CounterOp,
  type CounterStore,
  type Op,
  type Outcome,
  type RateOp,
  sealedJournal,
} from "./types.js";

/** A realistic epoch: 13-digit timestamps are where number formatting in Lua goes wrong. */
const T0 = 1_700_000_000_000;

interface Opened {
  store: CounterStore;
  /** The raw connection and key prefix (Redis twin only), for TTL checks and cleanup. */
  redis?: Redis;
  prefix?: string;
  close(): Promise<void>;
}

async function openRedisTwin(prefix = uniquePrefix()): Promise<Opened> {
  const redis = createRedis(requireRedisUrl(), { name: "tollgate-test" });
  await waitForRedis(redis);
  return {
    store: createRedisCounterStore(redis, { prefix }),
    redis,
    prefix,
    async close() {
      const keys = await redis.keys(`${prefix}*`);
      if (keys.length > 0) await redis.del(...keys);
      await redis.quit();
    },
  };
}

const twins: Array<{ name: "memory" | "redis"; open: () => Promise<Opened> }> = [
  { name: "memory", open: async () => ({ store: createMemoryCounterStore(), close: async () => {} }) },
  ...(hasRedis ? [{ name: "redis" as const, open: () => openRedisTwin() }] : []),
];

const counter = (key: string, amount: number, limit: number | null, ttlSeconds = 3600): CounterOp => ({
  kind: "counter",
  key,
  amount,
  limit,
  ttlSeconds,
});
const rate = (key: string, limit: number, periodMs: number, cost = 1): RateOp => ({
  kind: "rate",
  key,
  limit,
  periodMs,
  cost,
});

async function done(store: CounterStore, ops: Op[], nowMs: number, options?: ApplyOptions) {
  const result = await store.apply(ops, nowMs, options);
  if (result.status !== "done") throw new Error(`expected done, got ${JSON.stringify(result)}`);
  return result;
}

const rateView = (outcome: Outcome | undefined) =>
  outcome?.kind === "rate"
    ? [outcome.allowed, outcome.remaining, outcome.resetMs, outcome.retryAfterMs]
    : ["not a rate outcome"];

describe.each(twins)("$name counter store", (twin) => {
  let opened: Opened;
  let store: CounterStore;
  let n = 0;
  /** A key no other test uses. */
  const key = (name: string) => `${name}:${++n}`;

  beforeAll(async () => {
    opened = await twin.open();
    store = opened.store;
  });
  afterAll(async () => {
    await opened?.close();
  });

  it("reports its kind and answers ping", async () => {
    expect(store.kind).toBe(twin.name);
    await store.ping();
  });

  it("allows a quota exactly up to its limit", async () => {
    const k = key("quota");
    await store.seed(k, 0, 3600);
    const results = [];
    for (let i = 0; i < 5; i++) results.push(await done(store, [counter(k, 1, 3)], T0));
    expect(results.map((r) => r.allowed)).toEqual([true, true, true, false, false]);
    expect(results.map((r) => (r.outcomes[0]?.kind === "counter" ? r.outcomes[0].value : -1))).toEqual([
      1, 2, 3, 3, 3,
    ]);
    expect(await store.get([k])).toEqual([3]);
  });

  it("denies an amount that would cross the limit, then allows one that fits", async () => {
    const k = key("fit");
    await store.seed(k, 8, 3600);
    expect((await done(store, [counter(k, 3, 10)], T0)).outcomes).toEqual([
      { kind: "counter", allowed: false, previous: 8, value: 8, limit: 10 },
    ]);
    expect((await done(store, [counter(k, 2, 10)], T0)).outcomes).toEqual([
      { kind: "counter", allowed: true, previous: 8, value: 10, limit: 10 },
    ]);
    const unlimited = await done(store, [counter(k, 1_000_000, null)], T0);
    expect(unlimited.outcomes[0]).toEqual({
      kind: "counter",
      allowed: true,
      previous: 10,
      value: 1_000_010,
      limit: null,
    });
  });

  it("lets two ops on one counter see each other, all or nothing", async () => {
    const k = key("twice");
    await store.seed(k, 0, 3600);
    const denied = await done(store, [counter(k, 2, 3), counter(k, 2, 3)], T0);
    expect(denied.allowed).toBe(false);
    expect(denied.outcomes.map((o) => o.allowed)).toEqual([true, false]);
    expect(await store.get([k])).toEqual([0]);
    const allowed = await done(store, [counter(k, 1, 3), counter(k, 2, 3)], T0);
    expect(allowed.outcomes.map((o) => (o.kind === "counter" ? o.value : -1))).toEqual([1, 3]);
    expect(await store.get([k])).toEqual([3]);
  });

  it("leaves counters untouched when a rate op is denied", async () => {
    const [k, r] = [key("aon-counter"), key("aon-rate")];
    await store.seed(k, 0, 3600);
    expect((await done(store, [counter(k, 1, 100), rate(r, 1, 60_000)], T0)).allowed).toBe(true);
    const denied = await done(store, [counter(k, 1, 100), rate(r, 1, 60_000)], T0 + 1000);
    expect(denied.allowed).toBe(false);
    expect(denied.outcomes[0]).toEqual({ kind: "counter", allowed: true, previous: 1, value: 1, limit: 100 });
    expect(rateView(denied.outcomes[1])).toEqual([false, 0, 59_000, 59_000]);
    expect(await store.get([k])).toEqual([1]);
  });

  it("leaves the rate limiter untouched when a counter is denied", async () => {
    const [k, r] = [key("aon-counter"), key("aon-rate")];
    await store.seed(k, 5, 3600);
    const denied = await done(store, [rate(r, 2, 60_000), counter(k, 1, 5)], T0);
    expect(denied.allowed).toBe(false);
    // The rate op was allowed on its own, but nothing was applied: it reports the untouched limiter.
    expect(rateView(denied.outcomes[0])).toEqual([true, 2, 0, 0]);
    expect(denied.outcomes[1]).toEqual({ kind: "counter", allowed: false, previous: 5, value: 5, limit: 5 });
    const first = await done(store, [rate(r, 2, 60_000)], T0);
    const second = await done(store, [rate(r, 2, 60_000)], T0);
    expect([first.allowed, second.allowed]).toEqual([true, true]);
  });

  it("always allows releases, and floors a counter at zero", async () => {
    const k = key("release");
    await store.seed(k, 5, 3600);
    // Above the limit already (the plan shrank): a release is still allowed.
    expect((await done(store, [counter(k, -1, 3)], T0)).outcomes[0]).toMatchObject({
      allowed: true,
      value: 4,
    });
    expect((await done(store, [counter(k, -10, 3)], T0)).outcomes[0]).toMatchObject({
      allowed: true,
      value: 0,
    });
    expect(await store.get([k])).toEqual([0]);
  });

  it("reports missing counters and applies nothing", async () => {
    const [a, b, c, r] = [key("present"), key("absent"), key("absent"), key("rate")];
    await store.seed(a, 0, 3600);
    const ops = [counter(a, 1, 10), counter(b, 1, 10), rate(r, 1, 60_000), counter(c, 1, null)];
    expect(await store.apply(ops, T0)).toEqual({ status: "missing", missing: [1, 3] });
    expect(await store.get([a, b, c])).toEqual([0, null, null]);
    // The rate op was not applied either: its single slot is still free.
    expect((await done(store, [rate(r, 1, 60_000)], T0)).allowed).toBe(true);
    await store.seed(b, 0, 3600);
    await store.seed(c, 0, 3600);
    expect((await done(store, ops, T0 + 60_000)).allowed).toBe(true);
    expect(await store.get([a, b, c])).toEqual([1, 1, 1]);
  });

  it("seeds only when absent, and deletes", async () => {
    const k = key("seed");
    expect(await store.seed(k, 5, 3600)).toBe(5);
    expect(await store.seed(k, 9, 3600)).toBe(5);
    expect(await store.get([k, key("never")])).toEqual([5, null]);
    await store.delete([k]);
    expect(await store.get([k])).toEqual([null]);
    expect(await store.seed(k, 9, 3600)).toBe(9);
    expect(await store.get([])).toEqual([]);
  });

  it("keeps integers exact up to Number.MAX_SAFE_INTEGER", async () => {
    const k = key("large");
    const big = Number.MAX_SAFE_INTEGER - 10;
    await store.seed(k, big, 3600);
    const result = await done(store, [counter(k, 7, null)], T0);
    expect(result.outcomes[0]).toMatchObject({ allowed: true, value: big + 7 });
    expect(await store.get([k])).toEqual([big + 7]);
  });

  it("keeps a counter and a rate limiter of the same name apart", async () => {
    const k = key("shared-name");
    await store.seed(k, 0, 3600);
    const result = await done(store, [counter(k, 1, 10), rate(k, 10, 60_000)], T0);
    expect(result.allowed).toBe(true);
    expect(await store.get([k])).toEqual([1]);
  });

  it("applies nothing on a dry run but reports what would happen", async () => {
    const [k, r] = [key("dry"), key("dry-rate")];
    await store.seed(k, 2, 3600);
    const would = await done(store, [counter(k, 3, 10), rate(r, 10, 60_000)], T0, { dryRun: true });
    expect(would.allowed).toBe(true);
    expect(would.outcomes[0]).toEqual({ kind: "counter", allowed: true, previous: 2, value: 5, limit: 10 });
    expect(rateView(would.outcomes[1])).toEqual([true, 9, 6000, 0]);
    const wouldNot = await done(store, [counter(k, 9, 10)], T0, { dryRun: true });
    expect(wouldNot.outcomes[0]).toEqual({
      kind: "counter",
      allowed: false,
      previous: 2,
      value: 2,
      limit: 10,
    });
    expect(await store.get([k])).toEqual([2]);
    expect(rateView((await done(store, [rate(r, 10, 60_000)], T0)).outcomes[0])).toEqual([true, 9, 6000, 0]);
  });

  it("GCRA: a fresh 10/min limiter allows exactly 10 at once, then one every 6 s", async () => {
    const r = key("gcra");
    const op = rate(r, 10, 60_000);
    for (let i = 1; i <= 10; i++) {
      expect(rateView((await done(store, [op], T0)).outcomes[0])).toEqual([true, 10 - i, 6000 * i, 0]);
    }
    expect(rateView((await done(store, [op], T0)).outcomes[0])).toEqual([false, 0, 60_000, 6000]);
    expect(rateView((await done(store, [op], T0 + 5999)).outcomes[0])).toEqual([false, 0, 54_001, 1]);
    expect(rateView((await done(store, [op], T0 + 6000)).outcomes[0])).toEqual([true, 0, 60_000, 0]);
    expect(rateView((await done(store, [op], T0 + 6000)).outcomes[0])).toEqual([false, 0, 60_000, 6000]);
    // Fully replenished a period after the last request.
    expect(rateView((await done(store, [op], T0 + 66_000)).outcomes[0])).toEqual([true, 9, 6000, 0]);
  });

  it("GCRA: a fractional emission interval (7/min) still allows exactly 7 at once", async () => {
    const op = rate(key("gcra7"), 7, 60_000);
    for (let i = 1; i <= 7; i++) expect((await done(store, [op], T0)).allowed).toBe(true);
    // T = 8571.43 ms: the next slot opens at T0 + 8572 (rounded up), not a millisecond earlier.
    expect(rateView((await done(store, [op], T0)).outcomes[0])).toEqual([false, 0, 60_000, 8572]);
    expect(rateView((await done(store, [op], T0 + 8571)).outcomes[0])).toEqual([false, 0, 51_429, 1]);
    expect(rateView((await done(store, [op], T0 + 8572)).outcomes[0])).toEqual([true, 0, 60_000, 0]);
  });

  it("GCRA: remaining, reset and retry-after over a scripted sequence with costs", async () => {
    const r = key("gcra-script");
    // 5 per second: T = 200 ms.
    const steps: Array<[number, number, unknown[]]> = [
      [0, 2, [true, 3, 400, 0]],
      [100, 3, [true, 0, 900, 0]],
      [100, 1, [false, 0, 900, 100]],
      [250, 1, [true, 0, 950, 0]],
      [1200, 0, [true, 5, 0, 0]],
      // A cost above the limit can never be allowed; retry-after is still the formula's (> 0).
      [1200, 6, [false, 5, 0, 200]],
      [1200, 5, [true, 0, 1000, 0]],
    ];
    for (const [at, cost, expected] of steps) {
      expect(rateView((await done(store, [rate(r, 5, 1000, cost)], T0 + at)).outcomes[0])).toEqual(expected);
    }
  });

  it("treats an empty call as allowed and rejects malformed ops", async () => {
    expect(await store.apply([], T0)).toEqual({ status: "done", allowed: true, outcomes: [] });
    await expect(store.apply([counter(key("bad"), 1.5, 10)], T0)).rejects.toThrow(RangeError);
    await expect(store.apply([rate(key("bad"), 0, 1000)], T0)).rejects.toThrow(RangeError);
    await expect(store.apply([rate(key("bad"), 10, 1000)], T0 + 0.5)).rejects.toThrow(RangeError);
    await expect(store.seed(key("bad"), -1, 60)).rejects.toThrow(RangeError);
    const empty = { key: key("bad-claim"), claim: "", ttlSeconds: 60 };
    await expect(store.apply([], T0, { idempotency: empty })).rejects.toThrow(RangeError);
  });

  it("adds to counters it holds only, each on its own", async () => {
    const [held, absent] = [key("inc-held"), key("inc-absent")];
    await store.seed(held, 5, 3600);
    await store.increment([
      { key: held, amount: 3, ttlSeconds: 3600 },
      { key: absent, amount: 3, ttlSeconds: 3600 },
    ]);
    expect(await store.get([held, absent])).toEqual([8, null]);
    await store.increment([{ key: held, amount: -20, ttlSeconds: 3600 }]);
    expect(await store.get([held])).toEqual([0]);
  });

  it("claims an idempotency key with the ops, once, until its expiry on the caller's clock", async () => {
    const [k, idem] = [key("idem-counter"), key("idem")];
    await store.seed(k, 0, 3600);
    const claim = (at: number) => ({ key: idem, claim: `p:${at + 1000}:abc`, ttlSeconds: 60 });
    const first = await store.apply([counter(k, 1, 10)], T0, { idempotency: claim(T0) });
    expect(first.status).toBe("done");
    const again = await store.apply([counter(k, 1, 10)], T0 + 500, { idempotency: claim(T0 + 500) });
    expect(again).toEqual({ status: "replay", held: `p:${T0 + 1000}:abc` });
    expect(await store.get([k])).toEqual([1]);
    // Past the expiry written in the value, the key is free again, whatever the store's own TTL.
    const later = await store.apply([counter(k, 1, 10)], T0 + 1000, { idempotency: claim(T0 + 1000) });
    expect(later.status).toBe("done");
    expect(await store.get([k])).toEqual([2]);
    await store.remember(idem, "d:1:x:{}", 60);
    expect(await store.recall(idem)).toBe("d:1:x:{}");
    await store.forget(idem);
    expect(await store.recall(idem)).toBeNull();
  });

  // Last: it drops every counter of the store.
  it("drops counters (not rate state) and records when, so seeds can wait for commits in flight", async () => {
    const [c, r] = [key("clear-counter"), key("clear-rate")];
    await store.seed(c, 7, 3600);
    expect((await done(store, [rate(r, 2, 60_000)], T0)).allowed).toBe(true);
    const before = Date.now();
    expect(await store.clearCounters()).toBeGreaterThanOrEqual(1);
    expect(await store.get([c])).toEqual([null]);
    expect(await store.counterEpoch(Date.now())).toBeGreaterThanOrEqual(before);
    // The limiter kept its state: one of two left.
    expect(rateView((await done(store, [rate(r, 2, 60_000)], T0)).outcomes[0])[0]).toBe(true);
    expect((await done(store, [rate(r, 2, 60_000)], T0)).allowed).toBe(false);
    // Nothing left to drop: the recorded time stays.
    const epoch = await store.counterEpoch(Date.now());
    expect(await store.clearCounters()).toBe(0);
    expect(await store.counterEpoch(Date.now())).toBe(epoch);
  });
});

describe.each(twins)("$name counter store journals", (twin) => {
  let opened: Opened;
  let store: CounterStore;
  let n = 0;
  const name = (base: string) => `${base}-${++n}`;

  beforeAll(async () => {
    opened = await twin.open();
    store = opened.store;
  });
  afterAll(async () => {
    await opened?.close();
  });

  it("appends an entry only when the call is applied, in the same step", async () => {
    const journal = name("j");
    const key = name("k");
    await store.openJournal(journal, 1000);
    await store.seed(key, 0, 3600);
    const now = Date.now();
    const append = (seq: number) => ({ journal: { journal, seq, data: `d${seq}` } });
    expect((await done(store, [counter(key, 2, 3)], now, append(1))).allowed).toBe(true);
    expect((await done(store, [counter(key, 2, 3)], now, append(2))).allowed).toBe(false);
    await done(store, [counter(key, 1, 3)], now, { dryRun: true, ...append(3) });
    expect((await done(store, [counter(key, 1, 3)], now, append(4))).allowed).toBe(true);
    expect(await store.readJournal(journal, 0, 10)).toEqual([
      { seq: 1, data: "d1" },
      { seq: 4, data: "d4" },
    ]);
    expect(await store.journalBounds([journal, name("absent")])).toEqual([{ first: 1, last: 4 }, null]);
    expect(await store.journalOpenedAt([journal])).toEqual([1000]);
    // A seq not above the last one fails before anything is written.
    await expect(store.apply([counter(key, 0, 3)], now, append(4))).rejects.toThrow();
    expect(await store.get([key])).toEqual([3]);
  });

  it("refuses appends to a journal that is not open, applying nothing", async () => {
    const key = name("k");
    await store.seed(key, 0, 3600);
    const result = await store.apply([counter(key, 1, null)], Date.now(), {
      journal: { journal: name("never-opened"), seq: 1, data: "x" },
    });
    expect(result).toEqual({ status: "unjournaled" });
    expect(await store.get([key])).toEqual([0]);
  });

  it("decides each append of calls made together on its own, whatever the others' journals", async () => {
    // Made in one turn of the event loop: with Redis, one script invocation for all of them.
    const journal = name("j-together");
    const key = name("k-together");
    await store.openJournal(journal, 1);
    await store.seed(key, 0, 3600);
    const now = Date.now();
    const to = (j: string, seq: number) => ({ journal: { journal: j, seq, data: `${j}:${seq}` } });
    const results = await Promise.allSettled([
      store.apply([counter(key, 1, null)], now, to(name("never-opened"), 1)),
      store.apply([counter(key, 1, null)], now, to(journal, 1)),
      store.apply([counter(key, 1, null)], now, to(name("never-opened"), 2)),
      store.apply([counter(key, 1, null)], now, to(journal, 1)), // not above the last: fails alone
      store.apply([counter(key, 1, null)], now, to(journal, 2)),
    ]);
    expect(results.map((r) => (r.status === "fulfilled" ? r.value.status : "rejected"))).toEqual([
      "unjournaled",
      "done",
      "unjournaled",
      "rejected",
      "done",
    ]);
    expect(await store.readJournal(journal, 0, 10)).toEqual([
      { seq: 1, data: `${journal}:1` },
      { seq: 2, data: `${journal}:2` },
    ]);
    expect(await store.get([key])).toEqual([2]);
  });

  it("trims, deletes, seals and drops", async () => {
    const journal = name("j");
    const key = name("k");
    await store.openJournal(journal, 5);
    await store.seed(key, 0, 3600);
    for (let seq = 1; seq <= 5; seq++) {
      await done(store, [counter(key, 1, null)], Date.now(), {
        journal: { journal, seq, data: `${seq}` },
      });
    }
    await store.trimJournal(journal, 2);
    await store.deleteJournalEntries(journal, [4]);
    expect((await store.readJournal(journal, 0, 10)).map((e) => e.seq)).toEqual([3, 5]);
    expect((await store.readJournal(journal, 3, 10)).map((e) => e.seq)).toEqual([5]);
    // An emptied journal stays open.
    await store.trimJournal(journal, 5);
    expect(await store.journalBounds([journal])).toEqual([null]);
    await done(store, [counter(key, 1, null)], Date.now(), {
      journal: { journal, seq: 6, data: "6" },
    });

    await store.sealJournal(journal);
    expect(await store.journalOpenedAt([journal])).toEqual([null]);
    const refused = await store.apply([counter(key, 1, null)], Date.now(), {
      journal: { journal, seq: 7, data: "7" },
    });
    expect(refused).toEqual({ status: "unjournaled" });
    expect((await store.readJournal(sealedJournal(journal), 0, 10)).map((e) => e.seq)).toEqual([6]);
    // Reopened (its owner did not know) and sealed again: the new entries join the sealed ones.
    await store.openJournal(journal, 6);
    await done(store, [counter(key, 1, null)], Date.now(), {
      journal: { journal, seq: 8, data: "8" },
    });
    await store.sealJournal(journal);
    expect((await store.readJournal(sealedJournal(journal), 0, 10)).map((e) => e.seq)).toEqual([6, 8]);
    await store.dropJournal(sealedJournal(journal));
    expect(await store.journalBounds([journal, sealedJournal(journal)])).toEqual([null, null]);
  });
});

describe("memory counter store expiry", () => {
  it("expires counters ttlSeconds after their last write, on the nowMs of apply", async () => {
    const store = createMemoryCounterStore();
    await store.seed("k", 0, 60);
    expect((await done(store, [counter("k", 1, 10, 60)], T0)).allowed).toBe(true);
    expect((await done(store, [counter("k", 1, 10, 60)], T0 + 59_999)).allowed).toBe(true);
    expect(await store.apply([counter("k", 1, 10, 60)], T0 + 59_999 + 60_000)).toEqual({
      status: "missing",
      missing: [0],
    });
    expect(await store.get(["k"])).toEqual([null]);
  });

  it("uses the clock it is given for get and seed", async () => {
    let now = T0;
    const store = createMemoryCounterStore({ now: () => now });
    await store.seed("k", 4, 10);
    now += 9_999;
    expect(await store.get(["k"])).toEqual([4]);
    now += 1;
    expect(await store.get(["k"])).toEqual([null]);
  });
});

describe.runIf(hasRedis)("redis counter store", () => {
  let opened: Opened;
  beforeAll(async () => {
    opened = await openRedisTwin();
  });
  afterAll(async () => {
    await opened?.close();
  });

  it("expires counters after ttlSeconds and rate state once its TAT has passed", async () => {
    const { store, redis, prefix } = opened as Required<Opened>;
    await store.seed("short", 0, 1);
    const now = Date.now();
    expect((await done(store, [counter("short", 1, 10, 1), rate("r", 10, 60_000)], now)).allowed).toBe(true);
    const [counterTtl, rateTtl] = await Promise.all([
      redis.pttl(`${prefix}c:short`),
      redis.pttl(`${prefix}r:r`),
    ]);
    expect(counterTtl).toBeGreaterThan(0);
    expect(counterTtl).toBeLessThanOrEqual(1000);
    // 6000 ms until the TAT, plus the slack for clocks that disagree.
    expect(rateTtl).toBeGreaterThan(6000);
    expect(rateTtl).toBeLessThanOrEqual(7000);
    await new Promise((resolve) => setTimeout(resolve, 1100));
    expect(await store.apply([counter("short", 1, 10, 1)], Date.now())).toEqual({
      status: "missing",
      missing: [0],
    });
  });

  it("gives the same outcomes as the memory twin over a pseudo-random sequence", async () => {
    const memory = createMemoryCounterStore();
    const random = mulberry32(20240611);
    const pick = <T>(items: T[]): T => items[Math.floor(random() * items.length)] as T;
    const counters = ["eq-c1", "eq-c2", "eq-c3"];
    for (const k of counters) {
      await memory.seed(k, 0, 86_400);
      await opened.store.seed(k, 0, 86_400);
    }
    let now = T0;
    let allowed = 0;
    for (let step = 0; step < 500; step++) {
      now += pick([0, 0, 1, 7, 150, 1000, 2500, 8571, 8572, 30_000]);
      const ops: Op[] = [];
      const count = 1 + Math.floor(random() * 3);
      for (let i = 0; i < count; i++) {
        if (random() < 0.4) {
          // A day's TTL: memory expires on simulated time, Redis on its own clock.
          ops.push(counter(pick(counters), pick([-3, -1, 0, 1, 1, 2, 5]), pick([null, 20, 40]), 86_400));
        } else {
          // The same limiter sometimes changes limit or period, as after a plan change.
          ops.push(
            rate(
              pick(["eq-r1", "eq-r2"]),
              pick([7, 7, 10, 3]),
              pick([60_000, 60_000, 1000]),
              pick([0, 1, 1, 2, 8]),
            ),
          );
        }
      }
      const options = { dryRun: random() < 0.1 };
      const [fromMemory, fromRedis] = [
        await memory.apply(ops, now, options),
        await opened.store.apply(ops, now, options),
      ];
      expect(fromRedis, `step ${step}`).toEqual(fromMemory);
      if (fromMemory.status === "done" && fromMemory.allowed) allowed++;
    }
    // The sequence exercises both answers, not just one.
    expect(allowed).toBeGreaterThan(50);
    expect(allowed).toBeLessThan(450);
    expect(await opened.store.get(counters)).toEqual(await memory.get(counters));
  });

  it("gives the memory twin's outcomes, in order, to 600 calls made at once (batched invocations)", async () => {
    const memory = createMemoryCounterStore();
    const random = mulberry32(7_340_021);
    const pick = <T>(items: T[]): T => items[Math.floor(random() * items.length)] as T;
    const counters = ["batch-c1", "batch-c2"];
    for (const k of counters) {
      await memory.seed(k, 0, 86_400);
      await opened.store.seed(k, 0, 86_400);
    }
    const calls: { ops: Op[]; now: number; options: ApplyOptions }[] = [];
    let now = T0;
    for (let step = 0; step < 600; step++) {
      now += pick([0, 1, 150, 1000, 8571]);
      const ops: Op[] = [];
      const count = Math.floor(random() * 3);
      for (let i = 0; i < count; i++) {
        if (random() < 0.5) {
          // Now and then a counter neither store holds: that call alone reports it missing.
          const key = random() < 0.05 ? "batch-absent" : pick(counters);
          ops.push(counter(key, pick([-2, 0, 1, 1, 3]), pick([null, 25, 60]), 86_400));
        } else {
          ops.push(rate(pick(["batch-r1", "batch-r2"]), pick([5, 10]), 60_000, pick([0, 1, 2])));
        }
      }
      // Some calls claim an idempotency key (a few reuse one): the key sits after the call's op keys.
      const options: ApplyOptions =
        random() < 0.3
          ? {
              idempotency: {
                key: `batch-i${Math.floor(random() * 40)}`,
                claim: `p:${now + 60_000}:f`,
                ttlSeconds: 60,
              },
            }
          : { dryRun: random() < 0.1 };
      calls.push({ ops, now, options });
    }
    // All at once: they reach Redis in a couple of script invocations, evaluated one call at a time.
    const fromRedis = await Promise.all(calls.map((c) => opened.store.apply(c.ops, c.now, c.options)));
    const statuses = new Set<string>();
    for (const [i, c] of calls.entries()) {
      const fromMemory = await memory.apply(c.ops, c.now, c.options);
      expect(fromRedis[i], `call ${i}`).toEqual(fromMemory);
      statuses.add(fromMemory.status === "done" ? `done:${fromMemory.allowed}` : fromMemory.status);
    }
    expect([...statuses].sort()).toEqual(["done:false", "done:true", "missing", "replay"]);
    expect(await opened.store.get(counters)).toEqual(await memory.get(counters));
  });

  it("fails only the call that raises an error, not the others sent in the same invocation", async () => {
    // A counter key holding something that is not a string: the script's GET raises WRONGTYPE.
    await opened.redis?.hset(`${opened.prefix}c:wrongtype`, "x", "1");
    await opened.store.seed("batch-ok", 0, 86_400);
    const [before, broken, after] = await Promise.allSettled([
      opened.store.apply([counter("batch-ok", 1, 10)], T0),
      opened.store.apply([counter("wrongtype", 1, 10)], T0),
      opened.store.apply([counter("batch-ok", 1, 10)], T0),
    ]);
    expect(before).toMatchObject({ status: "fulfilled", value: { status: "done", allowed: true } });
    expect(broken).toMatchObject({
      status: "rejected",
      reason: { message: expect.stringMatching(/WRONGTYPE/) },
    });
    expect(after).toMatchObject({ status: "fulfilled", value: { status: "done", allowed: true } });
    expect(await opened.store.get(["batch-ok"])).toEqual([2]);
  });

  it("fails every queued call within one command timeout when Redis stops answering", async () => {
    // Connected but silent (a stall or a partition): each invocation fails at the 1 s command timeout.
    // 1,500 calls are six invocations, two in flight; the four queued behind fail with the first
    // failure rather than each waiting out a timeout of its own (about 3 s in all).
    const proxy = await new TcpProxy("127.0.0.1", Number(new URL(requireRedisUrl()).port || 6379)).start();
    const redis = createRedis(viaProxy(requireRedisUrl(), proxy), { name: "tollgate-test-stall" });
    try {
      await waitForRedis(redis);
      const store = createRedisCounterStore(redis, { prefix: opened.prefix as string });
      await store.seed("stalled", 0, 3600);
      proxy.stall();
      const started = Date.now();
      const results = await Promise.allSettled(
        Array.from({ length: 1500 }, () => store.apply([counter("stalled", 1, null)], T0)),
      );
      const elapsed = Date.now() - started;
      expect(results.every((r) => r.status === "rejected")).toBe(true);
      expect(elapsed).toBeGreaterThanOrEqual(900);
      expect(elapsed).toBeLessThan(2000);
    } finally {
      redis.disconnect();
      await proxy.close();
    }
  });

  describe("under concurrency from five processes", () => {
    let processes: Opened[];
    beforeAll(async () => {
      processes = await Promise.all(Array.from({ length: 5 }, () => openRedisTwin(opened.prefix)));
    });
    afterAll(async () => {
      await Promise.all(processes.map(({ redis }) => redis?.quit()));
    });

    it("allows exactly 100 of 500 concurrent requests against a limit of 100", async () => {
      await opened.store.seed("conc", 0, 3600);
      const results = await Promise.all(
        Array.from({ length: 500 }, (_, i) =>
          done(processes[i % 5]?.store as CounterStore, [counter("conc", 1, 100)], T0),
        ),
      );
      expect(results.filter((r) => r.allowed)).toHaveLength(100);
      expect(await opened.store.get(["conc"])).toEqual([100]);
    });

    it("allows exactly 100 of 500 concurrent requests against a rate of 100/min", async () => {
      const results = await Promise.all(
        Array.from({ length: 500 }, (_, i) =>
          done(processes[i % 5]?.store as CounterStore, [rate("conc-rate", 100, 60_000)], T0),
        ),
      );
      expect(results.filter((r) => r.allowed)).toHaveLength(100);
    });

    it("lets exactly one of five concurrent 500 spends through a balance of 600", async () => {
      await opened.store.seed("balance", 0, 3600);
      const results = await Promise.all(
        processes.map(({ store }) => done(store, [counter("balance", 500, 600)], T0)),
      );
      expect(results.filter((r) => r.allowed)).toHaveLength(1);
      expect(await opened.store.get(["balance"])).toEqual([500]);
    });
  });
});

/** A small seeded PRNG, so a failing sequence can be replayed. */
function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
