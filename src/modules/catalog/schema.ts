import { z } from "zod";
import { type Charge, chargeSchema } from "./charges.js";
import type { Entitlement } from "./entitlements.js";
import { amount, catalogKey } from "./fields.js";

/**
 * The catalog format (docs: /work/shared/spec/catalog.md). The schemas here check each element on its
 * own; everything that needs the whole catalog (keys that must exist, entitlement values whose shape
 * depends on the feature's type, duplicates) is checked by the cross-reference pass in refs.ts.
 */

export { CHARGE_MODELS, type Charge, type ChargeModel, type PercentTier, type PriceTier } from "./charges.js";
export type {
  BooleanEntitlement,
  Entitlement,
  EntitlementByType,
  FeatureType,
  LimitEntitlement,
  MeteredEntitlement,
  RateEntitlement,
} from "./entitlements.js";

/** How a meter aggregates its events over a billing period (see the spec's Aggregations). */
export const AGGREGATIONS = ["count", "sum", "max", "min", "unique_count", "latest", "weighted_sum"] as const;

/** Aggregations that can carry their level into the next period. */
const RECURRING_AGGREGATIONS: readonly string[] = ["weighted_sum", "unique_count"];

/**
 * The rules relating a meter's fields. Written against raw data so they also run on a meter with other
 * errors (zod skips refinements then), and every problem is reported at once.
 */
export function meterIssues(meter: Record<string, unknown>): { path: string[]; message: string }[] {
  const issues: { path: string[]; message: string }[] = [];
  const { aggregation, property = null, recurring } = meter;
  // An unknown aggregation is reported by the schema; nothing else can be said about the meter then.
  if (typeof aggregation !== "string" || !(AGGREGATIONS as readonly string[]).includes(aggregation))
    return issues;
  if (aggregation === "unique_count" && property === null) {
    issues.push({ path: ["property"], message: "is required for unique_count: the property to count" });
  }
  // Rejected rather than ignored: a property on another aggregation is a sign of a misunderstanding.
  if (aggregation !== "unique_count" && property !== null) {
    issues.push({ path: ["property"], message: "is only used by unique_count meters" });
  }
  if (recurring === true && !RECURRING_AGGREGATIONS.includes(aggregation)) {
    issues.push({ path: ["recurring"], message: "only applies to weighted_sum and unique_count meters" });
  }
  return issues;
}

/** A meter: how events of one kind are aggregated per org and billing period. */
export const meterSchema = z
  .strictObject({
    key: catalogKey(),
    name: z.string().min(1, "must not be empty"),
    aggregation: z.enum(AGGREGATIONS),
    /** unique_count: which `properties[...]` to count distinct values of. */
    property: z.string().min(1, "must not be empty").nullable().default(null),
    /** weighted_sum/unique_count: carry the level into the next period. */
    recurring: z.boolean().default(false),
  })
  .superRefine((meter, ctx) => {
    for (const issue of meterIssues(meter)) ctx.addIssue({ code: "custom", ...issue });
  });

/** Feature types; each decides the shape of the feature's entitlement values. */
export const FEATURE_TYPES = ["boolean", "limit", "metered", "rate"] as const;

const featureCommon = {
  key: catalogKey(),
  name: z.string().min(1, "must not be empty").optional(),
  description: z.string().optional(),
};

/**
 * What a check does when the counter store (Redis) cannot be reached. Default `closed`: Tollgate
 * promises that concurrent consumption never exceeds a quota, which it cannot keep without its counters,
 * and a check that wrongly allows cannot be taken back. `open` suits features where availability of the
 * customer's product matters more than exact enforcement.
 */
const onUnavailable = z.enum(["open", "closed"], { error: "must be open or closed" }).default("closed");

/** Quota notifications, in percent of the limit; sorted and unique once parsed. */
const thresholds = z
  .array(
    z
      .number({ error: "must be a percentage" })
      .min(1, "must be between 1 and 100")
      .max(100, "must be between 1 and 100"),
  )
  .superRefine((values, ctx) => {
    values.forEach((value, i) => {
      if (values.indexOf(value) !== i)
        ctx.addIssue({ code: "custom", path: [i], message: `duplicate threshold ${value}` });
    });
  })
  .transform((values) => [...values].sort((a, b) => a - b))
  .default([80, 100]);

/** A feature: what a plan grants. The type decides the shape of its entitlement values. */
export const featureSchema = z.discriminatedUnion(
  "type",
  [
    z.strictObject({ ...featureCommon, type: z.literal("boolean") }),
    z.strictObject({ ...featureCommon, type: z.literal("limit"), on_unavailable: onUnavailable }),
    z.strictObject({
      ...featureCommon,
      type: z.literal("metered"),
      meter: catalogKey(),
      thresholds,
      on_unavailable: onUnavailable,
    }),
    z.strictObject({ ...featureCommon, type: z.literal("rate"), on_unavailable: onUnavailable }),
  ],
  {
    error: (issue) =>
      issue.code === "invalid_union" ? `must be one of ${FEATURE_TYPES.join(", ")}` : undefined,
  },
);

