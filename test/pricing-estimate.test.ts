import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Meter } from "../src/modules/catalog/schema.js";
import { loadCatalog } from "../src/modules/catalog/validate.js";
import { aggregatePeriod } from "../src/modules/metering/usage.js";
import { appModes, createTestApp, type TestApp } from "./support/app.js";
import { writeCatalog } from "./support/tollgate-process.js";

/**
 * POST /v1/pricing/estimate over HTTP: plans and inline charges, quantities and events (aggregated
 * exactly as the stored rollups aggregate them — checked against what ingesting the same events
 * stores), the problems bad input gets, and the per-address budget of the public endpoint.
 */

const day = 86_400_000;

const CATALOG = `
currency: USD
default_plan: free
meters:
  - { key: api_calls, name: API calls, aggregation: count }
  - { key: payments, name: Payment volume, aggregation: sum }
  - { key: peak_gb, name: Peak storage, aggregation: max }
  - { key: low_gb, name: Lowest storage, aggregation: min }
  - { key: users, name: Active users, aggregation: unique_count, property: user_id }
  - { key: storage_gb, name: Storage, aggregation: latest }
  - { key: seats, name: Seats, aggregation: weighted_sum }
features:
  - { key: api_calls, type: metered, meter: api_calls }
plans:
  - key: free
    name: Free
    price: { month: "0" }
    entitlements: { api_calls: { limit: 100 } }
  - key: scale
    name: Scale
    price: { month: "49", year: "490" }
    entitlements: { api_calls: { limit: null } }
    charges:
      - meter: api_calls
        model: graduated
        tiers:
          - { up_to: 1000, unit_amount: "0", flat_amount: "0" }
          - { up_to: 10000, unit_amount: "0.002" }
          - { up_to: null, unit_amount: "0.001" }
      - { meter: payments, model: percentage, rate: "2.9", fixed_amount: "0.30", free_units_per_events: 1 }
      - { meter: users, model: package, package_size: 10, package_amount: "5", free_units: 5, min_amount: "20" }
      - { meter: seats, model: standard, unit_amount: "12" }
`;

const catalogFile = writeCatalog(CATALOG);
it("runs on a valid catalog", () => expect(loadCatalog(catalogFile).plans).toHaveLength(2));

const iso = (ms: number) => new Date(ms).toISOString();

