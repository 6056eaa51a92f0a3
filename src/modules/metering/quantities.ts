/**
 * Quantities are decimals (the spec). Postgres keeps them exact as `numeric`; the counter store
 * works in integers, so quantities of sum meters are counted there in millionths (six decimal
 * places), and count meters, allocations and rate costs in whole units.
 */

/** Scale of sum meters in the counter store: 1 unit = 10⁻⁶. */
export const SUM_SCALE = 1_000_000;
const SUM_DECIMALS = 6;

const DECIMAL = /^-?(0|[1-9]\d*)(\.\d+)?$/;

/**
 * Normalises a JSON number or decimal string to a decimal string; undefined when it is not one
 * (exponents, NaN, Infinity, or a number with more significant digits than a double keeps exactly).
 */
export function toDecimalText(value: unknown): string | undefined {
  if (typeof value === "number") {
    if (!Number.isFinite(value)) return undefined;
    const text = String(value);
    if (/e/i.test(text)) return undefined;
    if (text.replace(/^-/, "").replace(".", "").replace(/^0+/, "").length > 15) return undefined;
    return text;
  }
  if (typeof value === "string" && value.length <= 40 && DECIMAL.test(value)) return value;
  return undefined;
}

/** Decimal places of a decimal string. */
export function decimalPlaces(text: string): number {
  const dot = text.indexOf(".");
  return dot < 0 ? 0 : text.length - dot - 1;
}

/** An exact decimal string in units of 10⁻⁶, as a BigInt (the text must have at most 6 decimals). */
export function toMicros(text: string): bigint {
  const negative = text.startsWith("-");
  const [int = "0", frac = ""] = text.replace(/^-/, "").split(".");
  const micros = BigInt(int) * 1_000_000n + BigInt(`${frac}000000`.slice(0, SUM_DECIMALS));
  return negative ? -micros : micros;
}

/** A Postgres numeric as micro-units, truncating anything below 10⁻⁶ (never present for sum meters). */
export function numericToMicros(text: string): bigint {
  const [int = "0", frac = ""] = text.replace(/^-/, "").split(".");
  const micros = BigInt(int) * 1_000_000n + BigInt(`${frac}000000`.slice(0, SUM_DECIMALS));
  return text.startsWith("-") ? -micros : micros;
}

/** Micro-units back to a decimal string without trailing zeros. */
export function microsToText(micros: bigint): string {
  const negative = micros < 0n;
  const abs = negative ? -micros : micros;
  const int = abs / 1_000_000n;
  const frac = (abs % 1_000_000n).toString().padStart(SUM_DECIMALS, "0").replace(/0+$/, "");
  return `${negative ? "-" : ""}${int}${frac ? `.${frac}` : ""}`;
}

/** A whole number of the given scale as a JSON number (quantities up to 2^53 / scale stay exact). */
export function unitsToNumber(units: number, scale: number): number {
  return scale === 1 ? units : Number(microsToText(BigInt(units)));
}
