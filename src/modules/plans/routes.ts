import { createRoute, z } from "@hono/zod-openapi";
import { AppError } from "../../lib/errors.js";
import { createRouter, errorResponses, jsonBody, jsonResponse } from "../../lib/http.js";
import { createApiRouter, operatorOnly, requireCaller } from "../auth/caller.js";
import { requestChange } from "../billing/checkout.js";
import { redeemCoupon } from "../billing/coupons.js";
import { AGGREGATIONS, type Plan } from "../catalog/schema.js";
import { accessOf, OrgParam, orgAccess } from "../orgs/access.js";
import { getSubscription, migrateSubscribers, setPlan, subscriptionOut } from "./subscriptions.js";

const orgSecurity: Record<string, string[]>[] = [{ bearer: [] }, { operator: [] }];
const operatorSecurity: Record<string, string[]>[] = [{ operator: [] }];

const PublicPlan = z
  .object({
    key: z.string(),
    name: z.string(),
    description: z.string().nullable(),
    version: z.number().int(),
    price: z.object({ month: z.string().optional(), year: z.string().optional() }),
    currency: z.string(),
    trial_days: z.number().int(),
    entitlements: z.record(z.string(), z.unknown()),
    charges: z.array(z.unknown()),
    default: z.boolean(),
  })
  .openapi("Plan");

export const Subscription = z
  .object({
    id: z.string(),
    org_id: z.string(),
    plan: z.string(),
    plan_name: z.string(),
    plan_version: z.number().int(),
    interval: z.enum(["month", "year"]),
    status: z.enum(["trialing", "active", "past_due", "canceled"]),
    price: z.string().nullable(),
    current_period_start: z.string(),
    current_period_end: z.string(),
    usage_period_start: z
      .string()
      .openapi({ description: "Metered quotas reset monthly from the anchor, also on annual plans." }),
    usage_period_end: z.string(),
    anchor_at: z.string(),
    trial_ends_at: z.string().nullable(),
    cancel_at_period_end: z.boolean(),
    canceled_at: z.string().nullable(),
    pending_change: z
      .object({
        plan: z.string(),
        plan_version: z.number().int(),
        interval: z.enum(["month", "year"]),
        effective_at: z.string(),
      })
      .nullable()
      .openapi({ description: "A downgrade waiting for the period end." }),
    created_at: z.string(),
    updated_at: z.string(),
  })
  .openapi("Subscription");

const SetPlan = z
  .strictObject({
    plan: z.string().min(1).max(128).openapi({ example: "pro" }),
    interval: z.enum(["month", "year"]).optional().openapi({
      description: "Default: the current interval if the plan is sold by it, else monthly if it can be.",
    }),
    coupon: z.string().min(1).max(64).optional().openapi({
      description: "A coupon code to redeem with the change (it then applies to the change's invoice).",
    }),
    skip_payment: z.boolean().optional().openapi({
      description:
        "Operator only: put the org on the plan without payment or proration (comps, migrations, tests).",
    }),
  })
  .openapi("SetPlan");

/** A plan as the public pricing page shows it (charges included: they are part of the price). */
function publicPlan(plan: Plan, version: number, currency: string, isDefault: boolean) {
  const entitlements = Object.fromEntries(
    Object.entries(plan.entitlements).map(([key, value]) => {
      if (value && typeof value === "object" && "window_ms" in value) {
        const { window_ms: _ms, ...rest } = value as { window_ms: number };
        return [key, rest];
      }
      return [key, value];
    }),
  );
  return {
    key: plan.key,
    name: plan.name,
    description: plan.description ?? null,
    version,
    price: plan.price,
    currency,
    trial_days: plan.trial_days,
    entitlements,
    charges: plan.charges,
    default: isDefault,
  };
}

/** The public plan list. */
export function planRoutes() {
  const router = createRouter();
  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/plans",
      tags: ["Catalog"],
      summary: "The plans on the pricing page (public)",
      description: "Hidden plans are left out. Each plan is given in the version new subscribers get.",
      responses: {
        200: jsonResponse(
          z.object({
            data: z.array(PublicPlan),
            features: z
              .array(
                z.object({
                  key: z.string(),
                  name: z.string(),
                  description: z.string().nullable(),
                  type: z.enum(["boolean", "limit", "metered", "rate"]),
                  meter: z.string().nullable(),
                }),
              )
              .openapi({ description: "Every feature the plans' entitlements name, in catalog order." }),
            meters: z
              .array(
                z.object({
                  key: z.string(),
                  name: z.string(),
                  aggregation: z.enum(AGGREGATIONS).openapi({
                    description:
                      "How events make the meter's quantity: `count` counts events, `sum` adds their values (docs/metering.md).",
                  }),
                }),
              )
              .openapi({ description: "Every meter, for usage-based charges and the estimator." }),
          }),
          "The plans, and the features and meters they refer to",
        ),
      },
    }),
    (c) => {
      const deps = c.get("deps");
      const data = deps.catalog.plans
        .filter((plan) => !plan.hidden)
        .map((plan) =>
          publicPlan(
            plan,
            deps.plans.current(plan.key)?.version ?? 1,
            deps.catalog.currency,
            plan.key === deps.catalog.default_plan,
          ),
        );
      const features = deps.catalog.features.map((feature) => ({
        key: feature.key,
        name: feature.name ?? feature.key,
        description: feature.description ?? null,
        type: feature.type,
        meter: feature.type === "metered" ? feature.meter : null,
      }));
      const meters = deps.catalog.meters.map((meter) => ({
        key: meter.key,
        name: meter.name,
        aggregation: meter.aggregation,
      }));
      c.header("cache-control", "public, max-age=60");
      return c.json({ data, features, meters }, 200);
    },
  );
  return router;
}

