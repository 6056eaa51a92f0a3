import { afterEach, describe, expect, it, vi } from "vitest";
import { Tollgate, TollgateUnavailableError } from "../src/index.js";
import { json, scripted } from "./scripted.js";
import { REPORTS_ALLOWED, sleep } from "./support.js";

/**
 * The client's caches when answers cross: a verification or a cache fill still under way when this
 * client learns something newer (a revocation, a consuming check, an invalidation), a caller with a
 * shorter budget than the request it joins, and background refreshes while Tollgate is down.
 * Tollgate is the scripted stand-in (scripted.ts), so each answer can be held and released on cue;
 * where the test is about time, only `Date` is faked (timers stay real), so the clock moves exactly.
 */

const BASE = "http://tollgate.test";
const KEY = "tg_races_key_0123456789abcdefghijklmnopqrstuvwxyz0123";
const T = 1_900_000_000_000;

const down = () => json(503, { code: "unavailable", status: 503, title: "Unavailable", detail: "down" });

/** A gate opened from outside: a held answer waits for it, or rejects when the SDK aborts. */
function gate() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => {
    open = resolve;
  });
  const wait = (signal: AbortSignal | undefined) =>
    new Promise<void>((resolve, reject) => {
      signal?.addEventListener("abort", () => reject(signal.reason ?? new Error("aborted")), {
        once: true,
      });
      opened.then(resolve);
    });
  return { open, wait };
}

const VALID = { valid: true, org_id: "org_a", key_id: "key_1", scopes: [], plan: "free" };

const seats = (used: number, allowed = used < 5) => ({
  allowed,
  feature: "seats",
  type: "limit",
  limit: 5,
  used,
  remaining: 5 - used,
  resets_at: null,
  ...(allowed ? {} : { reason: "limit_exceeded" }),
});

/**
 * An org with one boolean (reports) and one limit (seats, 5): the cache's dry run reads the seats in
 * use when it arrives and may be held before answering; a consuming check takes a seat. While `up`
 * is false, every request answers 503.
 */
function seatsOrg() {
  const state = { used: 4, up: true, hold: undefined as ReturnType<typeof gate> | undefined };
  const stand = scripted({
    "GET /v1/orgs/org_a/entitlements": () =>
      state.up
        ? json(200, {
            org_id: "org_a",
            plan: "free",
            features: [
              { feature: "reports", type: "boolean", limit: null },
              { feature: "seats", type: "limit", limit: 5 },
            ],
          })
        : down(),
    "POST /v1/check": async (body, signal) => {
      if (!state.up) return down();
      if (body.features) {
        const used = state.used;
        await state.hold?.wait(signal);
        return json(200, { allowed: used < 5, results: [REPORTS_ALLOWED, seats(used)] });
      }
      if (body.consume === false) return json(200, seats(state.used));
      state.used++;
      return json(200, seats(state.used, true));
    },
  });
  return { state, ...stand };
}

afterEach(() => {
  vi.useRealTimers();
});

describe("verifyKey(): each caller's own budget", () => {
  it("a caller joining a verification under way waits at most its own timeoutMs, then fails by its failMode", async () => {
    const hold = gate();
    const { fetch, count } = scripted({
      "POST /v1/keys/verify": (_b, signal) => hold.wait(signal).then(() => json(200, VALID)),
    });
    const client = new Tollgate({ baseUrl: BASE, apiKey: "op", fetch, timeoutMs: 2000, cacheTtlMs: 0 });
    const first = client.verifyKey(KEY); // the client's 2000 ms
    const started = Date.now();
    const second = await client.verifyKey(KEY, { timeoutMs: 100 });
    const elapsed = Date.now() - started;
    expect(second).toMatchObject({ valid: false, reason: "unavailable", source: "fail-closed" });
    expect(second.valid === false && second.error).toBeInstanceOf(TollgateUnavailableError);
    expect(second.valid === false && second.error?.kind).toBe("timeout");
    expect(elapsed).toBeGreaterThanOrEqual(90);
    expect(elapsed).toBeLessThan(500);
    // The first caller's wait is its own: the request goes on, and one request served both.
    hold.open();
    expect(await first).toMatchObject({ valid: true, org_id: "org_a", source: "tollgate" });
    expect(count("POST /v1/keys/verify")).toBe(1);
  });

  it("with failMode open, a key verified before stays valid when the caller's budget runs out", async () => {
    let hold: ReturnType<typeof gate> | undefined;
    const { fetch } = scripted({
      "POST /v1/keys/verify": async (_b, signal) => {
        await hold?.wait(signal);
        return json(200, VALID);
      },
    });
    // keyCacheTtlMs 0: the verdict is never reused, only kept (cacheTtlMs) for fail-open answers.
    const client = new Tollgate({ baseUrl: BASE, apiKey: "op", fetch, keyCacheTtlMs: 0 });
    expect(await client.verifyKey(KEY)).toMatchObject({ valid: true, source: "tollgate" });
    hold = gate();
    const first = client.verifyKey(KEY);
    const started = Date.now();
    const open = await client.verifyKey(KEY, { timeoutMs: 100, failMode: "open" });
    expect(Date.now() - started).toBeLessThan(500);
    expect(open).toMatchObject({ valid: true, org_id: "org_a", source: "fail-open" });
    expect(open.valid && open.error?.kind).toBe("timeout");
    hold.open();
    expect(await first).toMatchObject({ valid: true, source: "tollgate" });
  });

  it("a verification whose callers all gave up still answers for the next ones", async () => {
    const hold = gate();
    const { fetch, count } = scripted({
      "POST /v1/keys/verify": (_b, signal) => hold.wait(signal).then(() => json(200, VALID)),
    });
    const client = new Tollgate({ baseUrl: BASE, apiKey: "op", fetch, timeoutMs: 2000, keyCacheTtlMs: 2000 });
    expect(await client.verifyKey(KEY, { timeoutMs: 100 })).toMatchObject({
      valid: false,
      reason: "unavailable",
    });
    // Sent with the client's budget, not the short one of the caller that started it.
    await sleep(150);
    hold.open();
    await sleep(20);
    expect(client.verifyKeyCached(KEY)).toMatchObject({ valid: true, org_id: "org_a", source: "cache" });
    expect(await client.verifyKey(KEY, { timeoutMs: 100 })).toMatchObject({ valid: true, source: "cache" });
    expect(count("POST /v1/keys/verify")).toBe(1);
  });
});

