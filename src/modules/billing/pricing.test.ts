import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { chargeSchema } from "../catalog/charges.js";
import type { Charge } from "../catalog/schema.js";
import { chargeLines, linesTotal } from "./lines.js";
import { formatMoney, Money, minorUnitDigits, roundMoney } from "./money.js";
import { priceCharge } from "./pricing.js";

/**
 * The pricing engine against published worked examples (Stripe's tiered-pricing and
 * quantity-transformation docs, Lago's charge-model docs), the spec's own statements, and properties
 * checked against naive, unit-by-unit re-computations.
 */

const charge = (raw: Record<string, unknown>): Charge => chargeSchema.parse({ meter: "units", ...raw });
const cost = (c: Charge, quantity: string | number, transactions?: (string | number)[]) =>
  priceCharge(c, {
    quantity: String(quantity),
    ...(transactions ? { transactions: transactions.map((v) => ({ value: String(v) })) } : {}),
  }).amount;

describe("Stripe: tiered pricing (docs 'Set up tiered pricing')", () => {
  // Font licences: up to 5 at $7, up to 10 at $6.50, then $6 (up_to inclusive).
  const tiers = [
    { up_to: 5, unit_amount: "7" },
    { up_to: 10, unit_amount: "6.50" },
    { up_to: null, unit_amount: "6" },
  ];

  it.each([
    [1, "7"],
    [5, "35"],
    [6, "39"],
    [20, "120"],
    [25, "150"],
  ])("volume: %i fonts cost %s USD (the whole quantity at the tier it reaches)", (q, expected) => {
    expect(cost(charge({ model: "volume", tiers }), q)).toBe(expected);
  });

  it.each([
    [1, "7"],
    [5, "35"],
    [6, "41.5"],
    [20, "127.5"],
    [25, "157.5"],
  ])("graduated: %i fonts cost %s USD (each unit in its own tier)", (q, expected) => {
    expect(cost(charge({ model: "graduated", tiers }), q)).toBe(expected);
  });

  // "Add a flat rate": five tiers of 5 with unit and flat amounts.
  const flatTiers = [
    { up_to: 5, unit_amount: "5", flat_amount: "10" },
    { up_to: 10, unit_amount: "4", flat_amount: "20" },
    { up_to: 15, unit_amount: "3", flat_amount: "30" },
    { up_to: 20, unit_amount: "2", flat_amount: "40" },
    { up_to: null, unit_amount: "1", flat_amount: "50" },
  ];

  it("volume with flat fees: 12 units = 12 × 3 + 30 = 66", () => {
    expect(cost(charge({ model: "volume", tiers: flatTiers }), 12)).toBe("66");
  });

  it("graduated with flat fees: 12 units = (25 + 10) + (20 + 20) + (6 + 30) = 111", () => {
    const priced = priceCharge(charge({ model: "graduated", tiers: flatTiers }), { quantity: "12" });
    expect(priced.amount).toBe("111");
    expect(priced.tiers?.map((t) => [t.tier, t.units, t.amount])).toEqual([
      [1, "5", "35"],
      [2, "5", "40"],
      [3, "2", "36"],
    ]);
  });

  it("quantity 0 bills the first tier's flat amount, in either mode ($10)", () => {
    expect(cost(charge({ model: "volume", tiers: flatTiers }), 0)).toBe("10");
    expect(cost(charge({ model: "graduated", tiers: flatTiers }), 0)).toBe("10");
  });

  it("a sub-cent graduated amount rounds on the invoice line: 100,070 tokens cost $4.00", () => {
    const tokens = charge({
      model: "graduated",
      tiers: [
        { up_to: 100000, unit_amount: "0", flat_amount: "4" },
        { up_to: null, unit_amount: "0.000065" },
      ],
    });
    const [line] = chargeLines(tokens, { quantity: "100070" }, "USD");
    expect(line?.exact_amount).toBe("4.00455");
    expect(line?.amount).toBe("4.00");
  });
});