describe("pricing estimate over HTTP", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ database: "pglite", redis: false, env: { TOLLGATE_CATALOG: catalogFile } });
  });
  afterAll(() => t.close());
  const estimate = (body: unknown, auth?: "operator") =>
    t.call("POST", "/v1/pricing/estimate", { body, ...(auth ? { auth } : {}) });

  it("prices a plan's charges from quantities, line by line, without a key", async () => {
    const res = await estimate({
      plan: "scale",
      usage: { api_calls: 12_500, payments: "1000", users: 12, seats: "3.5" },
    });
    expect(res.status, res.text).toBe(200);
    expect(res.body.currency).toBe("USD");
    expect(res.body.plan).toEqual({ key: "scale", version: 1 });
    expect(res.body.base_fee).toEqual({ interval: "month", amount: "49.00" });
    expect(
      res.body.lines.map((l: Record<string, string>) => [l.kind, l.meter, l.model, l.quantity, l.amount]),
    ).toEqual([
      // 9,000 × 0.002 + 2,500 × 0.001
      ["usage", "api_calls", "graduated", "12500", "20.50"],
      // One transaction of 1,000 (given as a total), and it is the free one.
      ["usage", "payments", "percentage", "1000", "0.00"],
      // 7 billable users: one package of 10 at $5, topped up to the $20 minimum.
      ["usage", "users", "package", "12", "5.00"],
      ["minimum_spend", "users", "package", "12", "15.00"],
      ["usage", "seats", "standard", "3.5", "42.00"],
    ]);
    expect(res.body.total).toBe("82.50");
    expect(res.body.lines[0].meter_name).toBe("API calls");
    expect(res.body.lines[0].tiers).toHaveLength(3);
  });

  it("shows the annual base fee when asked, and refuses an interval the plan is not sold by", async () => {
    const annual = await estimate({ plan: "scale", interval: "year" });
    expect(annual.status, annual.text).toBe(200);
    expect(annual.body.base_fee).toEqual({ interval: "year", amount: "490.00" });
    // No usage: the graduated charge's first flat (0) and the package minimum.
    expect(annual.body.total).toBe("20.00");
    const monthlyOnly = await estimate({ plan: "free", interval: "year" });
    expect(monthlyOnly.status).toBe(400);
    expect(monthlyOnly.body.errors[0]).toMatchObject({ field: "interval", code: "unknown_interval" });
  });

  it("prices inline charges, with their exact amounts next to the rounded ones", async () => {
    const res = await estimate({
      charges: [{ meter: "anything", model: "standard", unit_amount: "0.0037" }],
      usage: { anything: 1235 },
    });
    expect(res.status, res.text).toBe(200);
    expect(res.body.lines[0]).toMatchObject({
      amount: "4.57",
      exact_amount: "4.5695",
      meter_name: "anything",
    });
    expect(res.body.total).toBe("4.57");
    expect(res.body.base_fee).toBeNull();
  });

  it("aggregates events by each meter's aggregation over the period, transactions in timestamp order", async () => {
    // Lago's weighted-sum example: 20 GB from March 16, 10 more from March 17, averaged over March.
    const march = { start: "2026-03-01T00:00:00Z", end: "2026-04-01T00:00:00Z" };
    const res = await estimate({
      charges: [
        { meter: "seats", model: "standard", unit_amount: "1" },
        // Given out of order: the earliest transaction by timestamp (the 100) is the free one.
        { meter: "payments", model: "percentage", rate: "10", free_units_per_events: 1 },
        { meter: "users", model: "standard", unit_amount: "1" },
      ],
      events: [
        { meter: "seats", value: 20, timestamp: "2026-03-16T00:00:00Z" },
        { meter: "seats", value: 10, timestamp: "2026-03-17T00:00:00Z" },
        { meter: "payments", value: "50", timestamp: "2026-03-20T00:00:00Z" },
        { meter: "payments", value: "100", timestamp: "2026-03-02T00:00:00Z" },
        { meter: "users", timestamp: "2026-03-03T00:00:00Z", properties: { user_id: "u1" } },
        { meter: "users", timestamp: "2026-03-04T00:00:00Z", properties: { user_id: "u1" } },
        { meter: "users", timestamp: "2026-03-05T00:00:00Z", properties: { user_id: 7 } },
      ],
      period: march,
    });
    expect(res.status, res.text).toBe(200);
    expect(res.body.period).toEqual({ start: "2026-03-01T00:00:00.000Z", end: "2026-04-01T00:00:00.000Z" });
    const [seats, payments, users] = res.body.lines;
    // (20 × 16 days + 10 × 15 days) / 31 days = 15.161290322580645161…
    expect(seats.quantity).toBe("15.161290322580645161");
    expect(seats.amount).toBe("15.16");
    expect(payments).toMatchObject({ quantity: "150", amount: "5.00" });
    expect(users).toMatchObject({ quantity: "2", amount: "2.00" });
  });

  it("defaults the period to one month from the earliest event", async () => {
    const res = await estimate({
      charges: [{ meter: "seats", model: "standard", unit_amount: "1" }],
      events: [
        { meter: "seats", value: 4, timestamp: "2026-02-10T00:00:00Z" },
        { meter: "seats", value: -4, timestamp: "2026-02-24T00:00:00Z" },
      ],
    });
    expect(res.status, res.text).toBe(200);
    expect(res.body.period).toEqual({ start: "2026-02-10T00:00:00.000Z", end: "2026-03-10T00:00:00.000Z" });
    // 4 seats for 14 of the period's 28 days.
    expect(res.body.lines[0].quantity).toBe("2");
  });

  it("answers bad input with problem+json naming every bad field", async () => {
    const cases: [unknown, string, string][] = [
      [{ usage: {} }, "plan", "custom"],
      [{ plan: "scale", charges: [{ meter: "x", model: "standard", unit_amount: "1" }] }, "plan", "custom"],
      [{ plan: "enterprise" }, "plan", "unknown_plan"],
      [{ plan: "scale", version: 9 }, "version", "unknown_version"],
      [
        {
          charges: [
            {
              meter: "x",
              model: "graduated",
              tiers: [{ up_to: 10, unit_amount: "1" }, { up_to: 5, unit_amount: "1" }, { up_to: null }],
            },
          ],
        },
        "charges.0.tiers.1.up_to",
        "custom",
      ],
      [{ charges: [{ meter: "x", model: "flat_rate" }] }, "charges.0.model", "invalid_union"],
      [{ plan: "scale", usage: { api_calls: "1e6" } }, "usage.api_calls", "custom"],
      [{ plan: "scale", usage: { nope: 1 } }, "usage.nope", "unknown_meter"],
      [{ plan: "scale", usage: {}, events: [] }, "events", "custom"],
      [{ plan: "scale", events: [{ meter: "nope" }] }, "events.0.meter", "unknown_meter"],
      [{ plan: "scale", events: [{ meter: "users" }] }, "events.0.properties.user_id", "missing_property"],
      [
        {
          plan: "scale",
          events: [{ meter: "seats", timestamp: "2026-05-01T00:00:00Z" }],
          period: { start: "2026-03-01T00:00:00Z", end: "2026-04-01T00:00:00Z" },
        },
        "events.0.timestamp",
        "outside_period",
      ],
      [
        { plan: "scale", events: [], period: { start: "2026-03-01T00:00:00Z", end: "2026-03-01T00:00:00Z" } },
        "period.end",
        "invalid_period",
      ],
      [
        { plan: "scale", events: Array.from({ length: 1001 }, () => ({ meter: "seats" })) },
        "events",
        "too_big",
      ],
      [{ plan: "scale", colour: "red" }, "colour", "unknown_field"],
    ];
    for (const [body, field, code] of cases) {
      const res = await estimate(body);
      expect(res.status, `${JSON.stringify(body).slice(0, 120)}: ${res.text}`).toBe(400);
      expect(res.headers.get("content-type")).toContain("application/problem+json");
      expect(res.body.code).toBe("validation_failed");
      expect(res.body.errors, res.text).toContainEqual(expect.objectContaining({ field, code }));
    }
    const notJson = await t.call("POST", "/v1/pricing/estimate", { body: "{", headers: {} });
    expect(notJson.status).toBe(400);
  });
});