describe("the entitlement cache vs. this client's consuming checks", () => {
  it("a background refill that read the allocation before a consuming check does not bring its answer back", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(T);
    const org = seatsOrg();
    const client = new Tollgate({ baseUrl: BASE, apiKey: "op", fetch: org.fetch, cacheTtlMs: 10_000 });
    expect(await client.check("org_a", "seats", { consume: false })).toMatchObject({
      used: 4,
      source: "cache",
    });

    vi.setSystemTime(T + 8_500); // the last fifth of the TTL: a read refills in the background
    org.state.hold = gate();
    expect(client.checkCached("org_a", "seats")).toMatchObject({ used: 4 }); // starts the (held) refill
    await sleep(10); // its dry run has read 4 seats in use
    expect(await client.check("org_a", "seats")).toMatchObject({
      allowed: true,
      used: 5,
      source: "tollgate",
    });
    expect(client.checkCached("org_a", "seats")).toBeUndefined();
    org.state.hold.open();
    await sleep(20);

    // The refill was stored (a fresh TTL, the boolean), without its seats answer from before.
    expect(org.count("GET /v1/orgs/org_a/entitlements")).toBe(2);
    vi.setSystemTime(T + 12_000); // past the first entry's expiry
    expect(client.checkCached("org_a", "reports")).toMatchObject({ allowed: true, source: "cache" });
    expect(client.checkCached("org_a", "seats")).toBeUndefined();
    // The next read asks Tollgate, and its answer is the one cached.
    expect(await client.check("org_a", "seats", { consume: false })).toMatchObject({
      allowed: false,
      used: 5,
    });
    expect(client.checkCached("org_a", "seats")).toMatchObject({ allowed: false, used: 5 });
  });

  it("nor does a fill of an expired org that a consuming check overtook", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(T);
    const org = seatsOrg();
    const client = new Tollgate({ baseUrl: BASE, apiKey: "op", fetch: org.fetch, cacheTtlMs: 1000 });
    await client.preload("org_a");

    vi.setSystemTime(T + 1_500); // expired: the next read fills first
    org.state.hold = gate();
    const read = client.check("org_a", "seats", { consume: false });
    await sleep(10); // the fill's dry run has read 4 seats in use
    // A consuming check of a known limit feature goes straight to Tollgate, past the fill.
    expect(await client.check("org_a", "seats")).toMatchObject({ allowed: true, used: 5 });
    org.state.hold.open();
    // The read asks again rather than take the fill's answer from before the seat was taken.
    expect(await read).toMatchObject({ allowed: false, used: 5, source: "tollgate" });
    expect(client.checkCached("org_a", "seats")).toMatchObject({ used: 5 });
  });
});

