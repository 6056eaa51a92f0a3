import { describe, expect, it } from "vitest";
import { decodeUsage, encodeUsage } from "./journal.js";
import { toMicros } from "./quantities.js";
import type { ConsumedUsage } from "./writer.js";
import { smallMicros } from "./writer.js";

/** The hand-written encodings of the hot path against what the generic code they replace gives. */
describe("journal entries, encoded by hand", () => {
  const specs = Object.freeze([{ feature: "kolekts", limit: 100, thresholds: [80, 100] }]);
  const usage = (orgId: string, meter: string, quantity: string, thresholds = specs): ConsumedUsage => ({
    orgId,
    meter,
    periodStartMs: Date.UTC(2026, 10, 1),
    atMs: Date.UTC(2026, 10, 25, 1, 2, 3, 456),
    quantity,
    count: "1",
    sum: quantity,
    thresholds,
  });
  const generic = (entries: ConsumedUsage[]) =>
    JSON.stringify(
      entries.map((u) => [
        u.orgId,
        u.meter,
        u.periodStartMs,
        u.atMs,
        u.quantity,
        u.count,
        u.sum,
        u.thresholds.map((t) => [t.feature, t.limit, t.thresholds]),
      ]),
    );

  it("writes exactly what JSON.stringify writes, text needing escapes included, and reads back", () => {
    const entries = [
      usage("org_1", "kolekts", "3"),
      usage('org "quoted" \\ back\nslash\u2028', "tokens", "0.000001", Object.freeze([])),
      usage("org_1", "kolekts", "12.5"),
      usage("org_2", "m\u0001", "7", Object.freeze([{ feature: 'f"', limit: 0.5, thresholds: [] }])),
    ];
    // Twice: the second time the shared threshold arrays come from the cache.
    for (let round = 0; round < 2; round++) {
      expect(encodeUsage(entries)).toBe(generic(entries));
      expect(decodeUsage(encodeUsage(entries))).toEqual(entries);
    }
    expect(encodeUsage([])).toBe("[]");
  });
});

describe("smallMicros", () => {
  it("reads plain decimals of up to 9 + 6 digits as micro-units, exactly as toMicros does", () => {
    for (const text of [
      "0",
      "1",
      "7",
      "10",
      "999999999",
      "0.5",
      "1.000001",
      "123.456",
      "999999999.999999",
      "00012.10",
      "000000000.000001",
      "0.000000",
    ]) {
      expect(smallMicros(text), text).toBe(Number(toMicros(text)));
    }
  });

  it("leaves everything else to the exact path (undefined)", () => {
    for (const text of [
      "",
      ".5",
      "1.",
      "-1",
      "+1",
      "1e3",
      "1000000000",
      "0.0000001",
      "1.2.3",
      " 1",
      "1 ",
      "١",
    ]) {
      expect(smallMicros(text), JSON.stringify(text)).toBeUndefined();
    }
  });
});
