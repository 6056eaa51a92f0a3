import type { Decimal } from "decimal.js";
import type { Period } from "../plans/periods.js";
import { Money } from "./money.js";

/**
 * Proration: the share of a billing period that a span [from, to) within it covers, per the catalog's
 * `proration_unit`:
 * - `second` (the default): elapsed time over the period's length — exact, as a fraction;
 * - `day`: whole calendar days in UTC, counted inclusively from the day `from` falls on (the day of a
 *   change counts for what starts that day) up to the day the span ends, over the period's days.
 */
export type ProrationUnit = "second" | "day";

const DAY_MS = 86_400_000;
const utcDay = (ms: number) => Math.floor(ms / DAY_MS);

export function periodShare(fromMs: number, toMs: number, period: Period, unit: ProrationUnit): Decimal {
  const from = Math.max(fromMs, period.startMs);
  const to = Math.min(toMs, period.endMs);
  if (to <= from) return new Money(0);
  if (unit === "second") return new Money(to - from).div(period.endMs - period.startMs);
  const days = utcDay(period.endMs) - utcDay(period.startMs);
  // A span within a single calendar day: nothing to count in whole days but the day itself.
  if (days <= 0) return new Money(1);
  return new Money(utcDay(to) - utcDay(from)).div(days);
}