/** Base fee per interval, billed in advance. */
const priceSchema = z
  .strictObject({ month: amount().optional(), year: amount().optional() })
  .refine((price) => price.month !== undefined || price.year !== undefined, {
    message: "needs at least one interval: month and/or year",
  });

/** A plan as written; `entitlements` is checked against the features by the cross-reference pass. */
export const planSchema = z.strictObject({
  key: catalogKey(),
  name: z.string().min(1, "must not be empty"),
  description: z.string().optional(),
  price: priceSchema,
  trial_days: z.number().int("must be a whole number of days").min(0, "must not be negative").default(0),
  entitlements: z.record(z.string(), z.unknown()).default({}),
  charges: z.array(chargeSchema).default([]),
  /** Upgrades always apply now; downgrades wait for the period end unless this says otherwise. */
  downgrade: z.enum(["immediate", "period_end"]).default("period_end"),
  /** Days usage data is kept; null (the default) keeps it forever, so nothing is deleted unasked. */
  data_retention_days: z
    .number()
    .int("must be a whole number of days")
    .positive("must be at least 1")
    .nullable()
    .default(null),
  /** Not listed on the pricing page (legacy or custom plans), but still valid for subscriptions. */
  hidden: z.boolean().default(false),
});

/**
 * The top level. Meters, features and plans are parsed one element at a time by the validator, so a
 * broken element never hides the problems of the others.
 */
export const catalogShellSchema = z.strictObject({
  currency: z.string().regex(/^[A-Z]{3}$/, "must be an ISO 4217 code of three upper-case letters, like USD"),
  /** The plan every new org starts on. */
  default_plan: catalogKey(),
  /**
   * The rate feature that limits Tollgate's own API for requests made with an org's API key, by that
   * org's plan. Unset: 600 requests a minute per org.
   */
  api_rate_feature: catalogKey().optional(),
  proration_unit: z.enum(["second", "day"]).default("second"),
  /**
   * What happens after a failed payment: retries this many days after the first failure, entitlements
   * kept for `grace_days` (default: until the last retry), then `final_action`.
   */
  dunning: z
    .strictObject({
      retry_days: z
        .array(
          z
            .number()
            .int("must be a whole number of days")
            .min(1, "must be at least 1")
            .max(365, "must be at most 365"),
        )
        .max(10, "at most 10 retries")
        .superRefine((days, ctx) => {
          days.forEach((value, i) => {
            if (i > 0 && value <= (days[i - 1] as number))
              ctx.addIssue({ code: "custom", path: [i], message: "retry days must increase" });
          });
        })
        .default([2, 7, 14, 21]),
      grace_days: z.number().int("must be a whole number of days").min(0).max(365).optional(),
      /** `cancel`: the subscription ends (the org keeps the default plan's grants); `free`: it moves to the default plan. */
      final_action: z.enum(["cancel", "free"]).default("cancel"),
    })
    .default({ retry_days: [2, 7, 14, 21], final_action: "cancel" }),
  meters: z.array(z.unknown()).default([]),
  features: z.array(z.unknown()).default([]),
  plans: z.array(z.unknown()).min(1, "needs at least one plan"),
});

/** A parsed meter. */
export type Meter = z.output<typeof meterSchema>;
/** A parsed feature (discriminated on `type`). */
export type Feature = z.output<typeof featureSchema>;
/** A metered feature. */
export type MeteredFeature = Extract<Feature, { type: "metered" }>;
/** A rate-limited feature. */
export type RateFeature = Extract<Feature, { type: "rate" }>;
/** A limit (allocation) feature. */
export type LimitFeature = Extract<Feature, { type: "limit" }>;
/** A billing interval of a plan's base fee. */
export type Interval = "month" | "year";
/** A plan's base fee per interval, as exact decimal strings. */
export type Price = z.output<typeof priceSchema>;

/** A parsed plan; entitlement values are normalised per feature type (see entitlements.ts). */
export type Plan = Omit<z.output<typeof planSchema>, "entitlements" | "charges"> & {
  entitlements: Record<string, Entitlement>;
  charges: Charge[];
};

/** A parsed, cross-checked catalog. */
export type Catalog = Omit<z.output<typeof catalogShellSchema>, "meters" | "features" | "plans"> & {
  meters: Meter[];
  features: Feature[];
  plans: Plan[];
};
