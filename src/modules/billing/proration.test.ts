import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { periodStart } from "../plans/periods.js";
import { periodShare } from "./proration.js";

const utc = (...args: [number, number, number, number?, number?]) => Date.UTC(...args);
const march = { startMs: utc(2026, 2, 1), endMs: utc(2026, 3, 1) };

describe("periodShare", () => {
  it("by the second: the spec's 10 → 20 halfway through is −5 and +10", () => {
    const halfway = march.startMs + (march.endMs - march.startMs) / 2;
    const remaining = periodShare(halfway, march.endMs, march, "second");
    expect(remaining.toFixed()).toBe("0.5");
    expect(remaining.times(10).neg().toFixed()).toBe("-5");
    expect(remaining.times(20).toFixed()).toBe("10");
  });

  it("by the day: whole UTC calendar days, the day of the change counted for what starts on it", () => {
    // From March 16 at 18:00: March 16 to 31 is 16 of March's 31 days.
    expect(
      periodShare(utc(2026, 2, 16, 18), march.endMs, march, "day")
        .times(31)
        .toFixed(),
    ).toBe("16");
    // What ran before the change: March 1 to 15.
    expect(
      periodShare(march.startMs, utc(2026, 2, 16, 18), march, "day")
        .times(31)
        .toFixed(),
    ).toBe("15");
  });

  it("clamps to the period and gives nothing for an empty span", () => {
    expect(periodShare(utc(2026, 1, 1), utc(2026, 5, 1), march, "second").toFixed()).toBe("1");
    expect(periodShare(march.endMs, march.endMs, march, "day").toFixed()).toBe("0");
  });

  it("the parts before and after any instant add up to the whole period, in either unit", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: utc(2020, 0, 1), max: utc(2030, 0, 1) }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.constantFrom("second" as const, "day" as const),
        (anchor, at, unit) => {
          const period = { startMs: anchor, endMs: periodStart(anchor, "month", 1) };
          const split = Math.floor(period.startMs + at * (period.endMs - period.startMs));
          const before = periodShare(period.startMs, split, period, unit);
          const after = periodShare(split, period.endMs, period, unit);
          expect(before.plus(after).toFixed()).toBe("1");
        },
      ),
    );
  });
});