describe("the key cache vs. what this client has seen since", () => {
  it("a background refresh that answers after a 'revoked' verdict does not make the key valid again", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(T);
    let revoked = false;
    let hold: ReturnType<typeof gate> | undefined;
    const { fetch } = scripted({
      "POST /v1/keys/verify": async (_b, signal) => {
        // Evaluated now; answered once released.
        const answer = revoked ? { valid: false, reason: "revoked" } : VALID;
        await hold?.wait(signal);
        return json(200, answer);
      },
    });
    const client = new Tollgate({ baseUrl: BASE, apiKey: "op", fetch, keyCacheTtlMs: 500, failMode: "open" });
    expect(await client.verifyKey(KEY)).toMatchObject({ valid: true });
    vi.setSystemTime(T + 300); // the second half of the TTL: a read verifies again in the background
    const refresh = gate();
    hold = refresh;
    expect(client.verifyKeyCached(KEY)).toBeDefined(); // starts the (held) refresh
    await sleep(10);
    revoked = true;
    hold = undefined;
    expect(await client.verifyKey(KEY, { feature: "reports" })).toEqual({
      valid: false,
      reason: "revoked",
      source: "tollgate",
    });
    expect(client.verifyKeyCached(KEY)).toBeUndefined();
    refresh.open();
    await sleep(20);
    expect(client.verifyKeyCached(KEY)).toBeUndefined();
    // Nor is it kept for fail-open answers: with Tollgate away, the key is refused.
    hold = gate();
    expect(await client.verifyKey(KEY, { timeoutMs: 100 })).toMatchObject({
      valid: false,
      reason: "unavailable",
    });
  });

  it("a verification under way when invalidate() drops the org's verdicts is not cached", async () => {
    for (const invalidate of [(c: Tollgate) => c.invalidate("org_a"), (c: Tollgate) => c.invalidate()]) {
      const hold = gate();
      const { fetch, count } = scripted({
        "POST /v1/keys/verify": (_b, signal) => hold.wait(signal).then(() => json(200, VALID)),
      });
      const client = new Tollgate({ baseUrl: BASE, apiKey: "op", fetch, keyCacheTtlMs: 2000 });
      const pending = client.verifyKey(KEY);
      await sleep(10);
      invalidate(client);
      hold.open();
      // The caller gets its answer; the cache does not keep a verdict from before the change.
      expect(await pending).toMatchObject({ valid: true, source: "tollgate" });
      expect(client.verifyKeyCached(KEY)).toBeUndefined();
      expect(await client.verifyKey(KEY)).toMatchObject({ valid: true, source: "tollgate" });
      expect(client.verifyKeyCached(KEY)).toMatchObject({ valid: true, source: "cache" });
      expect(count("POST /v1/keys/verify")).toBe(2);
    }
  });

  it("a caller that comes after a 'revoked' verdict does not join a verification sent before it", async () => {
    let revoked = false;
    let hold: ReturnType<typeof gate> | undefined;
    const { fetch, count } = scripted({
      "POST /v1/keys/verify": async (_b, signal) => {
        const answer = revoked ? { valid: false, reason: "revoked" } : VALID;
        await hold?.wait(signal);
        return json(200, answer);
      },
    });
    const client = new Tollgate({ baseUrl: BASE, apiKey: "op", fetch });
    const early = gate();
    hold = early;
    const first = client.verifyKey(KEY); // the shared verification, held
    await sleep(10);
    revoked = true;
    hold = undefined;
    expect(await client.verifyKey(KEY, { feature: "reports" })).toMatchObject({ reason: "revoked" });
    // Asked after the revocation was seen: a verification of its own, not the one from before.
    expect(await client.verifyKey(KEY)).toMatchObject({ valid: false, reason: "revoked" });
    expect(count("POST /v1/keys/verify")).toBe(3);
    early.open();
    expect(await first).toMatchObject({ valid: true });
    expect(client.verifyKeyCached(KEY)).toBeUndefined();
  });

  it("with failMode open, a key seen revoked while the caller waited is refused when the budget runs out", async () => {
    let hold: ReturnType<typeof gate> | undefined;
    let revoked = false;
    const { fetch } = scripted({
      "POST /v1/keys/verify": async (_b, signal) => {
        const answer = revoked ? { valid: false, reason: "revoked" } : VALID;
        await hold?.wait(signal);
        return json(200, answer);
      },
    });
    const client = new Tollgate({ baseUrl: BASE, apiKey: "op", fetch, keyCacheTtlMs: 50, failMode: "open" });
    expect(await client.verifyKey(KEY)).toMatchObject({ valid: true });
    await sleep(60); // past the TTL: the next call asks Tollgate, which does not answer in time
    hold = gate();
    const waiting = client.verifyKey(KEY, { feature: "reports", timeoutMs: 200 });
    await sleep(20);
    revoked = true;
    const seen = hold;
    hold = undefined;
    expect(await client.verifyKey(KEY, { feature: "reports" })).toMatchObject({ reason: "revoked" });
    expect(await waiting).toMatchObject({ valid: false, reason: "unavailable", source: "fail-closed" });
    seen.open();
  });

  it("when Tollgate answers slowly, a verdict is not verified again back to back", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(T);
    const hold = gate();
    const { fetch, count } = scripted({
      "POST /v1/keys/verify": (_b, signal) => hold.wait(signal).then(() => json(200, VALID)),
    });
    const client = new Tollgate({ baseUrl: BASE, apiKey: "op", fetch, keyCacheTtlMs: 1000 });
    const pending = client.verifyKey(KEY); // sent at T
    await sleep(10);
    vi.setSystemTime(T + 700); // answered 700 ms later: past half the TTL already
    hold.open();
    await pending;
    expect(client.verifyKeyCached(KEY)).toBeDefined();
    expect(count("POST /v1/keys/verify")).toBe(1); // not at once: a quarter TTL after the answer
    vi.setSystemTime(T + 950);
    expect(client.verifyKeyCached(KEY)).toBeDefined();
    expect(count("POST /v1/keys/verify")).toBe(2);
  });

  it("a verdict is fresh for keyCacheTtlMs from when its request was sent, not answered", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(T);
    const hold = gate();
    const { fetch } = scripted({
      "POST /v1/keys/verify": (_b, signal) => hold.wait(signal).then(() => json(200, VALID)),
    });
    const client = new Tollgate({ baseUrl: BASE, apiKey: "op", fetch, keyCacheTtlMs: 1000 });
    const pending = client.verifyKey(KEY); // sent at T
    await sleep(10);
    vi.setSystemTime(T + 400); // Tollgate answers 400 ms later
    hold.open();
    expect(await pending).toMatchObject({ valid: true, source: "tollgate" });
    expect(client.verifyKeyCached(KEY)).toMatchObject({ valid: true, source: "cache" });
    vi.setSystemTime(T + 1_000);
    expect(client.verifyKeyCached(KEY)).toBeUndefined();
  });
});

