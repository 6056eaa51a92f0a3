import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Decimal } from "decimal.js";
import { eq, sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { usageEvents, usagePeriods, usageRollups } from "../src/db/schema.js";
import type { Meter } from "../src/modules/catalog/schema.js";
import { loadCatalog } from "../src/modules/catalog/validate.js";
import { aggregatePeriod } from "../src/modules/metering/usage.js";
import { appModes, createTestApp, type TestApp } from "./support/app.js";

/**
 * POST /v1/events end to end: per-event validation, the late/future policy, every aggregation
 * (computed by hand here), usage series and CSV, events counting toward check quotas, tenancy of the
 * usage reads, and durability. The app runs on a catalog written for this file with one meter of each
 * aggregation, and on the test clock, so every billing period is known exactly.
 */

const minute = 60_000;
const hour = 3_600_000;
const day = 86_400_000;

const CATALOG = `
currency: USD
default_plan: free
meters:
  - { key: kolekts, name: Kolekts, aggregation: count }
  - { key: tokens, name: Tokens, aggregation: sum }
  - { key: peak_memory, name: Peak memory, aggregation: max }
  - { key: low_balance, name: Lowest balance, aggregation: min }
  - { key: active_users, name: Active users, aggregation: unique_count, property: user_id }
  - { key: storage_gb, name: Storage, aggregation: latest }
  - { key: seats, name: Seats, aggregation: weighted_sum }
  - { key: seats_carried, name: Seats carried over, aggregation: weighted_sum, recurring: true }
features:
  - { key: kolekts, name: Kolekts per month, type: metered, meter: kolekts, thresholds: [80, 100] }
plans:
  - key: free
    name: Free
    price: { month: "0" }
    entitlements:
      kolekts: { limit: 10 }
`;

let catalogDir: string;
let catalogFile: string;
beforeAll(() => {
  catalogDir = mkdtempSync(path.join(tmpdir(), "tollgate-metering-"));
  catalogFile = path.join(catalogDir, "catalog.yaml");
  writeFileSync(catalogFile, CATALOG);
  // The file must be a valid catalog, or every failure below would be about the catalog.
  expect(loadCatalog(catalogFile).meters).toHaveLength(8);
});
afterAll(() => rmSync(catalogDir, { recursive: true, force: true }));

const iso = (ms: number) => new Date(ms).toISOString();
let sequence = 0;
const eventId = () => `evt_${Date.now().toString(36)}_${sequence++}`;

interface Period {
  startMs: number;
  endMs: number;
}

describe.each(appModes)("usage events ($name)", (mode) => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({
      ...mode,
      env: { TOLLGATE_TEST_CLOCK: "1", TOLLGATE_CATALOG: catalogFile },
    });
  });
  afterAll(() => t.close());

  const now = () => t.deps.clock.nowMs();
  const newOrg = async (name = "Acme") => {
    const res = await t.call("POST", "/v1/orgs", { auth: "operator", body: { name } });
    expect(res.status, res.text).toBe(201);
    return res.body.id as string;
  };
  const post = (events: unknown[]) => t.call("POST", "/v1/events", { auth: "operator", body: { events } });
  const postOk = async (events: unknown[]) => {
    const res = await post(events);
    expect(res.status, res.text).toBe(202);
    return res.body as {
      accepted: number;
      duplicates: number;
      rejected: { index: number; code: string; detail: string }[];
    };
  };
  const period = async (org: string): Promise<Period> => {
    const res = await t.call("GET", `/v1/orgs/${org}/subscription`, { auth: "operator" });
    expect(res.status, res.text).toBe(200);
    return {
      startMs: Date.parse(res.body.current_period_start),
      endMs: Date.parse(res.body.current_period_end),
    };
  };
  const advanceTo = async (ms: number) => {
    const res = await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: { to: iso(ms) } });
    expect(res.status, res.text).toBe(200);
  };
  const check = (org: string, feature: string, amount: number | string = 1, consume = true) =>
    t.call("POST", "/v1/check", { auth: "operator", body: { org_id: org, feature, amount, consume } });
  const meter = (key: string) => t.deps.catalog.meters.find((m) => m.key === key) as Meter;
  const aggregate = (org: string, key: string, p: Period) => aggregatePeriod(t.deps, org, meter(key), p);
  const storedEvents = (org: string) =>
    t.database.db.select().from(usageEvents).where(eq(usageEvents.orgId, org));
  const kolektsUsed = async (org: string) => {
    const res = await t.call("GET", `/v1/orgs/${org}/entitlements`, { auth: "operator" });
    expect(res.status, res.text).toBe(200);
    return res.body.features.find((f: { feature: string }) => f.feature === "kolekts").used as number;
  };

  describe("batch validation", () => {
    it("validates each event on its own: the valid ones are recorded, every rejection is listed", async () => {
      const org = await newOrg();
      const { startMs } = await period(org);
      const ok = (extra: Record<string, unknown> = {}) => ({
        id: eventId(),
        org_id: org,
        meter: "kolekts",
        ...extra,
      });
      const batch: unknown[] = [
        ok(),
        ok({ org_id: "org_doesnotexist0000000000000" }),
        ok({ meter: "no_such_meter" }),
        ok({ meter: "tokens", value: "1e3" }),
        ok({ timestamp: "2026-01-01" }),
        ok({ timestamp: iso(now() + hour) }),
        ok({ timestamp: iso(startMs - 1000) }),
        ok({ properties: ["a"] }),
        ok({ meter: "active_users", properties: { someone: "u1" } }),
        ok({ colour: "red" }),
        ok({ id: "" }),
        ok({ meter: "tokens", value: "2.5", timestamp: iso(now()) }),
        ok({ meter: "tokens", value: "-1" }),
        ok({ meter: "tokens", value: "0.0000001" }),
        "not an event",
        ok({ org_id: 42 }),
        ok({ meter: 7 }),
        ok({ meter: "active_users", properties: { user_id: "u1" } }),
        ok({ id: 12 }),
        ok({ value: "abc" }),
        ok({ properties: "x" }),
        ok({ timestamp: "2026-01-01T10:00:00" }),
        ok({ id: "x".repeat(257) }),
      ];
      const res = await post(batch);
      expect(res.status, res.text).toBe(202);
      expect(res.body.accepted).toBe(3);
      expect(res.body.duplicates).toBe(0);
      expect(res.body.rejected.map((r: { index: number; code: string }) => [r.index, r.code])).toEqual([
        [1, "unknown_org"],
        [2, "unknown_meter"],
        [3, "invalid_value"],
        [4, "invalid_timestamp"],
        [5, "timestamp_in_future"],
        [6, "timestamp_too_old"],
        [7, "invalid_properties"],
        [8, "missing_property"],
        [9, "unknown_field"],
        [10, "invalid_id"],
        [12, "invalid_value"],
        [13, "invalid_value"],
        [14, "invalid_event"],
        [15, "invalid_org"],
        [16, "invalid_meter"],
        [18, "invalid_id"],
        [19, "invalid_value"],
        [20, "invalid_properties"],
        [21, "invalid_timestamp"],
        [22, "invalid_id"],
      ]);
      for (const r of res.body.rejected) expect(r.detail, JSON.stringify(r)).toMatch(/\w{3}/);
      // Exactly the three valid events are stored, and count.
      const stored = await storedEvents(org);
      expect(stored.map((e) => e.eventId).sort()).toEqual(
        [0, 11, 17].map((i) => (batch[i] as { id: string }).id).sort(),
      );
      expect(await kolektsUsed(org)).toBe(1);
      const p = await period(org);
      expect(await aggregate(org, "tokens", p)).toBe("2.5");
      expect(await aggregate(org, "active_users", p)).toBe("1");
    });

    it("refuses a malformed envelope as a whole with a 400 problem, recording nothing", async () => {
      const org = await newOrg();
      const valid = () => ({ id: eventId(), org_id: org, meter: "kolekts" });
      const cases: [string, unknown, string][] = [
        ["an array", [valid()], "body"],
        ["a string", "events", "body"],
        ["null", null, "body"],
        ["no events", {}, "events"],
        ["events not an array", { events: { 0: valid() } }, "events"],
        ["an empty array", { events: [] }, "events"],
        ["1001 events", { events: Array.from({ length: 1001 }, valid) }, "events"],
        ["an unknown top-level field", { events: [valid()], dry_run: true }, "dry_run"],
      ];
      for (const [name, body, field] of cases) {
        const res = await t.call("POST", "/v1/events", { auth: "operator", body: JSON.stringify(body) });
        expect(res.status, `${name}: ${res.text}`).toBe(400);
        expect(res.headers.get("content-type"), name).toMatch(/^application\/problem\+json/);
        expect(res.body.code, name).toBe("validation_failed");
        expect(res.body.errors?.[0]?.field, name).toBe(field);
      }
      expect(await storedEvents(org)).toEqual([]);
      // 1000 is the largest batch, and it is accepted whole.
      const full = await postOk(Array.from({ length: 1000 }, valid));
      expect(full).toEqual({ accepted: 1000, duplicates: 0, rejected: [] });
      expect(await storedEvents(org)).toHaveLength(1000);
    });

    it("refuses a body that is not JSON: 415 for another media type, 400 for broken JSON", async () => {
      const org = await newOrg();
      const text = await t.call("POST", "/v1/events", {
        auth: "operator",
        body: `events=${org}`,
        headers: { "content-type": "text/plain" },
      });
      expect(text.status).toBe(415);
      expect(text.body.code).toBe("unsupported_media_type");
      const broken = await t.call("POST", "/v1/events", {
        auth: "operator",
        body: `{"events": [{"id": "e1", "org_id": "${org}", "meter": "kolekts"}`,
      });
      expect(broken.status, broken.text).toBe(400);
      expect(broken.headers.get("content-type")).toMatch(/^application\/problem\+json/);
      expect(broken.body.code).toBe("validation_failed");
      expect(await storedEvents(org)).toEqual([]);
    });

    it("counts a repeated id within a batch and across batches as a duplicate, never twice in usage", async () => {
      const org = await newOrg();
      const other = await newOrg("Globex");
      const a = { id: eventId(), org_id: org, meter: "tokens", value: "1.5" };
      const b = { id: eventId(), org_id: org, meter: "kolekts" };
      expect(await postOk([a, b, a, { ...b, value: 3 }])).toEqual({
        accepted: 2,
        duplicates: 2,
        rejected: [],
      });
      // A replay of the whole batch, with a new event; and the same id in another org is another event.
      const c = { id: eventId(), org_id: org, meter: "kolekts" };
      expect(await postOk([b, a, c, { ...b, org_id: other }])).toEqual({
        accepted: 2,
        duplicates: 2,
        rejected: [],
      });
      const p = await period(org);
      expect(await aggregate(org, "tokens", p)).toBe("1.5");
      expect(await aggregate(org, "kolekts", p)).toBe("2");
      expect(await kolektsUsed(org)).toBe(2);
      expect(await kolektsUsed(other)).toBe(1);
      expect(await storedEvents(org)).toHaveLength(3);
      // The stored value is the first one's: a replay never rewrites history.
      const stored = (await storedEvents(org)).find((e) => e.eventId === a.id);
      expect(new Decimal(stored?.value ?? "0").toString()).toBe("1.5");
    });
  });

  describe("late and future events", () => {
    it("accepts events up to 5 minutes ahead of the clock and refuses later ones", async () => {
      const org = await newOrg();
      await advanceTo(now() + day);
      const at = (ms: number) => ({ id: eventId(), org_id: org, meter: "kolekts", timestamp: iso(ms) });
      const res = await postOk([
        at(now() + 4 * minute),
        at(now() + 5 * minute),
        at(now() + 6 * minute),
        at(now() + 5 * minute + 1000),
      ]);
      expect(res.accepted).toBe(2);
      expect(res.rejected.map((r) => [r.index, r.code])).toEqual([
        [2, "timestamp_in_future"],
        [3, "timestamp_in_future"],
      ]);
      expect(await kolektsUsed(org)).toBe(2);
    });

    it("refuses events before the open period, also once the period has rolled over", async () => {
      const org = await newOrg();
      const first = await period(org);
      await advanceTo(first.startMs + 2 * day);
      const at = (ms: number) => ({ id: eventId(), org_id: org, meter: "kolekts", timestamp: iso(ms) });
      const res = await postOk([at(first.startMs - 1000), at(first.startMs), at(first.startMs + day)]);
      expect(res.accepted).toBe(2);
      expect(res.rejected.map((r) => [r.index, r.code])).toEqual([[0, "timestamp_too_old"]]);

      await advanceTo(first.endMs + hour);
      const second = await period(org);
      expect(second.startMs).toBe(first.endMs);
      const late = await postOk([at(first.startMs + day), at(first.endMs - 1000), at(second.startMs)]);
      expect(late.accepted).toBe(1);
      expect(late.rejected.map((r) => [r.index, r.code])).toEqual([
        [0, "timestamp_too_old"],
        [1, "timestamp_too_old"],
      ]);
      // The closed period kept exactly what it had; the new one has the one event.
      expect(await aggregate(org, "kolekts", first)).toBe("2");
      expect(await aggregate(org, "kolekts", second)).toBe("1");
      expect(await kolektsUsed(org)).toBe(1);
    });

    it("files an event a few minutes ahead, past the period's end, in the next period", async () => {
      const org = await newOrg();
      const first = await period(org);
      await advanceTo(first.endMs - 2 * minute);
      const ahead = {
        id: eventId(),
        org_id: org,
        meter: "kolekts",
        timestamp: iso(first.endMs + 2 * minute),
      };
      const current = { id: eventId(), org_id: org, meter: "kolekts" };
      expect((await postOk([ahead, current])).accepted).toBe(2);
      const stored = new Map((await storedEvents(org)).map((e) => [e.eventId, e.periodStart.getTime()]));
      expect(stored.get(ahead.id)).toBe(first.endMs);
      expect(stored.get(current.id)).toBe(first.startMs);
      expect(await kolektsUsed(org)).toBe(1);
      await advanceTo(first.endMs + minute);
      expect(await kolektsUsed(org)).toBe(1);
      const peek = await check(org, "kolekts", 1, false);
      expect(peek.body).toMatchObject({ allowed: true, used: 1, limit: 10 });
    });
  });

  describe("aggregations", () => {
    it("aggregates every meter exactly as the catalog spec defines it, and carries recurring levels", async () => {
      const org = await newOrg();
      const p = await period(org);
      const seconds = (p.endMs - p.startMs) / 1000;
      expect(Number.isInteger(seconds / 4)).toBe(true);
      await advanceTo(p.startMs + Math.floor((p.endMs - p.startMs) * 0.6));
      const H = Math.ceil((p.startMs + 2 * hour) / hour) * hour; // a whole hour inside the period
      const ev = (meterKey: string, atMs: number, value?: unknown, properties?: Record<string, unknown>) => ({
        id: eventId(),
        org_id: org,
        meter: meterKey,
        timestamp: iso(atMs),
        ...(value === undefined ? {} : { value }),
        ...(properties ? { properties } : {}),
      });
      const at = (fraction: number) => p.startMs + fraction * (p.endMs - p.startMs);
      // Seat deltas: +10 at the start, +2.5 at a quarter, −4 at half (sent out of order).
      const deltas: [number, string][] = [
        [at(0.5), "-4"],
        [at(0), "10"],
        [at(0.25), "2.5"],
      ];
      await postOk([
        ev("kolekts", H),
        ev("kolekts", H + hour, 5), // a count meter counts events, whatever their value
        ev("kolekts", H + 2 * hour, "0.5"),
        ev("tokens", H, "0.1"),
        ev("tokens", H + 2 * hour, 0.2),
        ev("peak_memory", H, "3"),
        ev("peak_memory", H + hour, "-2.5"),
        ev("peak_memory", H + 3 * hour, "10.25"),
        ev("low_balance", H, "3"),
        ev("low_balance", H + hour, "-2.5"),
        ev("low_balance", H + 3 * hour, "10.25"),
        ev("active_users", H, 1, { user_id: "u1" }),
        ev("active_users", H + hour, 1, { user_id: "u2", plan: "pro" }),
        ev("active_users", H + 2 * hour, 1, { user_id: "u1" }),
        ev("storage_gb", H + 30 * minute, "7"),
        ...deltas.flatMap(([ms, v]) => [ev("seats", ms, v), ev("seats_carried", ms, v)]),
      ]);
      // Latest: later batches carrying earlier timestamps (same hour, and an earlier hour) change nothing.
      await postOk([ev("storage_gb", H + 10 * minute, "4"), ev("storage_gb", H - hour, "9")]);
      await postOk([
        ev("active_users", H + 4 * hour, 1, { user_id: "u3" }),
        ev("active_users", H + 5 * hour, 1, { user_id: "u2" }),
      ]);

      // Σ(level × seconds held) / seconds, walked segment by segment.
      const weighted = (carried: Decimal, changes: [number, string][], span: Period) => {
        const sorted = [...changes].sort((x, y) => x[0] - y[0]);
        let level = carried;
        let since = span.startMs;
        let integral = new Decimal(0);
        for (const [ms, v] of sorted) {
          integral = integral.plus(level.times((ms - since) / 1000));
          level = level.plus(v);
          since = ms;
        }
        integral = integral.plus(level.times((span.endMs - since) / 1000));
        return { value: integral.div((span.endMs - span.startMs) / 1000), level };
      };
      const firstSeats = weighted(new Decimal(0), deltas, p);
      // 10 for a quarter, 12.5 for a quarter, 8.5 for half the period.
      expect(firstSeats.value.toString()).toBe("9.875");

      const expected: Record<string, string> = {
        kolekts: "3",
        tokens: "0.3",
        peak_memory: "10.25",
        low_balance: "-2.5",
        active_users: "3",
        storage_gb: "7",
        seats: "9.875",
        seats_carried: "9.875",
      };
      for (const [key, value] of Object.entries(expected)) {
        expect(await aggregate(org, key, p), key).toBe(value);
      }

      // As a series, each bucket is the average level over the bucket (by hour around the +2.5).
      const seatSeries = async (key: string, fromMs: number, toMs: number, granularity: string) => {
        const query = new URLSearchParams({ meter: key, from: iso(fromMs), to: iso(toMs), granularity });
        const res = await t.call("GET", `/v1/orgs/${org}/usage?${query}`, { auth: "operator" });
        expect(res.status, res.text).toBe(200);
        return res.body.series.map((b: { value: string }) => b.value);
      };
      const byHand = (changes: [number, string][], fromMs: number, buckets: number, step: number) =>
        Array.from({ length: buckets }, (_, i) => {
          const b = fromMs + i * step;
          const level = changes.filter(([ms]) => ms < b).reduce((sum, [, v]) => sum.plus(v), new Decimal(0));
          const inside = changes.filter(([ms]) => ms >= b && ms < b + step);
          return weighted(level, inside, { startMs: b, endMs: b + step }).value.toString();
        });
      const around = Math.floor(at(0.25) / hour) * hour - 2 * hour;
      const hourly = byHand(deltas, around, 4, hour);
      expect(hourly[0]).toBe("10");
      expect(hourly[3]).toBe("12.5");
      expect(await seatSeries("seats", around, around + 4 * hour, "hour")).toEqual(hourly);
      expect(await seatSeries("seats_carried", around, around + 4 * hour, "hour")).toEqual(hourly);

      // The next period: the recurring meter starts at the level carried over, the other at 0;
      // meters without events in it are 0.
      await advanceTo(p.endMs + Math.floor((p.endMs - p.startMs) * 0.6));
      const next = await period(org);
      expect(next.startMs).toBe(p.endMs);
      const half = next.startMs + (next.endMs - next.startMs) / 2;
      await postOk([ev("seats", half, "1.5"), ev("seats_carried", half, "1.5")]);
      const carried = weighted(firstSeats.level, [[half, "1.5"]], next);
      const fresh = weighted(new Decimal(0), [[half, "1.5"]], next);
      expect(carried.value.toString()).toBe("9.25");
      expect(fresh.value.toString()).toBe("0.75");
      expect(await aggregate(org, "seats_carried", next)).toBe("9.25");
      expect(await aggregate(org, "seats", next)).toBe("0.75");
      for (const key of ["kolekts", "tokens", "peak_memory", "low_balance", "active_users", "storage_gb"]) {
        expect(await aggregate(org, key, next), key).toBe("0");
      }
      // The closed period did not move.
      for (const [key, value] of Object.entries(expected)) {
        expect(await aggregate(org, key, p), key).toBe(value);
      }
    });

    it("starts a non-recurring weighted_sum series at 0 in the next period, as its total does", async () => {
      const org = await newOrg();
      const p = await period(org);
      const quarter = p.startMs + (p.endMs - p.startMs) / 4;
      await advanceTo(quarter + hour);
      await postOk(
        ["seats", "seats_carried"].map((key) => ({
          id: eventId(),
          org_id: org,
          meter: key,
          value: "10",
          timestamp: iso(quarter),
        })),
      );
      await advanceTo(p.endMs + 3 * day);
      const next = await period(org);
      expect(await aggregate(org, "seats", next)).toBe("0");
      expect(await aggregate(org, "seats_carried", next)).toBe("10");
      const daily = async (key: string) => {
        const from = Math.ceil(next.startMs / day) * day;
        const query = new URLSearchParams({
          meter: key,
          from: iso(from),
          to: iso(from + 2 * day),
          granularity: "day",
        });
        const res = await t.call("GET", `/v1/orgs/${org}/usage?${query}`, { auth: "operator" });
        expect(res.status, res.text).toBe(200);
        return res.body.series.map((b: { value: string }) => b.value);
      };
      expect(await daily("seats_carried")).toEqual(["10", "10"]);
      expect(await daily("seats")).toEqual(["0", "0"]);
    });

    it("keeps weighted_sum exact with millisecond timestamps and six-decimal deltas", async () => {
      const org = await newOrg();
      const p = await period(org);
      await advanceTo(p.startMs + 3 * day);
      const changes: [number, string][] = [
        [p.startMs + 1234, "12.345678"],
        [p.startMs + day + 567, "-0.000001"],
        [p.startMs + 2 * day + 89, "987654.321987"],
      ];
      await postOk(
        changes.map(([ms, value]) => ({
          id: eventId(),
          org_id: org,
          meter: "seats",
          value,
          timestamp: iso(ms),
        })),
      );
      // Σ value × ms held, exactly in integers (values × 10⁶), then one rounding to 20 digits.
      let integral = 0n;
      for (const [ms, value] of changes) {
        integral += BigInt(new Decimal(value).times(1_000_000).toFixed(0)) * BigInt(p.endMs - ms);
      }
      const exact = new Decimal(integral.toString())
        .div(new Decimal(p.endMs - p.startMs).times(1_000_000))
        .toSignificantDigits(20);
      expect(await aggregate(org, "seats", p)).toBe(exact.toString());
    });

    it("writes tiny aggregates as plain decimals, never in exponent notation", async () => {
      const org = await newOrg();
      const p = await period(org);
      await advanceTo(p.endMs - 10_000);
      await postOk([
        { id: eventId(), org_id: org, meter: "low_balance", value: "0.00000001" },
        { id: eventId(), org_id: org, meter: "storage_gb", value: "0.000000025" },
        // One seat for the period's last second.
        { id: eventId(), org_id: org, meter: "seats", value: "1", timestamp: iso(p.endMs - 1000) },
      ]);
      expect(await aggregate(org, "low_balance", p)).toBe("0.00000001");
      expect(await aggregate(org, "storage_gb", p)).toBe("0.000000025");
      const seats = await aggregate(org, "seats", p);
      expect(seats).toMatch(/^0\.0+[1-9]\d*$/);
      expect(seats).toBe(new Decimal(1).div((p.endMs - p.startMs) / 1000).toFixed());
      const query = new URLSearchParams({
        meter: "low_balance",
        from: iso(p.endMs - hour),
        to: iso(p.endMs),
        granularity: "hour",
      });
      const series = await t.call("GET", `/v1/orgs/${org}/usage?${query}`, { auth: "operator" });
      expect(series.body.series.map((b: { value: string }) => b.value)).toContain("0.00000001");
    });

    it("gives weighted_sum to 20 significant digits when the average does not terminate", async () => {
      const org = await newOrg();
      const p = await period(org);
      const third = p.startMs + Math.round((p.endMs - p.startMs) / 3 / 1000) * 1000;
      await advanceTo(third + minute);
      await postOk([{ id: eventId(), org_id: org, meter: "seats", value: "1", timestamp: iso(third) }]);
      const seconds = (p.endMs - p.startMs) / 1000;
      const held = (p.endMs - third) / 1000;
      const exact = new Decimal(held).div(seconds).toSignificantDigits(20);
      expect(await aggregate(org, "seats", p)).toBe(exact.toString());
    });
  });

  describe("usage series", () => {
    let org: string;
    let D: number;
    const tokenEvents: [number, string][] = [];

    beforeAll(async () => {
      org = await newOrg();
      const p = await period(org);
      const startDay = Date.UTC(
        new Date(p.startMs).getUTCFullYear(),
        new Date(p.startMs).getUTCMonth(),
        new Date(p.startMs).getUTCDate(),
      );
      D = startDay + 2 * day;
      tokenEvents.push(
        [D + 10 * minute, "1.5"],
        [D + 50 * minute, "2"],
        [D + 2 * hour + minute, "0.25"],
        [D + day + 5 * hour, "4"],
      );
      await advanceTo(D + 3 * day);
      await postOk([
        ...tokenEvents.map(([ms, value]) => ({
          id: eventId(),
          org_id: org,
          meter: "tokens",
          value,
          timestamp: iso(ms),
        })),
        { id: eventId(), org_id: org, meter: "kolekts", timestamp: iso(D + 10 * minute) },
        { id: eventId(), org_id: org, meter: "kolekts", timestamp: iso(D + 20 * minute) },
      ]);
    });

    const series = (query: Record<string, string>, auth = "operator") =>
      t.call("GET", `/v1/orgs/${org}/usage?${new URLSearchParams(query)}`, { auth });

    it("answers zero-filled hour, day and month buckets with exact decimal strings", async () => {
      const hourly = await series({
        meter: "tokens",
        from: iso(D),
        to: iso(D + 4 * hour),
        granularity: "hour",
      });
      expect(hourly.status, hourly.text).toBe(200);
      expect(hourly.body).toEqual({
        meter: "tokens",
        aggregation: "sum",
        granularity: "hour",
        series: [
          { start: iso(D), value: "3.5" },
          { start: iso(D + hour), value: "0" },
          { start: iso(D + 2 * hour), value: "0.25" },
          { start: iso(D + 3 * hour), value: "0" },
        ],
      });

      const daily = await series({ meter: "tokens", from: iso(D), to: iso(D + 3 * day), granularity: "day" });
      expect(daily.body.series).toEqual([
        { start: iso(D), value: "3.75" },
        { start: iso(D + day), value: "4" },
        { start: iso(D + 2 * day), value: "0" },
      ]);

      // Months: the events grouped by their UTC month by hand.
      const monthOf = (ms: number) => Date.UTC(new Date(ms).getUTCFullYear(), new Date(ms).getUTCMonth(), 1);
      const byMonth = new Map<number, Decimal>();
      for (const [ms, v] of tokenEvents) {
        byMonth.set(monthOf(ms), (byMonth.get(monthOf(ms)) ?? new Decimal(0)).plus(v));
      }
      const monthly = await series({
        meter: "tokens",
        from: iso(D),
        to: iso(D + 2 * day),
        granularity: "month",
      });
      expect(monthly.body.series).toEqual(
        [...byMonth].map(([start, v]) => ({ start: iso(start), value: v.toString() })),
      );

      const counts = await series({
        meter: "kolekts",
        from: iso(D),
        to: iso(D + 2 * hour),
        granularity: "hour",
      });
      expect(counts.body.series).toEqual([
        { start: iso(D), value: "2" },
        { start: iso(D + hour), value: "0" },
      ]);

      // Defaults: the open period so far, by day; the buckets add up to the period's total.
      const whole = await series({ meter: "tokens" });
      expect(whole.status, whole.text).toBe(200);
      expect(whole.body.granularity).toBe("day");
      const total = whole.body.series.reduce(
        (sum: Decimal, b: { value: string }) => sum.plus(b.value),
        new Decimal(0),
      );
      expect(total.toString()).toBe("7.75");
      const p = await period(org);
      expect(Date.parse(whole.body.series[0].start)).toBeLessThanOrEqual(p.startMs);
      expect(Date.parse(whole.body.series.at(-1).start)).toBeLessThanOrEqual(now());
    });

    it("answers a brand-new org's period so far when no range is given", async () => {
      const fresh = await newOrg();
      const res = await t.call("GET", `/v1/orgs/${fresh}/usage?meter=tokens`, { auth: "operator" });
      expect(res.status, res.text).toBe(200);
      const startDay = Date.UTC(
        new Date(now()).getUTCFullYear(),
        new Date(now()).getUTCMonth(),
        new Date(now()).getUTCDate(),
      );
      expect(res.body.series).toEqual([{ start: iso(startDay), value: "0" }]);
      const csv = await t.call("GET", `/v1/orgs/${fresh}/usage.csv`, { auth: "operator" });
      expect(csv.status, csv.text).toBe(200);
      expect(csv.text.split(/\r?\n/).filter(Boolean)).toHaveLength(1 + t.deps.catalog.meters.length);
    });

    it("refuses an unknown meter, an empty range and too many buckets", async () => {
      const cases: [Record<string, string>, string][] = [
        [{ meter: "no_such_meter" }, "meter"],
        [{ meter: "tokens", from: iso(D), to: iso(D) }, "to"],
        [{ meter: "tokens", from: iso(D), to: iso(D - hour) }, "to"],
        [
          { meter: "tokens", from: "2000-01-01T00:00:00Z", to: "2020-01-01T00:00:00Z", granularity: "hour" },
          "granularity",
        ],
        [{ meter: "tokens", granularity: "week" }, "granularity"],
        [{ meter: "tokens", from: "yesterday" }, "from"],
        [{}, "meter"],
      ];
      for (const [query, field] of cases) {
        const res = await series(query);
        expect(res.status, `${JSON.stringify(query)}: ${res.text}`).toBe(400);
        expect(res.body.code).toBe("validation_failed");
        expect(
          res.body.errors.map((e: { field: string }) => e.field),
          JSON.stringify(query),
        ).toContain(field);
      }
      // The same range by day is fine.
      const daily = await series({
        meter: "tokens",
        from: "2000-01-01T00:00:00Z",
        to: "2020-01-01T00:00:00Z",
        granularity: "day",
      });
      expect(daily.status, daily.text).toBe(200);
    });

    it("exports CSV: one meter, or every meter of the catalog", async () => {
      const one = await t.call(
        "GET",
        `/v1/orgs/${org}/usage.csv?${new URLSearchParams({ meter: "tokens", from: iso(D), to: iso(D + 3 * hour), granularity: "hour" })}`,
        { auth: "operator" },
      );
      expect(one.status, one.text).toBe(200);
      expect(one.headers.get("content-type")).toMatch(/^text\/csv/);
      expect(one.text.split(/\r?\n/).filter(Boolean)).toEqual([
        "meter,start,value",
        `tokens,${iso(D)},3.5`,
        `tokens,${iso(D + hour)},0`,
        `tokens,${iso(D + 2 * hour)},0.25`,
      ]);

      const all = await t.call(
        "GET",
        `/v1/orgs/${org}/usage.csv?${new URLSearchParams({ from: iso(D), to: iso(D + hour), granularity: "hour" })}`,
        { auth: "operator" },
      );
      expect(all.status, all.text).toBe(200);
      const [header, ...rows] = all.text.split(/\r?\n/).filter(Boolean);
      expect(header).toBe("meter,start,value");
      const byMeter = new Map(rows.map((r) => [r.split(",")[0], r]));
      expect([...byMeter.keys()].sort()).toEqual(t.deps.catalog.meters.map((m) => m.key).sort());
      expect(rows).toHaveLength(t.deps.catalog.meters.length);
      expect(byMeter.get("tokens")).toBe(`tokens,${iso(D)},3.5`);
      expect(byMeter.get("kolekts")).toBe(`kolekts,${iso(D)},2`);
      expect(byMeter.get("peak_memory")).toBe(`peak_memory,${iso(D)},0`);

      const bad = await t.call("GET", `/v1/orgs/${org}/usage.csv?meter=no_such_meter`, { auth: "operator" });
      expect(bad.status).toBe(400);
    });
  });

  describe("quotas", () => {
    const kolekts = (org: string, n: number) =>
      Array.from({ length: n }, () => ({ id: eventId(), org_id: org, meter: "kolekts" }));
    const thresholds = async (org: string) => {
      const res = await t.call("GET", `/v1/orgs/${org}/threshold-events`, { auth: "operator" });
      expect(res.status, res.text).toBe(200);
      return (res.body.data as { feature: string; threshold: number; quantity: string; limit: string }[])
        .map((d) => ({ feature: d.feature, threshold: d.threshold, quantity: Number(d.quantity) }))
        .sort((a, b) => a.threshold - b.threshold);
    };

    for (const seeded of [false, true]) {
      it(`counts events toward check quotas (counter ${seeded ? "already held" : "not yet held"} by the store)`, async () => {
        const org = await newOrg();
        if (seeded) expect((await check(org, "kolekts", 1, false)).body).toMatchObject({ used: 0 });
        const batch = kolekts(org, 8);
        expect((await postOk(batch)).accepted).toBe(8);
        const first = await check(org, "kolekts");
        expect(first.body).toMatchObject({ allowed: true, used: 9, remaining: 1, limit: 10 });
        expect((await check(org, "kolekts")).body).toMatchObject({ allowed: true, used: 10, remaining: 0 });
        const denied = await check(org, "kolekts");
        expect(denied.status).toBe(200);
        expect(denied.body).toMatchObject({
          allowed: false,
          reason: "quota_exceeded",
          used: 10,
          limit: 10,
          remaining: 0,
        });
        expect(denied.body.upgrade_url).toContain(org);

        // 80% was crossed by the batch, once; 100% by the check. A replayed batch crosses nothing again.
        expect(await thresholds(org)).toEqual([
          { feature: "kolekts", threshold: 80, quantity: 8 },
          { feature: "kolekts", threshold: 100, quantity: 10 },
        ]);
        expect(await postOk(batch)).toMatchObject({ accepted: 0, duplicates: 8 });
        // Events past the limit are still recorded (they already happened) but cross nothing new.
        expect((await postOk(kolekts(org, 2))).accepted).toBe(2);
        expect(await thresholds(org)).toHaveLength(2);
        expect(await kolektsUsed(org)).toBe(12);
        expect((await check(org, "kolekts", 1, false)).body).toMatchObject({ allowed: false, used: 12 });
      });
    }
  });

  describe("tenancy", () => {
    it("lets an org's API key with usage:read read its own usage only; without the scope it is 403", async () => {
      const org = await newOrg();
      const other = await newOrg("Globex");
      await postOk([{ id: eventId(), org_id: org, meter: "kolekts" }]);
      const key = async (orgId: string, scopes: string[]) => {
        const res = await t.call("POST", `/v1/orgs/${orgId}/api-keys`, {
          auth: "operator",
          body: { name: "Backend", scopes },
        });
        expect(res.status, res.text).toBe(201);
        return res.body.key as string;
      };
      const reader = await key(org, ["usage:read"]);
      const paths = (orgId: string) => [
        `/v1/orgs/${orgId}/entitlements`,
        `/v1/orgs/${orgId}/usage?meter=kolekts`,
        `/v1/orgs/${orgId}/usage.csv?meter=kolekts`,
        `/v1/orgs/${orgId}/threshold-events`,
      ];
      for (const p of paths(org)) expect((await t.call("GET", p, { auth: reader })).status, p).toBe(200);
      const own = await t.call("GET", `/v1/orgs/${org}/entitlements`, { auth: reader });
      expect(own.body.features.find((f: { feature: string }) => f.feature === "kolekts").used).toBe(1);
      for (const p of paths(other)) {
        const res = await t.call("GET", p, { auth: reader });
        expect(res.status, p).toBe(404);
        expect(res.body.code).toBe("not_found");
      }
      const noScope = await key(org, ["keys:read", "billing:read"]);
      for (const p of paths(org)) {
        const res = await t.call("GET", p, { auth: noScope });
        expect(res.status, p).toBe(403);
        expect(res.body.code).toBe("forbidden");
      }

      // A signed-in user reads their own org's usage, and gets 404 for someone else's.
      const register = await t.call("POST", "/v1/auth/register", {
        body: {
          email: `metering.${Date.now()}.${sequence++}@example.com`,
          password: "correct horse battery staple",
          name: "Ada",
        },
      });
      expect(register.status, register.text).toBe(201);
      const user = register.body.access_token as string;
      for (const p of paths(register.body.org.id)) {
        expect((await t.call("GET", p, { auth: user })).status, p).toBe(200);
      }
      for (const p of paths(org)) expect((await t.call("GET", p, { auth: user })).status, p).toBe(404);
      // Nobody but the operator records events.
      const events = { events: [{ id: eventId(), org_id: org, meter: "kolekts" }] };
      expect((await t.call("POST", "/v1/events", { auth: reader, body: events })).status).toBe(403);
      expect((await t.call("POST", "/v1/events", { auth: user, body: events })).status).toBe(403);
      expect((await t.call("POST", "/v1/events", { body: events })).status).toBe(401);
      expect(await kolektsUsed(org)).toBe(1);
    });
  });

  describe("durability", () => {
    const snapshot = async (org: string) => ({
      events: (await storedEvents(org)).length,
      periods: (
        await t.database.db
          .select({ quantity: usagePeriods.quantity, meter: usagePeriods.meter })
          .from(usagePeriods)
          .where(eq(usagePeriods.orgId, org))
      ).map((r) => `${r.meter}=${Number(r.quantity)}`),
      rollups: (await t.database.db.select().from(usageRollups).where(eq(usageRollups.orgId, org))).length,
      used: await kolektsUsed(org),
    });

    it("has every accepted event in usage_events once the 202 is out", async () => {
      const org = await newOrg();
      await advanceTo(now() + hour);
      const ts = now() - minute;
      const sent = [
        { id: eventId(), org_id: org, meter: "tokens", value: "2.75", properties: { model: "large" } },
        {
          id: eventId(),
          org_id: org,
          meter: "active_users",
          properties: { user_id: "u9" },
          timestamp: iso(ts),
        },
      ];
      await postOk(sent);
      const rows = await storedEvents(org);
      expect(rows).toHaveLength(2);
      const tokens = rows.find((r) => r.eventId === sent[0]?.id);
      expect(tokens).toMatchObject({ meter: "tokens", properties: { model: "large" } });
      expect(new Decimal(tokens?.value ?? 0).toString()).toBe("2.75");
      expect(tokens?.timestamp.getTime()).toBe(now());
      const users = rows.find((r) => r.eventId === sent[1]?.id);
      expect(users?.timestamp.getTime()).toBe(ts);
      expect(users?.properties).toEqual({ user_id: "u9" });
    });

    it("changes nothing for a batch whose every event is rejected", async () => {
      const org = await newOrg();
      await postOk([
        { id: eventId(), org_id: org, meter: "kolekts" },
        { id: eventId(), org_id: org, meter: "tokens", value: "1" },
      ]);
      const before = await snapshot(org);
      const res = await postOk([
        { id: eventId(), org_id: org, meter: "kolekts", timestamp: iso(now() + hour) },
        { id: eventId(), org_id: org, meter: "tokens", value: "-1" },
        { id: eventId(), org_id: org, meter: "nope" },
      ]);
      expect(res.accepted).toBe(0);
      expect(res.rejected).toHaveLength(3);
      expect(await snapshot(org)).toEqual(before);
    });

    it("writes nothing of a batch that fails as a whole, and records it once when retried", async () => {
      const org = await newOrg();
      expect(org).toMatch(/^org_[0-9a-z]+$/);
      const peek = await check(org, "kolekts", 1, false); // the store now holds the counter
      expect(peek.body.used).toBe(0);
      // The last write of the transaction (the 80% crossing) fails for this org alone.
      await t.database.query(
        sql.raw(`
        create or replace function test_fail_threshold() returns trigger language plpgsql as $$
        begin raise exception 'injected failure'; end $$`),
      );
      await t.database.query(
        sql.raw(`create trigger test_fail_threshold before insert on threshold_events for each row
          when (new.org_id = '${org}') execute function test_fail_threshold()`),
      );
      const batch = Array.from({ length: 8 }, () => ({ id: eventId(), org_id: org, meter: "kolekts" }));
      try {
        const failed = await post(batch);
        expect(failed.status, failed.text).toBe(503);
        expect(failed.body.code).toBe("unavailable");
        expect(failed.text).not.toContain("injected failure");
        expect(await snapshot(org)).toEqual({ events: 0, periods: [], rollups: 0, used: 0 });
        expect((await check(org, "kolekts", 1, false)).body.used).toBe(0);
      } finally {
        await t.database.query(sql.raw("drop trigger test_fail_threshold on threshold_events"));
      }
      expect(await postOk(batch)).toEqual({ accepted: 8, duplicates: 0, rejected: [] });
      expect((await check(org, "kolekts", 1, false)).body.used).toBe(8);
      expect(await kolektsUsed(org)).toBe(8);
    });
  });
});