describe("the public estimate's budget", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ database: "pglite", redis: false, env: { TOLLGATE_CATALOG: catalogFile } });
  });
  afterAll(() => t.close());

  it("limits anonymous estimates per client address, not the operator's", async () => {
    const body = { plan: "free" };
    // 300 a minute, as a burst that refills 5 a second: every request of the burst passes, and the
    // limit comes once the burst plus what refilled meanwhile is spent (however slow this machine).
    const started = Date.now();
    let allowed = 0;
    let limited = await t.call("POST", "/v1/pricing/estimate", { body });
    while (limited.status === 200 && allowed < 1000) {
      allowed++;
      limited = await t.call("POST", "/v1/pricing/estimate", { body });
    }
    const refilled = Math.ceil(((Date.now() - started) / 1000) * 5);
    expect(allowed).toBeGreaterThanOrEqual(300);
    expect(allowed).toBeLessThanOrEqual(300 + refilled + 1);
    expect(limited.status, limited.text).toBe(429);
    expect(limited.body.code).toBe("rate_limited");
    expect(Number(limited.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    const operator = await t.call("POST", "/v1/pricing/estimate", { body, auth: "operator" });
    expect(operator.status).toBe(200);
  });
});

describe.each(appModes)("estimates from events equal the stored aggregation ($name)", (mode) => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ ...mode, env: { TOLLGATE_TEST_CLOCK: "1", TOLLGATE_CATALOG: catalogFile } });
  });
  afterAll(() => t.close());

  it("for every aggregation, the estimate's quantity is what ingesting the events stores", async () => {
    const created = await t.call("POST", "/v1/orgs", { auth: "operator", body: { name: "Acme" } });
    expect(created.status, created.text).toBe(201);
    const org = created.body.id as string;
    const sub = await t.call("GET", `/v1/orgs/${org}/subscription`, { auth: "operator" });
    const period = {
      startMs: Date.parse(sub.body.current_period_start),
      endMs: Date.parse(sub.body.current_period_end),
    };
    const advance = await t.call("POST", "/v1/test-clock/advance", {
      auth: "operator",
      body: { to: iso(period.startMs + 20 * day) },
    });
    expect(advance.status, advance.text).toBe(200);
    // A deterministic spread of values and times over the first 20 days.
    const events = Array.from({ length: 60 }, (_, i) => {
      const meter = ["payments", "peak_gb", "low_gb", "users", "storage_gb", "seats", "api_calls"][
        i % 7
      ] as string;
      const value = meter === "seats" ? String((i % 5) - 2) : `${(i * 37) % 101}.${i % 10}`;
      return {
        id: `evt_${i}`,
        org_id: org,
        meter,
        value,
        timestamp: iso(period.startMs + ((i * 7919) % (19 * day)) + 1000),
        properties: { user_id: `u${i % 4}` },
      };
    });
    const ingested = await t.call("POST", "/v1/events", { auth: "operator", body: { events } });
    expect(ingested.status, ingested.text).toBe(202);
    expect(ingested.body.accepted).toBe(60);

    const res = await t.call("POST", "/v1/pricing/estimate", {
      auth: "operator",
      body: {
        charges: t.deps.catalog.meters.map((m) => ({ meter: m.key, model: "standard", unit_amount: "1" })),
        events: events.map(({ meter, value, timestamp, properties }) => ({
          meter,
          value,
          timestamp,
          properties,
        })),
        period: { start: iso(period.startMs), end: iso(period.endMs) },
      },
    });
    expect(res.status, res.text).toBe(200);
    for (const meter of t.deps.catalog.meters) {
      const stored = await aggregatePeriod(t.deps, org, meter as Meter, period);
      const line = res.body.lines.find((l: { meter: string }) => l.meter === meter.key);
      expect(line.quantity, meter.key).toBe(stored);
    }
  });
});