describe("Stripe: quantity transformation (package pricing)", () => {
  it("$10 per started hour: 150 minutes cost $30", () => {
    expect(cost(charge({ model: "package", package_size: 60, package_amount: "10" }), 150)).toBe("30");
  });

  it.each([
    [1, "10"],
    [3, "10"],
    [5, "10"],
    [6, "20"],
    [7, "20"],
  ])("$10 for every 5 users or portion thereof: %i users cost $%s", (users, expected) => {
    expect(cost(charge({ model: "package", package_size: 5, package_amount: "10" }), users)).toBe(expected);
  });

  it("zero usage costs zero (no package is started)", () => {
    expect(cost(charge({ model: "package", package_size: 5, package_amount: "10" }), 0)).toBe("0");
  });
});

describe("Lago: charge models (docs)", () => {
  it("standard: $0.05 × 1,000 API calls = $50", () => {
    expect(cost(charge({ model: "standard", unit_amount: "0.05" }), 1000)).toBe("50");
  });

  it("package: 100 free units then $5 per 100; 201 units cost $10", () => {
    const c = charge({ model: "package", package_size: 100, package_amount: "5", free_units: 100 });
    expect(cost(c, 201)).toBe("10");
    expect(cost(c, 100)).toBe("0");
    expect(cost(c, 101)).toBe("5");
    expect(cost(c, 200)).toBe("5");
  });

  it("volume with a flat fee per tier: 65,000 API calls cost 65,000 × $0.0006 + $10 = $49", () => {
    const c = charge({
      model: "volume",
      tiers: [
        { up_to: 10000, unit_amount: "0.0010", flat_amount: "10" },
        { up_to: 50000, unit_amount: "0.0008", flat_amount: "10" },
        { up_to: 100000, unit_amount: "0.0006", flat_amount: "10" },
        { up_to: null, unit_amount: "0.0004", flat_amount: "10" },
      ],
    });
    expect(cost(c, 65000)).toBe("49");
    // Fractional usage just past a bound is in the next tier (up_to is inclusive).
    expect(cost(c, "10000")).toBe("20");
    expect(cost(c, "10000.5")).toBe("18.0004");
  });

  it("percentage: 1.2% + $0.10, the first 3 transactions or $500 free: 200, 100, 100, 50 → $0.70", () => {
    const c = charge({
      model: "percentage",
      rate: "1.2",
      fixed_amount: "0.10",
      free_units_per_events: 3,
      free_units_per_total_aggregation: "500",
    });
    const priced = priceCharge(c, {
      quantity: "450",
      transactions: ["200", "100", "100", "50"].map((value) => ({ value })),
    });
    expect(priced.amount).toBe("0.7");
    expect(priced.percentage).toMatchObject({
      transactions: 4,
      free_transactions: 3,
      paying_transactions: 1,
      free_amount: "400",
    });
  });

  it("percentage: per-transaction minimum and maximum ($20 → $1 minimum, $600 → $5 maximum)", () => {
    const c = charge({
      model: "percentage",
      rate: "1",
      fixed_amount: "0.50",
      per_transaction_min_amount: "1",
      per_transaction_max_amount: "5",
    });
    expect(cost(c, 20, [20])).toBe("1");
    expect(cost(c, 600, [600])).toBe("5");
    expect(cost(c, 200, [200])).toBe("2.5");
    const priced = priceCharge(c, {
      quantity: "820",
      transactions: ["20", "600", "200"].map((value) => ({ value })),
    });
    expect(priced.amount).toBe("8.5");
    expect(priced.percentage).toMatchObject({ raised_to_min: 1, lowered_to_max: 1, paying_transactions: 3 });
  });

  it("graduated percentage: 1% to 1,000 (+$200), 2% to 10,000 (+$300), then 3% (+$400)", () => {
    const c = charge({
      model: "graduated_percentage",
      tiers: [
        { up_to: 1000, rate: "1", flat_amount: "200" },
        { up_to: 10000, rate: "2", flat_amount: "300" },
        { up_to: null, rate: "3", flat_amount: "400" },
      ],
    });
    // The doc's running totals: $500 → 205; +$550 → 511 (205 + 306); +$4,000 → 591 (511 + 80).
    expect(cost(c, 500)).toBe("205");
    expect(cost(c, 1050)).toBe("511");
    expect(cost(c, 5050)).toBe("591");
    // Third tier reached: 10 + 180 + 0.03 × 1 + the three flats.
    expect(cost(c, 10001)).toBe("1090.03");
  });

  it("charge minimum: $0.01 per MTU with a $100 minimum and $50 of usage adds a $50 true-up line", () => {
    const c = charge({ model: "standard", unit_amount: "0.010", min_amount: "100" });
    const lines = chargeLines(c, { quantity: "5000" }, "USD");
    expect(lines.map((l) => [l.kind, l.amount])).toEqual([
      ["usage", "50.00"],
      ["minimum_spend", "50.00"],
    ]);
    expect(linesTotal(lines, "USD")).toBe("100.00");
  });
});

