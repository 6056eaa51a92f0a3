import type { Meter } from "../catalog/schema.js";
import { weightedAverage } from "../metering/usage.js";
import type { Period } from "../plans/periods.js";
import { Money, text, ZERO } from "./money.js";

/**
 * A meter's aggregation over a list of events, in memory: what the estimate prices when it is given
 * events rather than quantities. The same definitions as the stored rollups (usage.ts
 * `aggregatePeriod`), so an estimate from events equals the invoice those events produce.
 */

export interface UsageEvent {
  value: string;
  timestampMs: number;
  properties?: Record<string, unknown>;
}

/**
 * The aggregate of `events` (all inside `period`) for `meter`, as a decimal string. `carried` is the
 * level a recurring weighted_sum starts the period with.
 */
export function aggregateEvents(
  meter: Meter,
  events: readonly UsageEvent[],
  period: Period,
  carried = "0",
): string {
  switch (meter.aggregation) {
    case "count":
      return String(events.length);
    case "sum":
      return text(events.reduce((total, e) => total.plus(e.value), ZERO));
    case "max":
    case "min": {
      if (events.length === 0) return "0";
      const values = events.map((e) => new Money(e.value));
      return text(meter.aggregation === "max" ? Money.max(...values) : Money.min(...values));
    }
    case "latest": {
      // The latest timestamp wins; among equal timestamps, the one given last.
      let latest: UsageEvent | undefined;
      for (const e of events) if (!latest || e.timestampMs >= latest.timestampMs) latest = e;
      return latest ? text(new Money(latest.value)) : "0";
    }
    case "unique_count": {
      const property = meter.property ?? "";
      const seen = new Set<string>();
      for (const e of events) {
        const v = e.properties?.[property];
        if (typeof v === "string" || typeof v === "number") seen.add(String(v));
      }
      return String(seen.size);
    }
    case "weighted_sum": {
      // Money, not Decimal: Decimal's default 20 significant digits would round value × epoch-seconds.
      let sum = new Money(0);
      let svt = new Money(0);
      for (const e of events) {
        sum = sum.plus(e.value);
        svt = svt.plus(new Money(e.value).times(new Money(e.timestampMs).div(1000)));
      }
      const start = new Money(meter.recurring ? carried : 0);
      return text(weightedAverage(start, sum, svt, period));
    }
  }
}

/** Percentage charges walk their events in timestamp order; equal timestamps keep the given order. */
export function inTimestampOrder<T extends { timestampMs: number }>(events: readonly T[]): T[] {
  // Array.prototype.sort is stable.
  return [...events].sort((a, b) => a.timestampMs - b.timestampMs);
}
