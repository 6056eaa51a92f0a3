import { isDeepStrictEqual } from "node:util";
import { Decimal } from "decimal.js";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadCatalog } from "../src/modules/catalog/validate.js";
import { periodStart } from "../src/modules/plans/periods.js";
import { appModes, createTestApp, type TestApp } from "./support/app.js";
import { writeCatalog } from "./support/tollgate-process.js";

/**
 * The estimate equals the posted invoice line. For random plans (every charge model, its optional
 * fields, charge-level minimum and maximum spend, charges on every aggregation) and random usage
 * events, `POST /v1/pricing/estimate` given the plan, the events and the billing period answers
 * exactly the usage and minimum-spend lines that the billing run posts on the invoice when that
 * period closes: same lines, same quantities, same rounded and exact amounts.
 *
 * The two sides are computed independently: the estimate aggregates the events in memory, the invoice
 * reads what ingesting them through `/v1/events` stored (hourly rollups, unique values, the raw
 * events a percentage charge walks).
 *
 * The cases are a deterministic fast-check sample: one catalog with a plan per case is written before
 * the app starts, then every case runs on one timeline of the test clock (orgs subscribe at T0, their
 * events are ingested month by month, the periods close). TOLLGATE_TEST_SEED picks another sample and
 * TOLLGATE_TEST_CASES its size; every failure names the seed, T0 and the case, with its charge and
 * events, so it can be replayed by hand with the estimate alone.
 */

const SEED = Number(process.env.TOLLGATE_TEST_SEED ?? 1);
const CASES = Number(process.env.TOLLGATE_TEST_CASES ?? 30);

// ---------------------------------------------------------------------------------------------
// The catalog: one meter per aggregation (and the recurring variants), a plan per generated case.

interface MeterDef {
  key: string;
  name: string;
  aggregation: "count" | "sum" | "max" | "min" | "unique_count" | "latest" | "weighted_sum";
  property?: string;
  recurring?: boolean;
}

const METERS: MeterDef[] = [
  { key: "m_count", name: "Count", aggregation: "count" },
  { key: "m_sum", name: "Sum", aggregation: "sum" },
  { key: "m_max", name: "Max", aggregation: "max" },
  { key: "m_min", name: "Min", aggregation: "min" },
  { key: "m_latest", name: "Latest", aggregation: "latest" },
  { key: "m_unique", name: "Unique", aggregation: "unique_count", property: "user" },
  {
    key: "m_unique_rec",
    name: "Unique (recurring)",
    aggregation: "unique_count",
    property: "user",
    recurring: true,
  },
  { key: "m_weighted", name: "Weighted", aggregation: "weighted_sum" },
  { key: "m_weighted_rec", name: "Weighted (recurring)", aggregation: "weighted_sum", recurring: true },
];
const meterOf = new Map(METERS.map((m) => [m.key, m]));

/** Offsets into the billing period are millionths of it; this one means its very last millisecond. */
const LAST_MS = 1_000_000;

type Charge = Record<string, unknown> & { meter: string; model: string };

interface GeneratedEvent {
  id: string;
  meter: string;
  value?: string | number;
  /** Where in the billing period, in millionths (LAST_MS: its last millisecond). */
  at: number;
  properties: Record<string, unknown>;
  /** Events are ingested in batches, in the order given; this is the batch (0, 1 or 2). */
  batch: number;
}

interface Case {
  interval: "month" | "year";
  price: string;
  charges: Charge[];
  events: GeneratedEvent[];
}

const digitString = (min: number, max: number) =>
  fc.array(fc.integer({ min: 0, max: 9 }), { minLength: min, maxLength: max }).map((d) => d.join(""));

/** A non-negative decimal string with up to `decimals` places (trailing zeros kept: "1.50"). */
const decimal = (intMax: number, decimals: number) =>
  fc
    .tuple(fc.integer({ min: 0, max: intMax }), digitString(0, decimals))
    .map(([int, frac]) => (frac ? `${int}.${frac}` : String(int)));

const positive = (intMax: number, decimals: number) =>
  decimal(intMax, decimals).filter((s) => new Decimal(s).greaterThan(0));

const signed = (arb: fc.Arbitrary<string>) =>
  fc.tuple(fc.boolean(), arb).map(([negative, v]) => (negative ? `-${v}` : v));

