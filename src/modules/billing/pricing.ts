import type { Decimal } from "decimal.js";
import type { Charge, PercentTier, PriceTier } from "../catalog/schema.js";
import { Money, text, ZERO } from "./money.js";

/**
 * The pricing engine: what one usage-based charge costs for a period, exactly as the catalog spec
 * defines each model (docs/catalog.md, "Charges"). Pure and exact: decimals in, unrounded decimals
 * out; rounding to the currency's minor unit happens once, on the invoice line (see lines.ts).
 */

/** One transaction of a percentage charge: an event's value, in timestamp order. */
export interface Transaction {
  value: string;
}

/** What a charge is priced on. */
export interface ChargeUsage {
  /** The period's aggregated quantity of the charge's meter. */
  quantity: string;
  /**
   * Percentage charges: the period's events in timestamp order. Absent, the quantity is priced as a
   * single transaction (an estimate from a total).
   */
  transactions?: readonly Transaction[];
}

/** How one tier contributed to a graduated, volume or graduated_percentage charge. */
export interface TierPart {
  /** 1-based tier number. */
  tier: number;
  /** The tier's bounds: (from, up_to]; up_to null is open-ended. */
  from: string;
  up_to: string | null;
  /** Units priced in this tier. */
  units: string;
  unit_amount?: string;
  rate?: string;
  flat_amount: string;
  amount: string;
}

/** The percentage model's walk over the transactions. */
export interface PercentageDetail {
  transactions: number;
  free_transactions: number;
  paying_transactions: number;
  /** The part of the transactions' value that was free. */
  free_amount: string;
  /** What the paying parts cost before the per-transaction bounds. */
  rate_amount: string;
  fixed_amount: string;
  /** Paying transactions moved up to the per-transaction minimum or down to the maximum. */
  raised_to_min: number;
  lowered_to_max: number;
}

/** A priced charge: exact, unrounded amounts as decimal strings. */
export interface PricedCharge {
  meter: string;
  model: Charge["model"];
  /** The aggregated quantity, as given. */
  quantity: string;
  /** What the usage costs by the model, before the charge's spend bounds. */
  usage_amount: string;
  /** After `max_amount`: what the charge's own line bills. */
  amount: string;
  /** `min_amount` not reached: the difference, billed as its own line. Zero otherwise. */
  min_top_up: string;
  /** Whether `max_amount` lowered the amount. */
  capped: boolean;
  tiers?: TierPart[];
  packages?: string;
  percentage?: PercentageDetail;
}

const d = (value: string | number) => new Money(value);

/**
 * The quantity a charge prices: negative aggregates (a sum meter with refunds, a latest level below
 * zero) cost nothing rather than producing a credit.
 */
function priced(quantity: string): Decimal {
  const q = d(quantity);
  return q.isNegative() ? ZERO : q;
}

/**
 * Walks the tiers for a graduated model: each unit is priced in the tier it falls in, and every tier
 * that q reaches adds its flat amount — the first one even at q = 0. `unitCost` prices a tier's part.
 */
function graduatedTiers<T extends PriceTier | PercentTier>(
  tiers: readonly T[],
  q: Decimal,
  unitCost: (tier: T, units: Decimal) => Decimal,
  describe: (tier: T) => Pick<TierPart, "unit_amount" | "rate">,
): { total: Decimal; parts: TierPart[] } {
  let total = ZERO;
  let lower = ZERO;
  const parts: TierPart[] = [];
  tiers.forEach((tier, i) => {
    const reached = i === 0 || q.greaterThan(lower);
    if (!reached) return;
    const upper = tier.up_to === null ? q : Money.min(q, d(tier.up_to));
    const units = Money.max(upper.minus(lower), ZERO);
    const flat = d(tier.flat_amount);
    const amount = unitCost(tier, units).plus(flat);
    parts.push({
      tier: i + 1,
      from: text(lower),
      up_to: tier.up_to,
      units: text(units),
      ...describe(tier),
      flat_amount: text(flat),
      amount: text(amount),
    });
    total = total.plus(amount);
    if (tier.up_to !== null) lower = d(tier.up_to);
  });
  return { total, parts };
}

/** The tier containing q (the first one for q = 0): the first whose inclusive bound is at least q. */
function containingTier(tiers: readonly PriceTier[], q: Decimal): number {
  const index = tiers.findIndex((tier) => tier.up_to === null || q.lessThanOrEqualTo(d(tier.up_to)));
  // The validator makes the last tier open-ended, so there is always one; be safe regardless.
  return index === -1 ? tiers.length - 1 : index;
}

/** A limit of the percentage model that is absent or zero does not apply (the spec). */
function applies(limit: string | number | null): limit is string | number {
  return limit !== null && !d(limit).isZero();
}