describe("the spec's statements", () => {
  it("graduated: a unit exactly on a bound stays in the lower tier; the next tier's flat starts past it", () => {
    const c = charge({
      model: "graduated",
      tiers: [
        { up_to: 10, unit_amount: "1", flat_amount: "5" },
        { up_to: null, unit_amount: "0.5", flat_amount: "3" },
      ],
    });
    expect(cost(c, 10)).toBe("15");
    expect(cost(c, "10.5")).toBe("18.25");
  });

  it("percentage: an absent or zero limit does not apply; with neither, nothing is free", () => {
    const paying = charge({ model: "percentage", rate: "10", free_units_per_events: 0 });
    expect(cost(paying, 30, [10, 20])).toBe("3");
    const byAmount = charge({ model: "percentage", rate: "10", free_units_per_total_aggregation: "15" });
    // The first 10 are free, then 5 of the 20: 15 pay.
    expect(cost(byAmount, 30, [10, 20])).toBe("1.5");
    const byEvents = charge({ model: "percentage", rate: "10", free_units_per_events: 1 });
    expect(cost(byEvents, 30, [10, 20])).toBe("2");
    const zeroMax = charge({ model: "percentage", rate: "10", per_transaction_max_amount: "0" });
    expect(cost(zeroMax, 30, [10, 20])).toBe("3");
  });

  it("percentage: a transaction partly free pays the fixed amount on what is left", () => {
    const c = charge({
      model: "percentage",
      rate: "2",
      fixed_amount: "0.30",
      free_units_per_total_aggregation: "100",
    });
    // 80 free; of 50, 20 are free and 30 pay: 0.60 + 0.30.
    expect(cost(c, 130, [80, 50])).toBe("0.9");
  });

  it("percentage without transactions prices the quantity as one transaction", () => {
    const c = charge({ model: "percentage", rate: "2.9", fixed_amount: "0.30" });
    expect(cost(c, 100)).toBe("3.2");
  });

  it("max_amount caps the charge; min_amount tops it up to exactly the rounded minimum", () => {
    const capped = priceCharge(charge({ model: "standard", unit_amount: "1", max_amount: "50" }), {
      quantity: "80",
    });
    expect([capped.usage_amount, capped.amount, capped.capped]).toEqual(["80", "50", true]);
    const lines = chargeLines(
      charge({ model: "standard", unit_amount: "0.001", min_amount: "10" }),
      { quantity: "1005" },
      "USD",
    );
    // 1.005 rounds half away from zero to 1.01; the top-up makes the two lines exactly 10.00.
    expect(lines.map((l) => l.amount)).toEqual(["1.01", "8.99"]);
  });

  it("negative aggregates price as zero", () => {
    expect(cost(charge({ model: "standard", unit_amount: "2" }), -5)).toBe("0");
  });

  it("amounts stay exact far beyond binary floats", () => {
    const c = charge({ model: "standard", unit_amount: "0.000000001" });
    expect(cost(c, "123456789012345678901234567890")).toBe("123456789012345678901.23456789");
    expect(cost(charge({ model: "standard", unit_amount: "0.1" }), 3)).toBe("0.3");
  });
});

