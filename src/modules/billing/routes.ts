import { createRoute, z } from "@hono/zod-openapi";
import { AppError } from "../../lib/errors.js";
import { createRouter, errorResponses, jsonBody, jsonResponse } from "../../lib/http.js";
import { createApiRouter, operatorOnly } from "../auth/caller.js";
import { clientIp } from "../auth/client-ip.js";
import { bearerToken, isOperatorKey } from "../operator/auth.js";
import { accessOf, OrgParam, orgAccess } from "../orgs/access.js";
import { EstimateRequest, estimate } from "./estimate.js";
import { getInvoice, listInvoices } from "./invoices.js";
import { runBilling, upcomingInvoice } from "./run.js";

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

const orgSecurity: Record<string, string[]>[] = [{ bearer: [] }, { operator: [] }];

const InvoiceLine = z
  .object({
    kind: z.enum(["base_fee", "usage", "minimum_spend", "proration_credit", "proration_charge"]),
    description: z.string(),
    meter: z.string().nullable(),
    model: z.string().nullable(),
    quantity: z.string().nullable(),
    unit_amount: z.string().nullable(),
    amount: z.string().openapi({ description: "Rounded to the currency's minor unit." }),
    exact_amount: z.string(),
    period_start: z.string(),
    period_end: z.string(),
    details: z.record(z.string(), z.unknown()).nullable(),
  })
  .openapi("InvoiceLine");

const invoiceFields = {
  org_id: z.string(),
  subscription_id: z.string().nullable(),
  currency: z.string(),
  period_start: z.string(),
  period_end: z.string(),
  plan: z.string().nullable(),
  plan_version: z.number().int().nullable(),
  interval: z.enum(["month", "year"]).nullable(),
  lines: z.array(InvoiceLine),
  subtotal: z.string(),
  total: z.string(),
  amount_due: z.string(),
};

const Invoice = z
  .object({
    id: z.string(),
    number: z.string().nullable().openapi({ description: "Gapless and sequential, given at finalization." }),
    status: z.enum(["draft", "finalized", "paid", "void"]),
    reason: z.enum(["subscription_cycle", "subscription_create", "subscription_update", "manual"]),
    ...invoiceFields,
    discount: z.string(),
    credits_applied: z.string(),
    amount_paid: z.string(),
    created_at: z.string(),
    finalized_at: z.string().nullable(),
    due_at: z.string().nullable(),
    paid_at: z.string().nullable(),
    voided_at: z.string().nullable(),
  })
  .openapi("Invoice");

const UpcomingInvoice = z
  .object({
    id: z.null(),
    number: z.null(),
    status: z.literal("upcoming"),
    reason: z.literal("subscription_cycle"),
    ...invoiceFields,
    next_billing_at: z.string().openapi({ description: "When the billing run writes it." }),
  })
  .openapi("UpcomingInvoice");

const InvoiceParams = OrgParam.extend({
  id: z
    .string()
    .regex(/^inv_[0-9a-z]{26}$/, "must be an invoice id (inv_…)")
    .openapi({ param: { name: "id", in: "path" } }),
});

/** An org's invoices, and the operator's billing run. */
export function invoiceRoutes() {
  const router = createApiRouter();
  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/invoices",
      tags: ["Billing"],
      summary: "The org's invoices, newest first",
      security: orgSecurity,
      middleware: orgAccess("billing:read"),
      request: {
        params: OrgParam,
        query: z.object({
          limit: z.coerce.number().int().min(1).max(100).default(20),
          before: z
            .string()
            .regex(/^inv_[0-9a-z]{26}$/, "must be an invoice id (inv_…)")
            .optional()
            .openapi({ description: "An invoice id: return older invoices." }),
        }),
      },
      responses: {
        200: jsonResponse(z.object({ data: z.array(Invoice) }).openapi("InvoiceList"), "Invoices"),
        ...errorResponses(400, 401, 403, 404),
      },
    }),
    async (c) => {
      const { limit, before } = c.req.valid("query");
      const data = await listInvoices(c.get("deps"), accessOf(c).orgId, limit, before);
      return c.json({ data }, 200);
    },
  );

  // Before /invoices/{id}: "upcoming" is not an invoice id.
  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/invoices/upcoming",
      tags: ["Billing"],
      summary: "The invoice the running period will close with, priced from usage so far",
      security: orgSecurity,
      middleware: orgAccess("billing:read"),
      request: { params: OrgParam },
      responses: {
        200: jsonResponse(UpcomingInvoice, "The upcoming invoice"),
        ...errorResponses(401, 403, 404),
      },
    }),
    async (c) => c.json(await upcomingInvoice(c.get("deps"), accessOf(c).orgId), 200),
  );

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/invoices/{id}",
      tags: ["Billing"],
      summary: "One invoice with its lines",
      security: orgSecurity,
      middleware: orgAccess("billing:read"),
      request: { params: InvoiceParams },
      responses: { 200: jsonResponse(Invoice, "The invoice"), ...errorResponses(400, 401, 403, 404) },
    }),
    async (c) => c.json(await getInvoice(c.get("deps"), accessOf(c).orgId, c.req.valid("param").id), 200),
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/admin/billing/run",
      tags: ["Admin"],
      summary: "Close every due billing period now (operator; idempotent)",
      description:
        "What the scheduled billing run does: each subscription whose period has ended gets its invoice (usage in arrears, the next base fee in advance). Running it again closes nothing twice.",
      security: [{ operator: [] }],
      middleware: operatorOnly,
      responses: {
        200: jsonResponse(
          z.object({ closed: z.number().int(), invoices: z.array(z.string()) }).openapi("BillingRun"),
          "What the run did",
        ),
        ...errorResponses(401, 403),
      },
    }),
    async (c) => c.json(await runBilling(c.get("deps")), 200),
  );
  return router;
}