function percentage(
  charge: Extract<Charge, { model: "percentage" }>,
  usage: ChargeUsage,
): { total: Decimal; detail: PercentageDetail } {
  const transactions = usage.transactions ?? [{ value: usage.quantity }];
  const rate = d(charge.rate).div(100);
  const fixed = d(charge.fixed_amount);
  const min = applies(charge.per_transaction_min_amount) ? d(charge.per_transaction_min_amount) : null;
  const max = applies(charge.per_transaction_max_amount) ? d(charge.per_transaction_max_amount) : null;
  const eventsLimit = applies(charge.free_units_per_events) ? charge.free_units_per_events : null;
  const amountLimit = applies(charge.free_units_per_total_aggregation)
    ? d(charge.free_units_per_total_aggregation)
    : null;
  let freeEventsLeft = eventsLimit ?? 0;
  let freeAmountLeft = amountLimit ?? ZERO;
  const detail = {
    transactions: transactions.length,
    free_transactions: 0,
    paying_transactions: 0,
    raised_to_min: 0,
    lowered_to_max: 0,
  };
  let freeAmount = ZERO;
  let rateAmount = ZERO;
  let fixedAmount = ZERO;
  let total = ZERO;
  for (const transaction of transactions) {
    const value = priced(transaction.value);
    let paying = value;
    // Free while every configured limit still has room; with no limit configured nothing is free.
    const roomLeft =
      (eventsLimit !== null || amountLimit !== null) &&
      (eventsLimit === null || freeEventsLeft > 0) &&
      (amountLimit === null || freeAmountLeft.greaterThan(0));
    if (roomLeft) {
      const free = amountLimit === null ? value : Money.min(value, freeAmountLeft);
      if (amountLimit !== null) freeAmountLeft = freeAmountLeft.minus(free);
      if (eventsLimit !== null) freeEventsLeft--;
      freeAmount = freeAmount.plus(free);
      paying = value.minus(free);
      if (paying.isZero()) {
        detail.free_transactions++;
        continue;
      }
    }
    detail.paying_transactions++;
    const byRate = paying.times(rate);
    let cost = byRate.plus(fixed);
    if (min !== null && cost.lessThan(min)) {
      cost = min;
      detail.raised_to_min++;
    } else if (max !== null && cost.greaterThan(max)) {
      cost = max;
      detail.lowered_to_max++;
    }
    rateAmount = rateAmount.plus(byRate);
    fixedAmount = fixedAmount.plus(fixed);
    total = total.plus(cost);
  }
  return {
    total,
    detail: {
      ...detail,
      free_amount: text(freeAmount),
      rate_amount: text(rateAmount),
      fixed_amount: text(fixedAmount),
    },
  };
}

/** The usage cost of a charge by its model, with how it came about. */
function byModel(charge: Charge, usage: ChargeUsage): Omit<PricedCharge, "amount" | "min_top_up" | "capped"> {
  const base = { meter: charge.meter, model: charge.model, quantity: usage.quantity };
  const q = priced(usage.quantity);
  switch (charge.model) {
    case "standard":
      return { ...base, usage_amount: text(q.times(charge.unit_amount)) };
    case "graduated": {
      const { total, parts } = graduatedTiers(
        charge.tiers,
        q,
        (tier, units) => units.times(tier.unit_amount),
        (tier) => ({ unit_amount: tier.unit_amount }),
      );
      return { ...base, usage_amount: text(total), tiers: parts };
    }
    case "volume": {
      const index = containingTier(charge.tiers, q);
      const tier = charge.tiers[index] as PriceTier;
      const amount = q.times(tier.unit_amount).plus(tier.flat_amount);
      const from = index === 0 ? "0" : (charge.tiers[index - 1]?.up_to ?? "0");
      const part: TierPart = {
        tier: index + 1,
        from,
        up_to: tier.up_to,
        units: text(q),
        unit_amount: tier.unit_amount,
        flat_amount: text(d(tier.flat_amount)),
        amount: text(amount),
      };
      return { ...base, usage_amount: text(amount), tiers: [part] };
    }
    case "package": {
      const billable = Money.max(q.minus(charge.free_units), ZERO);
      const size = d(charge.package_size);
      // ceil(billable / size), exactly: whole packages plus one for any remainder.
      const whole = billable.dividedToIntegerBy(size);
      const packages = billable.mod(size).isZero() ? whole : whole.plus(1);
      return {
        ...base,
        usage_amount: text(packages.times(charge.package_amount)),
        packages: text(packages),
      };
    }
    case "percentage": {
      const { total, detail } = percentage(charge, usage);
      return { ...base, usage_amount: text(total), percentage: detail };
    }
    case "graduated_percentage": {
      const { total, parts } = graduatedTiers(
        charge.tiers,
        q,
        (tier, units) => units.times(tier.rate).div(100),
        (tier) => ({ rate: tier.rate }),
      );
      return { ...base, usage_amount: text(total), tiers: parts };
    }
  }
}

/**
 * Prices one charge for a period: the model's amount, capped by `max_amount`, and the top-up that
 * `min_amount` asks for when the charge came out below it (exact; lines.ts rounds).
 */
export function priceCharge(charge: Charge, usage: ChargeUsage): PricedCharge {
  const result = byModel(charge, usage);
  const usageAmount = d(result.usage_amount);
  const max = charge.max_amount === null ? null : d(charge.max_amount);
  const capped = max !== null && usageAmount.greaterThan(max);
  const amount = capped ? (max as Decimal) : usageAmount;
  const min = charge.min_amount === null ? null : d(charge.min_amount);
  const topUp = min !== null && amount.lessThan(min) ? min.minus(amount) : ZERO;
  return { ...result, amount: text(amount), min_top_up: text(topUp), capped };
}
