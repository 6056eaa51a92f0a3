import type { Charge, ChargeModel } from "../catalog/schema.js";
import { formatMoney, Money, roundMoney, text } from "./money.js";
import { type ChargeUsage, type PercentageDetail, priceCharge, type TierPart } from "./pricing.js";

/**
 * A priced charge as invoice lines: the charge's own line and, when its `min_amount` was not reached,
 * a top-up line. Lines are rounded to the currency's minor unit, half away from zero; the invoice
 * total is the sum of its rounded lines (the spec). The estimate and the invoices both build their
 * usage lines here, so an estimate is always what the invoice posts.
 */
export interface ChargeLine {
  /** `usage`: what the charge's usage costs; `minimum_spend`: the top-up to the charge's minimum. */
  kind: "usage" | "minimum_spend";
  meter: string;
  model: ChargeModel;
  /** The aggregated quantity priced. */
  quantity: string;
  /** What the line bills, rounded to the currency's minor unit ("12.35"). */
  amount: string;
  /** The exact, unrounded amount ("12.3456"). */
  exact_amount: string;
  /** The charge's `max_amount` lowered the amount. */
  capped: boolean;
  tiers?: TierPart[];
  packages?: string;
  percentage?: PercentageDetail;
}

export function chargeLines(charge: Charge, usage: ChargeUsage, currency: string): ChargeLine[] {
  const priced = priceCharge(charge, usage);
  const exact = new Money(priced.amount);
  const rounded = roundMoney(exact, currency);
  const line: ChargeLine = {
    kind: "usage",
    meter: priced.meter,
    model: priced.model,
    quantity: priced.quantity,
    amount: formatMoney(rounded, currency),
    exact_amount: priced.amount,
    capped: priced.capped,
    ...(priced.tiers ? { tiers: priced.tiers } : {}),
    ...(priced.packages !== undefined ? { packages: priced.packages } : {}),
    ...(priced.percentage ? { percentage: priced.percentage } : {}),
  };
  if (charge.min_amount === null) return [line];
  // Measured against the rounded line, so that the two lines add up to the minimum exactly.
  const minimum = roundMoney(new Money(charge.min_amount), currency);
  if (!rounded.lessThan(minimum)) return [line];
  const topUp = minimum.minus(rounded);
  return [
    line,
    {
      kind: "minimum_spend",
      meter: priced.meter,
      model: priced.model,
      quantity: priced.quantity,
      amount: formatMoney(topUp, currency),
      exact_amount: text(topUp),
      capped: false,
    },
  ];
}

/** The sum of rounded line amounts, formatted in the currency. */
export function linesTotal(lines: readonly { amount: string }[], currency: string): string {
  return formatMoney(
    lines.reduce((total, line) => total.plus(line.amount), new Money(0)),
    currency,
  );
}
