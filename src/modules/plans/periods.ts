import type { Interval } from "../catalog/schema.js";

/**
 * Billing periods. A subscription's periods run from its anchor in steps of its interval, in UTC:
 * period k starts k months (or years) after the anchor, at the anchor's time of day, on the anchor's
 * day of the month — or the month's last day when it has fewer days (an anchor on the 31st gives
 * Feb 28/29, Mar 31, Apr 30: the day is never lost to earlier clamping, as Stripe does).
 */

export interface Period {
  startMs: number;
  endMs: number;
}

const MONTHS: Record<Interval, number> = { month: 1, year: 12 };

/** The start of period `k` (may be negative) for an anchor. */
export function periodStart(anchorMs: number, interval: Interval, k: number): number {
  const anchor = new Date(anchorMs);
  const months = anchor.getUTCMonth() + k * MONTHS[interval];
  const year = anchor.getUTCFullYear() + Math.floor(months / 12);
  const month = ((months % 12) + 12) % 12;
  const lastDay = new Date(Date.UTC(year, month + 1, 0)).getUTCDate();
  const day = Math.min(anchor.getUTCDate(), lastDay);
  return Date.UTC(
    year,
    month,
    day,
    anchor.getUTCHours(),
    anchor.getUTCMinutes(),
    anchor.getUTCSeconds(),
    anchor.getUTCMilliseconds(),
  );
}

/**
 * The usage period containing `atMs`: metered quotas reset monthly from the subscription's anchor,
 * whatever the billing interval — the design customers sell "100 uploads a month" on annual plans too.
 * On monthly plans it is the billing period.
 */
export function usagePeriodAt(anchorMs: number, atMs: number): Period {
  return periodAt(anchorMs, "month", atMs);
}

/** The period containing `atMs`: start <= atMs < end. */
export function periodAt(anchorMs: number, interval: Interval, atMs: number): Period {
  const anchor = new Date(anchorMs);
  const at = new Date(atMs);
  const monthsApart =
    (at.getUTCFullYear() - anchor.getUTCFullYear()) * 12 + (at.getUTCMonth() - anchor.getUTCMonth());
  let k = Math.floor(monthsApart / MONTHS[interval]);
  // The estimate is off by at most one either way (the day and time within the month decide).
  while (periodStart(anchorMs, interval, k) > atMs) k--;
  while (periodStart(anchorMs, interval, k + 1) <= atMs) k++;
  return { startMs: periodStart(anchorMs, interval, k), endMs: periodStart(anchorMs, interval, k + 1) };
}
