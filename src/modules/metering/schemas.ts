import { z } from "@hono/zod-openapi";

/** Schemas shared by /v1/check and /v1/keys/verify. */

export const Amount = z.union([z.number(), z.string()]).openapi({
  description:
    "Units to consume (default 1): a whole number for count meters, limit and rate features; up to 6 decimals for sum meters. A negative amount releases a limit feature's allocation.",
  example: 1,
});
export const CheckResult = z
  .object({
    allowed: z.boolean(),
    feature: z.string(),
    type: z.enum(["boolean", "limit", "metered", "rate"]),
    limit: z.number().nullable().openapi({ description: "null: unlimited (or not applicable)." }),
    used: z.number().nullable(),
    remaining: z.number().nullable(),
    resets_at: z
      .string()
      .nullable()
      .openapi({ description: "Metered: the period's end. Rate: when fully replenished." }),
    reason: z
      .enum([
        "feature_not_in_plan",
        "limit_exceeded",
        "quota_exceeded",
        "rate_limited",
        "subscription_inactive",
        "unavailable",
      ])
      .optional(),
    upgrade_url: z.string().optional(),
    upgrade_plan: z
      .string()
      .optional()
      .openapi({ description: "The cheapest listed plan that grants more." }),
    retry_after_ms: z.number().optional(),
  })
  .openapi("CheckResult");