const amount = fc.oneof(
  { weight: 1, arbitrary: fc.constant("0") },
  { weight: 4, arbitrary: decimal(50, 2) },
  { weight: 2, arbitrary: decimal(5, 6) },
);

const rate = fc.oneof(
  { weight: 1, arbitrary: fc.constantFrom("0", "100") },
  { weight: 5, arbitrary: decimal(30, 3) },
);

/** Drops the fields fc.option left out (null): absent and default are what the catalog sees. */
function compact(record: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(record).filter(([, v]) => v !== null && v !== undefined));
}

/** A lower and an upper bound, each optional; when both are given, the lower is not above the upper. */
const bounds = (arb: fc.Arbitrary<string>) =>
  fc
    .tuple(fc.option(arb, { freq: 2 }), fc.option(arb, { freq: 2 }))
    .map(([low, high]) =>
      low !== null && high !== null && new Decimal(low).greaterThan(high) ? [high, low] : [low, high],
    );

/** 1–4 tiers with strictly increasing `up_to` (the last open-ended), each with the model's fields. */
const tiers = (fields: fc.Arbitrary<Record<string, unknown>>) =>
  fc.array(fc.tuple(positive(20, 2), fields), { minLength: 1, maxLength: 4 }).map((list) => {
    let upTo = new Decimal(0);
    return list.map(([step, tierFields], i) => {
      upTo = upTo.plus(step);
      return { up_to: i === list.length - 1 ? null : upTo.toFixed(), ...tierFields };
    });
  });

const priceTierFields = fc
  .record({ unit_amount: fc.option(amount, { freq: 4 }), flat_amount: fc.option(amount) })
  .map(compact);

const percentTierFields = fc.record({ rate, flat_amount: fc.option(amount) }).map(compact);

const modelFields: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  fc.record({ model: fc.constant("standard"), unit_amount: amount }),
  fc.record({ model: fc.constant("graduated"), tiers: tiers(priceTierFields) }),
  fc.record({ model: fc.constant("volume"), tiers: tiers(priceTierFields) }),
  fc
    .record({
      model: fc.constant("package"),
      package_size: positive(10, 2),
      package_amount: amount,
      free_units: fc.option(decimal(10, 1)),
    })
    .map(compact),
  fc
    .record({
      model: fc.constant("percentage"),
      rate,
      fixed_amount: fc.option(amount),
      free_units_per_events: fc.option(fc.integer({ min: 0, max: 5 })),
      free_units_per_total_aggregation: fc.option(fc.oneof(fc.constant("0"), decimal(200, 2))),
      per_transaction: bounds(decimal(3, 2)),
    })
    .map(({ per_transaction: [min, max], ...rest }) =>
      compact({ ...rest, per_transaction_min_amount: min, per_transaction_max_amount: max }),
    ),
  fc.record({ model: fc.constant("graduated_percentage"), tiers: tiers(percentTierFields) }),
);

const charge: fc.Arbitrary<Charge> = fc
  .tuple(fc.constantFrom(...METERS.map((m) => m.key)), modelFields, bounds(decimal(40, 2)))
  .map(
    ([meter, fields, [min, max]]) =>
      compact({ meter, ...fields, min_amount: min, max_amount: max }) as Charge,
  );

/** An event's value as its meter accepts it: sums are non-negative with at most 6 decimals. */
function eventValue(meter: MeterDef): fc.Arbitrary<string | undefined> {
  if (meter.aggregation === "sum") return fc.oneof(decimal(2000, 6), decimal(3, 6), fc.constant(undefined));
  const plain = fc.oneof(
    { weight: 6, arbitrary: signed(decimal(500, 3)) },
    // Many significant digits: quantities and amounts must stay exact on both sides.
    { weight: 1, arbitrary: signed(decimal(999_999_999, 20)) },
  );
  if (meter.aggregation === "count") return fc.option(plain, { freq: 3 }).map((v) => v ?? undefined);
  return fc.oneof({ weight: 8, arbitrary: plain }, { weight: 1, arbitrary: fc.constant(undefined) });
}

