import { Decimal } from "decimal.js";

/**
 * Exact decimal arithmetic for money and quantities. Charges multiply quantities (up to 40 digits) by
 * prices and divide only by 100 (percentages) or exactly (package counts), so 200 significant digits
 * keep every intermediate exact; the only rounding is the invoice line's, to the currency's minor unit,
 * half away from zero (decimal.js calls that ROUND_HALF_UP).
 */
export const Money = Decimal.clone({ precision: 200, rounding: Decimal.ROUND_HALF_UP, toExpNeg: -300 });
export type Money = Decimal;

export const ZERO = new Money(0);

/** A decimal as a plain string: no exponent, no trailing zeros ("5", "0.4125", "-3.5"). */
export function text(value: Decimal): string {
  const fixed = value.toFixed();
  return fixed === "-0" ? "0" : fixed;
}

const minorUnits = new Map<string, number>();

/**
 * Digits after the decimal point of a currency's minor unit (USD 2, JPY 0, KWD 3), from the ISO 4217
 * data Node's Intl carries. An unknown code gets 2, the common case.
 */
export function minorUnitDigits(currency: string): number {
  let digits = minorUnits.get(currency);
  if (digits === undefined) {
    try {
      digits = new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions()
        .maximumFractionDigits as number;
    } catch {
      digits = 2;
    }
    minorUnits.set(currency, digits);
  }
  return digits;
}

/** An amount rounded to the currency's minor unit, half away from zero, as a fixed-point string ("0.41"). */
export function roundMoney(value: Decimal, currency: string): Decimal {
  return value.toDecimalPlaces(minorUnitDigits(currency), Decimal.ROUND_HALF_UP);
}

/** An amount as the currency's fixed-point string ("5.00", "1234", "0.125"). */
export function formatMoney(value: Decimal, currency: string): string {
  const fixed = value.toFixed(minorUnitDigits(currency), Decimal.ROUND_HALF_UP);
  return /^-0(\.0*)?$/.test(fixed) ? fixed.slice(1) : fixed;
}
