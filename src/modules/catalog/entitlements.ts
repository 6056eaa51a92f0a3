import { z } from "zod";

/**
 * Entitlement values, one shape per feature type. A plan's `entitlements` can only be checked once the
 * features are known, so these schemas are applied by the cross-reference pass (see refs.ts), which
 * also normalises shorthands so later code sees one shape per type.
 */

const UNIT_MS = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/** Converts a rate window such as `1m` or `30s` to milliseconds. */
export function windowToMs(window: string): number {
  const match = /^(\d+)(s|m|h|d)$/.exec(window);
  if (!match) throw new Error(`invalid window "${window}"`);
  return Number(match[1]) * UNIT_MS[match[2] as keyof typeof UNIT_MS];
}

const booleanValue = z.boolean({ error: "must be true or false (boolean feature)" });

/** `null` = unlimited. */
const limitValue = z
  .number({ error: "must be a whole number, or null for unlimited (limit feature)" })
  .int("must be a whole number")
  .min(0, "must not be negative")
  .nullable();

/** zod numbers reject Infinity, so "unlimited" can only be written as null. */
const meteredLimit = (message: string) =>
  z.number({ error: message }).min(0, "must not be negative").nullable();

/** Metered: `{limit, overage}`. Overage defaults to block (a hard limit). */
const meteredValue = z.strictObject(
  {
    limit: meteredLimit("must be a number, or null for unlimited"),
    overage: z.enum(["block", "allow"], { error: "must be block or allow" }).default("block"),
  },
  {
    error: (issue) =>
      issue.code === "invalid_type" ? "must be a number, null or {limit, overage}" : undefined,
  },
);

/** A bare limit is shorthand for `{limit}`; normalised here so later code sees one shape. */
const meteredShorthand = meteredLimit(
  "must be a number, null for unlimited, or {limit, overage} (metered feature)",
).transform((limit) => ({ limit, overage: "block" as const }));

const rateValue = z
  .strictObject(
    {
      limit: z
        .number({ error: "must be a whole number" })
        .int("must be a whole number")
        .positive("must be at least 1"),
      window: z
        .string({ error: "must be a window like 1m" })
        .regex(/^[1-9]\d*(s|m|h|d)$/, "must be a positive number of s, m, h or d, like 30s, 1m, 1h or 1d"),
    },
    {
      error: (issue) =>
        issue.code === "invalid_type" ? "must be {limit, window} (rate feature)" : undefined,
    },
  )
  // window_ms saves every enforcement path from re-parsing the window.
  .transform((value) => ({ ...value, window_ms: windowToMs(value.window) }));

/** The entitlement value schema for each feature type. */
const entitlementSchemas = {
  boolean: booleanValue,
  limit: limitValue,
  metered: meteredValue,
  rate: rateValue,
} as const;

/**
 * The schema a value written for a feature of `type` is checked with. Metered values are dispatched on
 * their shape (rather than a union) so an error inside `{limit, overage}` is reported precisely.
 */
export function entitlementSchemaFor(type: FeatureType, value: unknown): z.ZodType<Entitlement> {
  if (type === "metered" && (typeof value !== "object" || value === null)) return meteredShorthand;
  return entitlementSchemas[type];
}

/** A boolean feature's entitlement: on or off. */
export type BooleanEntitlement = z.output<typeof booleanValue>;
/** A limit feature's entitlement: a static number, `null` = unlimited. */
export type LimitEntitlement = z.output<typeof limitValue>;
/** A metered feature's entitlement per billing period, normalised from the shorthand. */
export type MeteredEntitlement = z.output<typeof meteredValue>;
/** A rate feature's entitlement: `limit` requests per `window` (also given as `window_ms`). */
export type RateEntitlement = z.output<typeof rateValue>;
/** Any entitlement value; its shape follows the type of the feature it belongs to. */
export type Entitlement = BooleanEntitlement | LimitEntitlement | MeteredEntitlement | RateEntitlement;
/** Feature types. */
export type FeatureType = keyof typeof entitlementSchemas;

/** Maps each feature type to its entitlement shape. */
export interface EntitlementByType {
  boolean: BooleanEntitlement;
  limit: LimitEntitlement;
  metered: MeteredEntitlement;
  rate: RateEntitlement;
}
