import { z } from "zod";
import { amount, catalogKey, compareDecimal, percent, positiveQuantity, quantity } from "./fields.js";

/**
 * Usage-based charges (billed in arrears), one schema per pricing model of the catalog spec. Every
 * object is strict so a misspelt field is an error rather than a silently ignored price.
 */

/** Fields every charge has, whatever its model. */
const common = {
  meter: catalogKey(),
  /** Minimum spend per period: a top-up line when the charge comes out below it. */
  min_amount: amount().nullable().default(null),
  /** Maximum spend per period. */
  max_amount: amount().nullable().default(null),
};

/** `up_to` is an inclusive upper bound (as in Stripe); `null` closes the last, open-ended tier. */
const upTo = positiveQuantity().nullable();

/** A list of tiers; their order is checked with the other cross-field rules in {@link chargeIssues}. */
const tierList = <T extends z.ZodType>(tier: T) => z.array(tier).min(1, "needs at least one tier");

/** Tier of the graduated and volume models. */
export const priceTier = z.strictObject({
  up_to: upTo,
  unit_amount: amount().default("0"),
  flat_amount: amount().default("0"),
});

/** Tier of the graduated_percentage model. */
export const percentTier = z.strictObject({
  up_to: upTo,
  rate: percent(),
  flat_amount: amount().default("0"),
});

const standard = z.strictObject({ ...common, model: z.literal("standard"), unit_amount: amount() });
const graduated = z.strictObject({ ...common, model: z.literal("graduated"), tiers: tierList(priceTier) });
const volume = z.strictObject({ ...common, model: z.literal("volume"), tiers: tierList(priceTier) });
const packaged = z.strictObject({
  ...common,
  model: z.literal("package"),
  package_size: positiveQuantity(),
  package_amount: amount(),
  free_units: quantity().default("0"),
});
const percentage = z.strictObject({
  ...common,
  model: z.literal("percentage"),
  rate: percent(),
  fixed_amount: amount().default("0"),
  // Absent (null) or zero means "this limit does not apply", per the spec.
  free_units_per_events: z
    .number()
    .int("must be a whole number of transactions")
    .min(0, "must not be negative")
    .nullable()
    .default(null),
  free_units_per_total_aggregation: amount().nullable().default(null),
  per_transaction_min_amount: amount().nullable().default(null),
  per_transaction_max_amount: amount().nullable().default(null),
});
const graduatedPercentage = z.strictObject({
  ...common,
  model: z.literal("graduated_percentage"),
  tiers: tierList(percentTier),
});

/** The pricing models, in the order the spec lists them. */
export const CHARGE_MODELS = [
  "standard",
  "graduated",
  "volume",
  "package",
  "percentage",
  "graduated_percentage",
] as const;

/** A problem found by the cross-field rules, relative to the charge. */
export interface ChargeIssue {
  path: (string | number)[];
  message: string;
}

/** The decimal a raw field holds, or undefined when it is absent or not a valid decimal (reported elsewhere). */
function decimalField(value: unknown): string | undefined {
  const parsed = amount().safeParse(value);
  return parsed.success ? parsed.data : undefined;
}

/** Tier bounds strictly increasing, only the last one open-ended, so every quantity has exactly one tier. */
function tierIssues(tiers: unknown[]): ChargeIssue[] {
  const issues: ChargeIssue[] = [];
  let previous: string | undefined;
  tiers.forEach((tier, i) => {
    const raw =
      typeof tier === "object" && tier !== null ? (tier as Record<string, unknown>).up_to : undefined;
    const last = i === tiers.length - 1;
    const path = ["tiers", i, "up_to"];
    if (raw === null) {
      if (!last) issues.push({ path, message: "only the last tier may be open-ended (up_to: null)" });
      return;
    }
    const upTo = decimalField(raw);
    if (upTo === undefined) return;
    if (previous !== undefined && compareDecimal(upTo, previous) <= 0) {
      issues.push({
        path,
        message: `tiers must be in strictly increasing order of up_to (${upTo} follows ${previous})`,
      });
    }
    previous = upTo;
    if (last) issues.push({ path, message: "the last tier must be open-ended (up_to: null)" });
  });
  return issues;
}

function notAbove(charge: Record<string, unknown>, low: string, high: string): ChargeIssue[] {
  const min = decimalField(charge[low]);
  const max = decimalField(charge[high]);
  if (min === undefined || max === undefined || compareDecimal(min, max) <= 0) return [];
  return [{ path: [low], message: `must not exceed ${high} (${min} > ${max})` }];
}

/**
 * The rules that relate several fields of a charge. Written against raw data so they can also run on a
 * charge that has other errors (zod skips refinements then), and every problem is reported at once.
 */
export function chargeIssues(charge: Record<string, unknown>): ChargeIssue[] {
  return [
    ...notAbove(charge, "min_amount", "max_amount"),
    ...(charge.model === "percentage"
      ? notAbove(charge, "per_transaction_min_amount", "per_transaction_max_amount")
      : []),
    ...(Array.isArray(charge.tiers) ? tierIssues(charge.tiers) : []),
  ];
}

/** A usage-based charge on one meter: a discriminated union on `model`. */
export const chargeSchema = z
  .discriminatedUnion("model", [standard, graduated, volume, packaged, percentage, graduatedPercentage], {
    error: (issue) =>
      issue.code === "invalid_union" ? `must be one of ${CHARGE_MODELS.join(", ")}` : undefined,
  })
  .superRefine((charge, ctx) => {
    for (const issue of chargeIssues(charge)) ctx.addIssue({ code: "custom", ...issue });
  });

/** A parsed charge. */
export type Charge = z.output<typeof chargeSchema>;
/** The pricing model of a charge. */
export type ChargeModel = Charge["model"];
/** A tier of a graduated or volume charge. */
export type PriceTier = z.output<typeof priceTier>;
/** A tier of a graduated_percentage charge. */
export type PercentTier = z.output<typeof percentTier>;
