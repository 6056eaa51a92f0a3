import { z } from "zod";

/**
 * Field types shared across the catalog schema. Money and quantities travel as decimal strings ("9.99")
 * so they stay exact; YAML/JSON numbers are accepted for convenience and converted to their string form.
 */

const DECIMAL = /^-?\d+(\.\d+)?$/;

/**
 * A binary float keeps every decimal literal of up to 15 significant digits exactly (its shortest
 * string form is that literal); beyond that, what the author wrote may already be lost.
 */
const MAX_EXACT_DIGITS = 15;

function significantDigits(text: string): number {
  const digits = text.replace(/^-/, "").replace(".", "").replace(/^0+/, "");
  return digits.length;
}

/** Splits a well-formed decimal string into a sign, integer digits and fraction digits. */
function parts(text: string): { negative: boolean; int: string; frac: string } {
  const negative = text.startsWith("-");
  const [int = "0", frac = ""] = text.replace(/^-/, "").split(".");
  return { negative, int, frac };
}

/**
 * Compares two well-formed decimal strings exactly: -1, 0 or 1 (no floats involved, so "0.10" equals
 * "0.1" and 1e20-sized values compare correctly).
 */
export function compareDecimal(a: string, b: string): -1 | 0 | 1 {
  const x = parts(a);
  const y = parts(b);
  const scale = Math.max(x.frac.length, y.frac.length);
  const toBig = (p: typeof x) => {
    const magnitude = BigInt(p.int + p.frac.padEnd(scale, "0"));
    return p.negative ? -magnitude : magnitude;
  };
  const diff = toBig(x) - toBig(y);
  return diff < 0n ? -1 : diff > 0n ? 1 : 0;
}

interface DecimalBounds {
  /** Inclusive lower bound. */
  min?: string;
  /** Exclusive lower bound (for sizes that must be positive). */
  above?: string;
  /** Inclusive upper bound. */
  max?: string;
}

/**
 * A decimal field: a decimal string, or a finite number converted to its shortest string form.
 * Rejects exponent forms ("1e-7"), NaN/Infinity and numbers too precise to have survived as floats.
 */
export function decimal(what: string, bounds: DecimalBounds = {}) {
  return z
    .union([z.string(), z.number()], { error: `must be a decimal string like "9.99"` })
    .transform((value, ctx) => {
      let text: string;
      if (typeof value === "number") {
        if (!Number.isFinite(value)) {
          ctx.addIssue({ code: "custom", message: `must be a finite ${what}` });
          return z.NEVER;
        }
        text = String(value);
        if (DECIMAL.test(text) && significantDigits(text) > MAX_EXACT_DIGITS) {
          ctx.addIssue({
            code: "custom",
            message: `${text} has too many digits to be exact as a number; write it as a quoted string`,
          });
          return z.NEVER;
        }
      } else {
        text = value.trim();
      }
      if (!DECIMAL.test(text)) {
        ctx.addIssue({ code: "custom", message: `must be a plain decimal like "9.99" (got ${text})` });
        return z.NEVER;
      }
      if (bounds.min !== undefined && compareDecimal(text, bounds.min) < 0) {
        ctx.addIssue({ code: "custom", message: `must be at least ${bounds.min} (got ${text})` });
        return z.NEVER;
      }
      if (bounds.above !== undefined && compareDecimal(text, bounds.above) <= 0) {
        ctx.addIssue({ code: "custom", message: `must be greater than ${bounds.above} (got ${text})` });
        return z.NEVER;
      }
      if (bounds.max !== undefined && compareDecimal(text, bounds.max) > 0) {
        ctx.addIssue({ code: "custom", message: `must be at most ${bounds.max} (got ${text})` });
        return z.NEVER;
      }
      return text;
    });
}

/** A money amount: never negative (prices, unit amounts, caps). */
export const amount = () => decimal("amount", { min: "0" });

/** A percentage rate between 0 and 100 inclusive. */
export const percent = () => decimal("percentage", { min: "0", max: "100" });

/** A quantity that must be strictly positive (tier bounds, package sizes). */
export const positiveQuantity = () => decimal("quantity", { above: "0" });

/** A quantity that may be zero (free units). */
export const quantity = () => decimal("quantity", { min: "0" });

/** Meter, feature and plan keys: they appear in API calls and URLs, so keep them plain. */
export const catalogKey = () =>
  z
    .string({ error: "must be a key of lower-case letters, digits and _" })
    .regex(/^[a-z0-9_]+$/, "must contain only lower-case letters, digits and _");