describe("rounding to the currency's minor unit", () => {
  it("knows the ISO 4217 minor units", () => {
    expect([minorUnitDigits("USD"), minorUnitDigits("JPY"), minorUnitDigits("KWD")]).toEqual([2, 0, 3]);
  });

  it("rounds half away from zero", () => {
    expect(formatMoney(roundMoney(new Money("0.125"), "USD"), "USD")).toBe("0.13");
    expect(formatMoney(roundMoney(new Money("-0.125"), "USD"), "USD")).toBe("-0.13");
    expect(formatMoney(roundMoney(new Money("0.124999"), "USD"), "USD")).toBe("0.12");
    expect(formatMoney(new Money("2.5"), "JPY")).toBe("3");
    expect(formatMoney(new Money("-0.001"), "USD")).toBe("0.00");
  });
});

// ---------------------------------------------------------------------------------------------
// Properties

const money = fc.integer({ min: 0, max: 100_000 }).map((cents) => new Money(cents).div(100).toFixed());
/** Ascending tier bounds (whole units) with prices; the last tier is open-ended. */
const tierList = fc
  .array(fc.record({ width: fc.integer({ min: 1, max: 50 }), unit: money, flat: money }), {
    minLength: 1,
    maxLength: 6,
  })
  .map((raw) => {
    let bound = 0;
    return raw.map((t, i) => {
      bound += t.width;
      return { up_to: i === raw.length - 1 ? null : bound, unit_amount: t.unit, flat_amount: t.flat };
    });
  });