/** Where events fall: anywhere, or on a few shared instants (the period's first and last ms, its middle). */
const offset = fc.oneof(
  { weight: 3, arbitrary: fc.integer({ min: 0, max: LAST_MS - 1 }) },
  { weight: 1, arbitrary: fc.constantFrom(0, 500_000, LAST_MS) },
);

/**
 * Events of one meter at one instant: mostly one, sometimes a burst of two or three (timestamps of a
 * second's or a millisecond's resolution collide), where the order they were given in decides `latest`
 * and the percentage walk.
 */
function burstFor(meters: string[]): fc.Arbitrary<Omit<GeneratedEvent, "id" | "batch">[]> {
  return fc
    .tuple(
      fc.constantFrom(...meters),
      offset,
      fc.oneof(
        { weight: 4, arbitrary: fc.constant(1) },
        { weight: 1, arbitrary: fc.integer({ min: 2, max: 3 }) },
      ),
    )
    .chain(([key, at, size]) => {
      const meter = meterOf.get(key) as MeterDef;
      const event = fc
        .record({
          value: eventValue(meter),
          properties: fc.record({ user: fc.constantFrom<string | number>("ann", "bob", "cy", 1, "1", 2) }),
          asNumber: fc.boolean(),
        })
        .map(({ value, asNumber, properties }) => {
          if (value === undefined) return { meter: key, at, properties };
          // Sometimes a JSON number, as clients send them, when it is exactly the decimal (both ends
          // refuse numbers of more than 15 significant digits, which a double may not have kept).
          const exact =
            String(Number(value)) === value && value.replace(/[-.]/g, "").replace(/^0+/, "").length <= 15;
          return { meter: key, at, properties, value: asNumber && exact ? Number(value) : value };
        });
      return fc.array(event, { minLength: size, maxLength: size });
    });
}

const generatedCase: fc.Arbitrary<Case> = fc
  .record({
    interval: fc.oneof(
      { weight: 4, arbitrary: fc.constant("month" as const) },
      { weight: 1, arbitrary: fc.constant("year" as const) },
    ),
    price: fc.constantFrom("0", "9.99"),
    charges: fc.array(charge, { minLength: 1, maxLength: 4 }),
  })
  .chain((c) => {
    const charged = [...new Set(c.charges.map((ch) => ch.meter))];
    // Mostly the charged meters' events; a few others, which no charge prices.
    const meters = [...charged, ...charged, ...charged, ...METERS.map((m) => m.key)];
    return fc
      .array(
        fc.tuple(
          burstFor(meters),
          fc.array(fc.integer({ min: 0, max: 0xffffff }), { minLength: 3, maxLength: 3 }),
          fc.nat(2),
        ),
        {
          maxLength: c.interval === "year" ? 40 : 20,
          size: "max",
        },
      )
      .map((bursts) => {
        // Batches in the order given: a burst's batch is at least its predecessor's.
        let batch = 0;
        const events: GeneratedEvent[] = [];
        for (const [burst, ids, bump] of bursts) {
          if (bump === 2) batch = Math.min(2, batch + 1);
          burst.forEach((e, k) => {
            // Ids whose order is not the order given, as clients' UUIDs are.
            const id = `${(ids[k] as number).toString(16).padStart(6, "0")}_${events.length}`;
            events.push({ ...e, id, batch });
          });
        }
        return { ...c, events };
      });
  });

const cases = fc.sample(generatedCase, { seed: SEED, numRuns: CASES });

/** When in the month (and which month) the orgs subscribe: month ends, leap days and odd times of day. */
const [start] = fc.sample(
  fc.record({
    month: fc.integer({ min: 0, max: 11 }),
    day: fc.oneof(fc.integer({ min: 1, max: 28 }), fc.constantFrom(29, 30, 31)),
    ms: fc.integer({ min: 0, max: 86_400_000 - 1 }),
  }),
  { seed: SEED, numRuns: 1 },
) as [{ month: number; day: number; ms: number }];

/** The catalog's currency, and the digits of its minor unit: invoice lines round to them. */
const [currency] = fc.sample(fc.constantFrom(["USD", 2], ["JPY", 0], ["KWD", 3]), {
  seed: SEED,
  numRuns: 1,
}) as [[string, number]];

const planKey = (i: number) => `case_${i}`;

