import { createRoute, z } from "@hono/zod-openapi";
import { AppError } from "../../lib/errors.js";
import { createRouter, errorResponses, jsonBody, jsonResponse } from "../../lib/http.js";
import { clientIp } from "../auth/client-ip.js";
import { bearerToken, isOperatorKey } from "../operator/auth.js";
import { EstimateRequest, estimate } from "./estimate.js";

/** Public estimates per client address: ample for a pricing page's sliders, not for a script. */
const ESTIMATE_LIMIT = { perMinute: 300 };

const TierPart = z.object({
  tier: z.number().int(),
  from: z.string(),
  up_to: z.string().nullable(),
  units: z.string(),
  unit_amount: z.string().optional(),
  rate: z.string().optional(),
  flat_amount: z.string(),
  amount: z.string(),
});

const EstimateLine = z
  .object({
    kind: z.enum(["usage", "minimum_spend"]).openapi({
      description: "`minimum_spend`: the top-up when the charge came out below its `min_amount`.",
    }),
    meter: z.string(),
    meter_name: z.string(),
    model: z.string(),
    quantity: z.string(),
    amount: z.string().openapi({ description: "Rounded to the currency's minor unit, as invoiced." }),
    exact_amount: z.string().openapi({ description: "Unrounded." }),
    capped: z.boolean().openapi({ description: "The charge's `max_amount` lowered the amount." }),
    tiers: z.array(TierPart).optional(),
    packages: z.string().optional(),
    percentage: z
      .object({
        transactions: z.number().int(),
        free_transactions: z.number().int(),
        paying_transactions: z.number().int(),
        free_amount: z.string(),
        rate_amount: z.string(),
        fixed_amount: z.string(),
        raised_to_min: z.number().int(),
        lowered_to_max: z.number().int(),
      })
      .optional(),
  })
  .openapi("PricingEstimateLine");

const EstimateResponse = z
  .object({
    currency: z.string(),
    plan: z.object({ key: z.string(), version: z.number().int() }).nullable(),
    period: z.object({ start: z.string(), end: z.string() }).nullable(),
    lines: z.array(EstimateLine),
    total: z.string().openapi({ description: "The sum of the rounded lines (usage charges only)." }),
    base_fee: z
      .object({ interval: z.enum(["month", "year"]), amount: z.string() })
      .nullable()
      .openapi({ description: "With `plan`: the base fee billed in advance; not part of `total`." }),
  })
  .openapi("PricingEstimate");

export function pricingRoutes() {
  const router = createRouter();
  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/pricing/estimate",
      tags: ["Catalog"],
      summary: "Price usage with a plan's charges or given charges (public)",
      description:
        "Exact amounts for usage given as quantities per meter or as events, priced line by line exactly as invoices price them. Public (it drives the pricing page's estimator); limited per client address unless the operator key is presented.",
      request: { body: jsonBody(EstimateRequest) },
      responses: {
        200: jsonResponse(EstimateResponse, "The estimate"),
        ...errorResponses(400, 413, 429),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      if (!isOperatorKey(bearerToken(c.req.header("authorization")), deps.secrets.adminKeyHash)) {
        const result = await deps.counters.apply(
          [
            {
              kind: "rate",
              key: `estimate:ip:${clientIp(c)}`,
              limit: ESTIMATE_LIMIT.perMinute,
              periodMs: 60_000,
              cost: 1,
            },
          ],
          deps.clock.nowMs(),
        );
        // Fails open: an estimate changes nothing, and a pricing page should not break with Redis.
        if (result.status === "done" && !result.allowed) {
          const outcome = result.outcomes[0];
          const ms = outcome?.kind === "rate" ? outcome.retryAfterMs : 1000;
          const seconds = Math.max(1, Math.ceil(ms / 1000));
          throw new AppError("rate_limited", `Too many estimates. Try again in ${seconds} s.`, {
            headers: { "retry-after": String(seconds) },
          });
        }
      }
      return c.json(await estimate(deps, c.req.valid("json")), 200);
    },
  );
  return router;
}