/** An org's subscription, and the operator's plan changes. */
export function subscriptionRoutes() {
  const router = createApiRouter();
  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/subscription",
      tags: ["Billing"],
      summary: "The org's subscription: plan, version, interval, current period",
      security: orgSecurity,
      middleware: orgAccess("billing:read"),
      request: { params: OrgParam },
      responses: { 200: jsonResponse(Subscription, "The subscription"), ...errorResponses(401, 403, 404) },
    }),
    async (c) => {
      const deps = c.get("deps");
      const { row, plan } = await getSubscription(deps, accessOf(c).orgId);
      return c.json(subscriptionOut(row, plan, deps.clock.nowMs()), 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/orgs/{org}/subscription",
      tags: ["Billing"],
      summary: "Change the org's plan: upgrade now with proration, downgrade at period end, or checkout",
      description:
        "Upgrades apply now: the unused part of the old base fee is credited, the rest of the period on the new plan charged, and the invoice charged to the card on file. Downgrades wait for the period end. When the change costs money and the org has no card, the answer is a `checkout_url` and nothing changes until it is paid. `skip_payment: true` (operator only) puts the org on the plan without payment or proration. Audited.",
      security: orgSecurity,
      middleware: orgAccess("billing:manage"),
      request: { params: OrgParam, body: jsonBody(SetPlan) },
      responses: {
        200: jsonResponse(
          z.union([
            Subscription.extend({
              invoice_id: z.string().nullable().optional(),
              payment: z.string().nullable().optional().openapi({
                description:
                  "paid, failed, no_payment_method, not_due, or deferred (the payment provider did not answer; the billing run charges it)",
              }),
            }),
            z.object({ checkout_url: z.string(), checkout_id: z.string() }).openapi("CheckoutNeeded"),
          ]),
          "The subscription after the change, or where to pay for it",
        ),
        ...errorResponses(400, 401, 403, 404, 409),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const access = accessOf(c);
      const body = c.req.valid("json");
      if (body.skip_payment) {
        if (access.caller.kind !== "operator")
          throw new AppError("forbidden", "Only the operator can change a plan without payment.");
        const { row, plan } = await setPlan(deps, access.caller, access.orgId, body);
        return c.json(subscriptionOut(row, plan, deps.clock.nowMs()), 200);
      }
      if (body.coupon !== undefined) await redeemCoupon(deps, access.caller, access.orgId, body.coupon);
      const outcome = await requestChange(deps, access.caller, access.orgId, body);
      if (outcome.status === "checkout")
        return c.json({ checkout_url: outcome.checkoutUrl, checkout_id: outcome.checkoutId }, 200);
      const { row, plan } = await getSubscription(deps, access.orgId);
      return c.json(
        {
          ...subscriptionOut(row, plan, deps.clock.nowMs()),
          invoice_id: outcome.invoiceId,
          payment: outcome.payment,
        },
        200,
      );
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/admin/plans/{plan}/migrate",
      tags: ["Admin"],
      summary: "Move a plan's grandfathered subscribers to its current version (operator)",
      security: operatorSecurity,
      middleware: operatorOnly,
      request: {
        params: z.object({
          plan: z
            .string()
            .max(128)
            .openapi({ param: { name: "plan", in: "path" } }),
        }),
        body: jsonBody(
          z
            .strictObject({
              from_version: z
                .number()
                .int()
                .positive()
                .max(2_147_483_647)
                .optional()
                .openapi({ description: "Only this version; default every older one." }),
            })
            .openapi("MigratePlan"),
        ),
      },
      responses: {
        200: jsonResponse(
          z.object({ plan: z.string(), migrated: z.number().int(), to_version: z.number().int() }),
          "Moved",
        ),
        ...errorResponses(400, 401, 403, 404),
      },
    }),
    async (c) => {
      const plan = c.req.valid("param").plan;
      if (!c.get("deps").plans.current(plan))
        throw new AppError("not_found", `There is no plan ${plan} in the catalog.`);
      const result = await migrateSubscribers(
        c.get("deps"),
        await requireCaller(c),
        plan,
        c.req.valid("json").from_version,
      );
      return c.json({ plan, ...result }, 200);
    },
  );
  return router;
}