const catalog = {
  currency: currency[0],
  default_plan: "free",
  meters: METERS,
  plans: [
    { key: "free", name: "Free", price: { month: "0" } },
    ...cases.map((c, i) => ({
      key: planKey(i),
      name: `Case ${i}`,
      price: c.interval === "year" ? { month: c.price, year: c.price } : { month: c.price },
      charges: c.charges,
    })),
  ],
};

// JSON is YAML: the catalog file is the generated catalog as is.
const catalogFile = writeCatalog(JSON.stringify(catalog, null, 2));

it(`generates a valid catalog (seed ${SEED})`, () => {
  expect(loadCatalog(catalogFile).plans).toHaveLength(CASES + 1);
});

// ---------------------------------------------------------------------------------------------

const iso = (ms: number) => new Date(ms).toISOString();

type Line = {
  kind: string;
  meter: string;
  model: string;
  quantity: string;
  amount: string;
  exact_amount: string;
};
const LINE_FIELDS = ["kind", "meter", "model", "quantity", "amount", "exact_amount"] as const;
const pick = (line: Record<string, unknown>) =>
  Object.fromEntries(LINE_FIELDS.map((k) => [k, line[k]])) as unknown as Line;

describe.each(appModes)("the estimate equals the posted invoice line ($name)", (mode) => {
  let t: TestApp;
  let t0: number;

  beforeAll(async () => {
    t = await createTestApp({ ...mode, env: { TOLLGATE_TEST_CLOCK: "1", TOLLGATE_CATALOG: catalogFile } });
    const year = new Date(t.deps.clock.nowMs()).getUTCFullYear() + 1;
    const lastDay = new Date(Date.UTC(year, start.month + 1, 0)).getUTCDate();
    t0 = Date.UTC(year, start.month, Math.min(start.day, lastDay)) + start.ms;
  });
  afterAll(() => t.close());

  async function advanceTo(ms: number) {
    const res = await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: { to: iso(ms) } });
    expect(res.status, res.text).toBe(200);
  }

  it(`for ${CASES} random plans and their events (seed ${SEED})`, { timeout: 120_000 }, async () => {
    await advanceTo(t0);
    const context = `seed ${SEED}, ${currency[0]}, T0 ${iso(t0)}`;

    // Every case's org subscribes at T0.
    const orgs = await Promise.all(
      cases.map(async (c, i) => {
        const created = await t.call("POST", "/v1/orgs", { auth: "operator", body: { name: `Case ${i}` } });
        expect(created.status, created.text).toBe(201);
        const org = created.body.id as string;
        const sub = await t.call("POST", `/v1/orgs/${org}/subscription`, {
          auth: "operator",
          body: { plan: planKey(i), interval: c.interval, skip_payment: true },
        });
        expect(sub.status, sub.text).toBe(200);
        const period = {
          startMs: Date.parse(sub.body.current_period_start),
          endMs: Date.parse(sub.body.current_period_end),
        };
        expect(period.startMs, `${context}, case ${i}`).toBe(t0);
        return { org, period };
      }),
    );

    // Each case's events, at their place in its billing period.
    const timed = cases.map((c, i) => {
      const { startMs, endMs } = (orgs[i] as { period: { startMs: number; endMs: number } }).period;
      return c.events.map((e) => ({
        ...e,
        timestampMs:
          e.at === LAST_MS ? endMs - 1 : startMs + Math.floor((e.at * (endMs - startMs)) / LAST_MS),
      }));
    });

    // Usage is ingested while its usage month is open (events older than it are refused): month by
    // month, each month's events just before it ends, in the order given, batch by batch.
    const months = cases.some((c) => c.interval === "year") ? 12 : 1;
    for (let m = 0; m < months; m++) {
      const from = periodStart(t0, "month", m);
      const to = periodStart(t0, "month", m + 1);
      await advanceTo(to - 1);
      await Promise.all(
        timed.map(async (events, i) => {
          const org = (orgs[i] as { org: string }).org;
          for (let batch = 0; batch <= 2; batch++) {
            const send = events.filter(
              (e) => e.batch === batch && e.timestampMs >= from && e.timestampMs < to,
            );
            if (send.length === 0) continue;
            const res = await t.call("POST", "/v1/events", {
              auth: "operator",
              body: {
                events: send.map((e) => ({
                  id: e.id,
                  org_id: org,
                  meter: e.meter,
                  ...(e.value !== undefined ? { value: e.value } : {}),
                  timestamp: iso(e.timestampMs),
                  properties: e.properties,
                })),
              },
            });
            expect(res.status, `${context}, case ${i}: ${res.text}`).toBe(202);
            expect(res.body, `${context}, case ${i}: ${res.text}`).toMatchObject({
              accepted: send.length,
              rejected: [],
            });
          }
        }),
      );
    }

    // What the estimate says, for each plan, its events and its period.
    const estimates = await Promise.all(
      cases.map(async (_c, i) => {
        const { period } = orgs[i] as { period: { startMs: number; endMs: number } };
        const body = {
          plan: planKey(i),
          events: (timed[i] ?? []).map((e) => ({
            meter: e.meter,
            ...(e.value !== undefined ? { value: e.value } : {}),
            timestamp: iso(e.timestampMs),
            properties: e.properties,
          })),
          period: { start: iso(period.startMs), end: iso(period.endMs) },
        };
        const res = await t.call("POST", "/v1/pricing/estimate", { auth: "operator", body });
        expect(res.status, `${context}, case ${i}: ${res.text}`).toBe(200);
        return {
          body,
          lines: (res.body.lines as Record<string, unknown>[]).map(pick),
          total: res.body.total,
        };
      }),
    );

    // Every period closes.
    await advanceTo(Math.max(...orgs.map((o) => o.period.endMs)) + 1000);

    const mismatches: string[] = [];
    for (const [i, c] of cases.entries()) {
      const { org, period } = orgs[i] as { org: string; period: { startMs: number; endMs: number } };
      const list = await t.call("GET", `/v1/orgs/${org}/invoices?limit=100`, { auth: "operator" });
      expect(list.status, list.text).toBe(200);
      const invoice = (list.body.data as Record<string, any>[]).find(
        (inv) => inv.reason === "subscription_cycle" && inv.period_start === iso(period.startMs),
      );
      if (!invoice)
        throw new Error(`${context}, case ${i}: no invoice for the period ${iso(period.startMs)}`);
      expect(invoice.period_end).toBe(iso(period.endMs));
      const posted = (invoice.lines as Record<string, unknown>[])
        .filter((l) => l.kind === "usage" || l.kind === "minimum_spend")
        .map(pick);
      const estimate = estimates[i] as (typeof estimates)[number];
      if (isDeepStrictEqual(posted, estimate.lines)) {
        const sum = posted.reduce((total, l) => total.plus(l.amount), new Decimal(0));
        expect(sum.toFixed(currency[1]), `${context}, case ${i}: the estimate's total`).toBe(estimate.total);
        continue;
      }
      // Which charges' lines differ, with what they price: enough to replay with the estimate alone.
      const meters = [...new Set([...estimate.lines, ...posted].map((l) => l.meter))];
      const header = `case ${i} (${context}, ${c.interval}ly, period ${iso(period.startMs)} – ${iso(period.endMs)})`;
      let reported = false;
      for (const meter of meters) {
        const want = estimate.lines.filter((l) => l.meter === meter);
        const got = posted.filter((l) => l.meter === meter);
        if (isDeepStrictEqual(want, got)) continue;
        reported = true;
        const events = (timed[i] ?? []).filter((e) => e.meter === meter);
        mismatches.push(
          [
            `${header}, meter ${meter}:`,
            `  estimate: ${JSON.stringify(want)}`,
            `  invoice:  ${JSON.stringify(got)}`,
            `  meter:    ${JSON.stringify(meterOf.get(meter))}`,
            `  estimate request: ${JSON.stringify({
              charges: c.charges.filter((ch) => ch.meter === meter),
              events: estimate.body.events.filter((e) => e.meter === meter),
              period: estimate.body.period,
            })}`,
            `  ingested as (id, batch): ${JSON.stringify(events.map((e) => [e.id, e.batch]))}`,
          ].join("\n"),
        );
      }
      if (!reported)
        mismatches.push(
          `${header}: lines in another order\n  estimate: ${JSON.stringify(estimate.lines)}\n  invoice:  ${JSON.stringify(posted)}`,
        );
    }
    expect(mismatches.length, `estimate ≠ invoice:\n${mismatches.join("\n\n")}`).toBe(0);
  });
});