describe("background refreshes while Tollgate is down", () => {
  it("a failed refill of an org is not tried again for a second; the entry serves until it expires", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(T);
    const { state, fetch, count } = seatsOrg();
    const client = new Tollgate({ baseUrl: BASE, apiKey: "op", fetch, cacheTtlMs: 30_000 });
    await client.preload("org_a");
    expect(count("GET /v1/orgs/org_a/entitlements")).toBe(1);

    state.up = false;
    vi.setSystemTime(T + 24_000); // the last fifth: a read refills in the background, which fails
    expect(client.checkCached("org_a", "reports")).toMatchObject({ allowed: true });
    await sleep(20);
    expect(count("GET /v1/orgs/org_a/entitlements")).toBe(2);
    for (const at of [24_100, 24_500, 24_999]) {
      vi.setSystemTime(T + at);
      expect(client.checkCached("org_a", "reports")).toMatchObject({ allowed: true, source: "cache" });
      expect(await client.check("org_a", "reports")).toMatchObject({ allowed: true, source: "cache" });
      await sleep(20);
    }
    expect(count("GET /v1/orgs/org_a/entitlements")).toBe(2);

    state.up = true;
    vi.setSystemTime(T + 25_001); // a second after the failure: tried again
    client.checkCached("org_a", "reports");
    await sleep(20);
    expect(count("GET /v1/orgs/org_a/entitlements")).toBe(3);
    vi.setSystemTime(T + 40_000); // refilled at 25 s: fresh until 55 s
    expect(client.checkCached("org_a", "reports")).toMatchObject({ allowed: true, source: "cache" });
  });

  it("a failed refresh of a key is not tried again for a second; the verdict serves until it expires", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(T);
    let up = true;
    const { fetch, count } = scripted({ "POST /v1/keys/verify": () => (up ? json(200, VALID) : down()) });
    const client = new Tollgate({ baseUrl: BASE, apiKey: "op", fetch, keyCacheTtlMs: 2000 });
    expect(await client.verifyKey(KEY)).toMatchObject({ valid: true });

    up = false;
    vi.setSystemTime(T + 1_000); // the second half of the TTL: a read verifies again, which fails
    expect(client.verifyKeyCached(KEY)).toBeDefined();
    await sleep(20);
    expect(count("POST /v1/keys/verify")).toBe(2);
    for (const at of [1_100, 1_500, 1_999]) {
      vi.setSystemTime(T + at);
      expect(client.verifyKeyCached(KEY)).toMatchObject({ valid: true, source: "cache" });
      expect(await client.verifyKey(KEY)).toMatchObject({ valid: true, source: "cache" });
      await sleep(20);
    }
    expect(count("POST /v1/keys/verify")).toBe(2);
    vi.setSystemTime(T + 2_000);
    expect(client.verifyKeyCached(KEY)).toBeUndefined();
  });
});