describe("properties", () => {
  it("graduated equals pricing unit by unit (each unit at its tier, each reached tier's flat once)", () => {
    fc.assert(
      fc.property(tierList, fc.integer({ min: 0, max: 300 }), (tiers, q) => {
        let expected = new Money(tiers[0]?.flat_amount ?? 0);
        for (let unit = 1; unit <= q; unit++) {
          const index = tiers.findIndex((t) => t.up_to === null || unit <= t.up_to);
          const tier = tiers[index] as (typeof tiers)[number];
          expected = expected.plus(tier.unit_amount);
          const firstUnitOfTier = index > 0 && unit === (tiers[index - 1]?.up_to as number) + 1;
          if (firstUnitOfTier) expected = expected.plus(tier.flat_amount);
        }
        expect(cost(charge({ model: "graduated", tiers }), q)).toBe(expected.toFixed());
      }),
    );
  });

  it("graduated never exceeds the dearest tier's price × q plus every flat amount, nor decreases", () => {
    fc.assert(
      fc.property(tierList, fc.integer({ min: 0, max: 10_000 }), (tiers, q) => {
        const c = charge({ model: "graduated", tiers });
        const top = Money.max(...tiers.map((t) => new Money(t.unit_amount)));
        const flats = tiers.reduce((sum, t) => sum.plus(t.flat_amount), new Money(0));
        const amount = new Money(cost(c, q));
        expect(amount.lessThanOrEqualTo(top.times(q).plus(flats))).toBe(true);
        expect(amount.greaterThanOrEqualTo(cost(c, Math.max(0, q - 1)))).toBe(true);
      }),
    );
  });

  it("volume prices the whole quantity at the one tier that contains it", () => {
    fc.assert(
      fc.property(tierList, fc.integer({ min: 0, max: 400 }), (tiers, q) => {
        const containing = tiers.filter((t, i) => {
          const lower = i === 0 ? -1 : (tiers[i - 1]?.up_to as number);
          return q > lower && (t.up_to === null || q <= t.up_to);
        });
        expect(containing).toHaveLength(1);
        const tier = containing[0] as (typeof tiers)[number];
        const expected = new Money(tier.unit_amount).times(q).plus(tier.flat_amount);
        expect(cost(charge({ model: "volume", tiers }), q)).toBe(expected.toFixed());
      }),
    );
  });

  it("one tier: graduated, volume and standard (plus the flat) agree", () => {
    fc.assert(
      fc.property(money, money, fc.integer({ min: 0, max: 1_000_000 }), (unit, flat, q) => {
        const tiers = [{ up_to: null, unit_amount: unit, flat_amount: flat }];
        const standard = new Money(cost(charge({ model: "standard", unit_amount: unit }), q)).plus(flat);
        expect(cost(charge({ model: "graduated", tiers }), q)).toBe(standard.toFixed());
        expect(cost(charge({ model: "volume", tiers }), q)).toBe(standard.toFixed());
      }),
    );
  });

  it("package: the fewest packages that cover the billable units", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 50 }),
        fc.integer({ min: 0, max: 30 }),
        fc.integer({ min: 0, max: 500 }),
        (size, free, q) => {
          let packages = 0;
          while (packages * size < q - free) packages++;
          const c = charge({ model: "package", package_size: size, package_amount: "2.5", free_units: free });
          expect(cost(c, q)).toBe(new Money(packages).times("2.5").toFixed());
        },
      ),
    );
  });

  it("percentage: free allowances only lower the amount; bounds hold per transaction", () => {
    fc.assert(
      fc.property(
        fc.array(money, { maxLength: 20 }),
        fc.option(fc.integer({ min: 0, max: 5 }), { nil: null }),
        fc.option(money, { nil: null }),
        (values, freeEvents, freeAmount) => {
          const base = { model: "percentage", rate: "2.5", fixed_amount: "0.25" };
          const without = new Money(cost(charge(base), 0, values));
          const withFree = new Money(
            cost(
              charge({
                ...base,
                free_units_per_events: freeEvents,
                free_units_per_total_aggregation: freeAmount,
              }),
              0,
              values,
            ),
          );
          expect(withFree.lessThanOrEqualTo(without)).toBe(true);
          const naive = values.reduce(
            (sum, v) => sum.plus(new Money(v).times("0.025").plus("0.25")),
            new Money(0),
          );
          expect(without.toFixed()).toBe(naive.toFixed());
          const bounded = priceCharge(
            charge({ ...base, per_transaction_min_amount: "0.5", per_transaction_max_amount: "3" }),
            { quantity: "0", transactions: values.map((value) => ({ value })) },
          );
          const amount = new Money(bounded.amount);
          expect(amount.greaterThanOrEqualTo(new Money("0.5").times(values.length))).toBe(true);
          expect(amount.lessThanOrEqualTo(new Money(3).times(values.length))).toBe(true);
        },
      ),
    );
  });

  it("lines: rounding moves an amount by at most half a cent; min and max hold on the rounded lines", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 10_000_000 }),
        fc.option(money, { nil: null }),
        fc.option(money, { nil: null }),
        (q, min, max) => {
          const low = min !== null && max !== null && new Money(min).greaterThan(max) ? max : min;
          const c = charge({ model: "standard", unit_amount: "0.00037", min_amount: low, max_amount: max });
          const lines = chargeLines(c, { quantity: String(q) }, "USD");
          const [usage] = lines;
          if (!usage) throw new Error("no usage line");
          expect(new Money(usage.amount).minus(usage.exact_amount).abs().lessThanOrEqualTo("0.005")).toBe(
            true,
          );
          const total = new Money(linesTotal(lines, "USD"));
          if (max !== null)
            expect(new Money(usage.amount).lessThanOrEqualTo(roundMoney(new Money(max), "USD"))).toBe(true);
          if (low !== null) expect(total.greaterThanOrEqualTo(roundMoney(new Money(low), "USD"))).toBe(true);
          expect(total.toFixed(2)).toBe(linesTotal(lines, "USD"));
        },
      ),
    );
  });
});
