import { createRoute, z } from "@hono/zod-openapi";
import { eq } from "drizzle-orm";
import type { Context } from "hono";
import { checkoutSessions } from "../../db/schema.js";
import type { AppEnv } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { createRouter, errorResponses, jsonBody, jsonResponse, requestLogger } from "../../lib/http.js";
import { createApiRouter, operatorOnly, requireCaller } from "../auth/caller.js";
import { clientIp } from "../auth/client-ip.js";
import { bearerToken, isOperatorKey } from "../operator/auth.js";
import { accessOf, OrgParam, orgAccess } from "../orgs/access.js";
import { Subscription } from "../plans/routes.js";
import { getSubscription, subscriptionOut } from "../plans/subscriptions.js";
import { cancelSubscription, quoteChange, quoteOut, resumeSubscription } from "./changes.js";
import { checkoutDonePage, checkoutPage, checkoutSummary, completeCheckout } from "./checkout.js";
import {
  addCredit,
  CreateCoupon,
  createCoupon,
  creditsOf,
  GrantCredit,
  listCoupons,
  orgCouponList,
  redeemCoupon,
} from "./coupons.js";
import { CreateCreditNote, createCreditNote, listCreditNotes, voidInvoice } from "./credit-notes.js";
import { creditNotePdf, invoicePdf, pdfHeaders } from "./documents.js";
import { EstimateRequest, estimate } from "./estimate.js";
import { getInvoice, listInvoices } from "./invoices.js";
import { collectInvoice, savePaymentMethod, testCard } from "./payments.js";
import { openPortal, portalPage, portalSession, portalView } from "./portal.js";
import { runBilling, upcomingInvoice } from "./run.js";
import { handleStripeWebhook, syncStripeCheckout } from "./stripe-webhooks.js";

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
  discounts: z.array(z.object({ code: z.string(), amount: z.string() })),
  discount: z.string(),
  credits_applied: z.string(),
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
    amount_paid: z.string(),
    amount_credited: z.string().openapi({ description: "What credit notes took off this invoice, in all." }),
    amount_remaining: z.string().openapi({
      description:
        "What is left to pay: the amount due less what credit notes took off it while open; 0 once paid or void.",
    }),
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

const CreditNote = z
  .object({
    id: z.string(),
    number: z.string(),
    org_id: z.string(),
    invoice_id: z.string(),
    reason: z.enum(["duplicate", "fraudulent", "order_change", "product_unsatisfactory", "other"]),
    memo: z.string().nullable(),
    currency: z.string(),
    amount: z.string(),
    refund_amount: z.string(),
    credit_amount: z.string(),
    outstanding_amount: z
      .string()
      .openapi({ description: "Taken off what was left to pay on the open invoice." }),
    refund_status: z.enum(["pending", "succeeded", "failed"]).nullable(),
    lines: z.array(
      z.object({ invoice_line: z.number().int().nullable(), description: z.string(), amount: z.string() }),
    ),
    created_at: z.string(),
  })
  .openapi("CreditNote");

const InvoiceParams = OrgParam.extend({
  id: z
    .string()
    .regex(/^inv_[0-9a-z]{26}$/, "must be an invoice id (inv_…)")
    .openapi({ param: { name: "id", in: "path" } }),
});

/** An org's invoices, and the operator's billing run. */
export function invoiceRoutes() {
  const router = createApiRouter();
  // PDFs first: "inv_….pdf" would otherwise reach /invoices/{id} and fail its id check.
  router.get("/v1/orgs/:org/invoices/:file{inv_[0-9a-z]{26}\\.pdf}", orgAccess("billing:read"), async (c) => {
    const { pdf, filename } = await invoicePdf(
      c.get("deps"),
      accessOf(c).orgId,
      c.req.param("file").slice(0, -4),
    );
    return c.body(new Uint8Array(pdf), 200, pdfHeaders(filename));
  });
  router.get(
    "/v1/orgs/:org/credit-notes/:file{crn_[0-9a-z]{26}\\.pdf}",
    orgAccess("billing:read"),
    async (c) => {
      const { pdf, filename } = await creditNotePdf(
        c.get("deps"),
        accessOf(c).orgId,
        c.req.param("file").slice(0, -4),
      );
      return c.body(new Uint8Array(pdf), 200, pdfHeaders(filename));
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/orgs/{org}/invoices/{id}/void",
      tags: ["Billing"],
      summary:
        "Void an open invoice (operator): nothing is owed on it, dunning stops, applied credits come back",
      security: [{ operator: [] }],
      middleware: [orgAccess("billing:manage"), operatorOnly],
      request: { params: InvoiceParams },
      responses: {
        200: jsonResponse(Invoice, "The voided invoice"),
        ...errorResponses(401, 403, 404, 409),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const { org, id } = c.req.valid("param");
      await voidInvoice(deps, await requireCaller(c), org, id);
      return c.json(await getInvoice(deps, org, id), 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/orgs/{org}/invoices/{id}/credit-notes",
      tags: ["Billing"],
      summary: "Issue a credit note (operator): a correction or refund of a finalized or paid invoice",
      description:
        "On an open invoice the credit lowers what is left to pay (fully credited, it is paid). On a paid one it is refunded to the card (`settle: refund`, the default) or granted as credit for later invoices (`settle: credit`). Amounts are capped by what is left to credit, per line and in all.",
      security: [{ operator: [] }],
      middleware: [orgAccess("billing:manage"), operatorOnly],
      request: { params: InvoiceParams, body: jsonBody(CreateCreditNote) },
      responses: {
        201: jsonResponse(CreditNote, "The credit note"),
        ...errorResponses(400, 401, 403, 404, 409),
      },
    }),
    async (c) => {
      const { org, id } = c.req.valid("param");
      const note = await createCreditNote(
        c.get("deps"),
        await requireCaller(c),
        org,
        id,
        c.req.valid("json"),
      );
      return c.json(note, 201);
    },
  );

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/credit-notes",
      tags: ["Billing"],
      summary: "The org's credit notes, newest first (PDF at /v1/orgs/{org}/credit-notes/{id}.pdf)",
      security: orgSecurity,
      middleware: orgAccess("billing:read"),
      request: {
        params: OrgParam,
        query: z.object({
          invoice: z
            .string()
            .regex(/^inv_[0-9a-z]{26}$/, "must be an invoice id (inv_…)")
            .optional()
            .openapi({ description: "Only this invoice's credit notes." }),
        }),
      },
      responses: {
        200: jsonResponse(z.object({ data: z.array(CreditNote) }).openapi("CreditNoteList"), "Credit notes"),
        ...errorResponses(400, 401, 403, 404),
      },
    }),
    async (c) => {
      const data = await listCreditNotes(c.get("deps"), accessOf(c).orgId, c.req.valid("query").invoice);
      return c.json({ data }, 200);
    },
  );
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

const ChangePreview = z
  .object({
    kind: z.enum(["upgrade", "downgrade", "same_price", "interval_change", "resubscribe", "keep"]),
    timing: z.enum(["now", "period_end"]),
    effective_at: z.string(),
    trial_ends_at: z.string().nullable().openapi({ description: "The change starts the plan's trial." }),
    from: z.object({ plan: z.string(), interval: z.enum(["month", "year"]) }),
    to: z.object({ plan: z.string(), version: z.number().int(), interval: z.enum(["month", "year"]) }),
    currency: z.string(),
    lines: z.array(InvoiceLine),
    subtotal: z.string(),
    discounts: z.array(z.object({ code: z.string(), amount: z.string() })),
    discount: z.string(),
    credits_applied: z.string(),
    total: z.string(),
    amount_due: z.string(),
  })
  .openapi("SubscriptionChangePreview");

/** Previews, cancellation and resumption of an org's subscription. */
export function subscriptionChangeRoutes() {
  const router = createApiRouter();
  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/orgs/{org}/subscription/preview",
      tags: ["Billing"],
      summary: "What changing plan would do and cost: exactly the lines the change posts",
      security: orgSecurity,
      middleware: orgAccess("billing:read"),
      request: {
        params: OrgParam,
        body: jsonBody(
          z
            .strictObject({
              plan: z.string().min(1).max(128),
              interval: z.enum(["month", "year"]).optional(),
            })
            .openapi("SubscriptionChange"),
        ),
      },
      responses: {
        200: jsonResponse(ChangePreview, "The preview"),
        ...errorResponses(400, 401, 403, 404, 409),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      return c.json(
        await quoteOut(deps, await quoteChange(deps, accessOf(c).orgId, c.req.valid("json"))),
        200,
      );
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/orgs/{org}/subscription/cancel",
      tags: ["Billing"],
      summary: "Cancel at the period end (default) or now",
      description:
        "At the period end: the period is billed as usual, then the subscription is canceled and the org keeps the default plan's grants. Now: the period's usage so far is invoiced and the subscription ends at once (the unused base fee is not refunded).",
      security: orgSecurity,
      middleware: orgAccess("billing:manage"),
      request: {
        params: OrgParam,
        body: jsonBody(
          z.strictObject({ at_period_end: z.boolean().default(true) }).openapi("CancelSubscription"),
        ),
      },
      responses: {
        200: jsonResponse(Subscription, "The subscription"),
        ...errorResponses(400, 401, 403, 404, 409),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const access = accessOf(c);
      await cancelSubscription(deps, access.caller, access.orgId, c.req.valid("json").at_period_end);
      const { row, plan } = await getSubscription(deps, access.orgId);
      return c.json(subscriptionOut(row, plan, deps.clock.nowMs()), 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/orgs/{org}/subscription/resume",
      tags: ["Billing"],
      summary: "Undo a cancellation or downgrade scheduled for the period end",
      security: orgSecurity,
      middleware: orgAccess("billing:manage"),
      request: { params: OrgParam },
      responses: {
        200: jsonResponse(Subscription, "The subscription"),
        ...errorResponses(401, 403, 404, 409),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const access = accessOf(c);
      await resumeSubscription(deps, access.caller, access.orgId);
      const { row, plan } = await getSubscription(deps, access.orgId);
      return c.json(subscriptionOut(row, plan, deps.clock.nowMs()), 200);
    },
  );
  return router;
}

const htmlHeaders = {
  "content-type": "text/html; charset=utf-8",
  "cache-control": "no-store",
  "x-frame-options": "DENY",
  "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
  "referrer-policy": "no-referrer",
};

/**
 * The local provider's test-mode checkout page: `GET /checkout/:session` shows it; its form posts
 * `POST /checkout/:session {card_number}` (a form or JSON; scripts may call it directly).
 */
export function checkoutRoutes() {
  const router = createRouter();
  const sessionId = (id: string) => {
    if (!/^chk_[0-9a-z]{26}([0-9a-z]{6})?$/.test(id)) throw new AppError("not_found", "No such checkout.");
    return id;
  };
  const wantsHtml = (accept: string | undefined, form: boolean) =>
    form || (accept ?? "").includes("text/html");

  router.get("/checkout/:session", async (c) => {
    const deps = c.get("deps");
    try {
      const summary = await checkoutSummary(deps, sessionId(c.req.param("session")));
      return c.body(checkoutPage(summary), 200, htmlHeaders);
    } catch (error) {
      if (!(error instanceof AppError)) throw error;
      return c.body(
        checkoutDonePage("Checkout unavailable", error.message),
        error.status as 404,
        htmlHeaders,
      );
    }
  });

  router.post("/checkout/:session", async (c) => {
    const deps = c.get("deps");
    const type = c.req.header("content-type") ?? "";
    const form =
      type.startsWith("application/x-www-form-urlencoded") || type.startsWith("multipart/form-data");
    const html = wantsHtml(c.req.header("accept"), form);
    const id = sessionId(c.req.param("session"));
    let card: unknown;
    if (form) card = (await c.req.parseBody()).card_number;
    else {
      const body = await c.req.json().catch(() => {
        throw new AppError("validation_failed", "The body must be JSON {card_number} or a form.");
      });
      card = (body as { card_number?: unknown } | null)?.card_number;
    }
    try {
      if (typeof card !== "string" || card.length === 0 || card.length > 64)
        throw new AppError("validation_failed", "A card number is required.", {
          errors: [{ field: "card_number", message: "is required", code: "required", location: "body" }],
        });
      const done = await completeCheckout(deps, id, card);
      if (html)
        return c.body(
          checkoutDonePage("Payment received", "Your subscription is active.", {
            label: "Back to billing",
            url: `${deps.env.publicUrl}/dashboard/orgs/${encodeURIComponent(done.orgId)}/billing`,
          }),
          200,
          htmlHeaders,
        );
      return c.json(
        { status: "complete", org_id: done.orgId, invoice_id: done.invoiceId, payment: done.payment },
        200,
      );
    } catch (error) {
      if (!html || !(error instanceof AppError)) throw error;
      const summary = await checkoutSummary(deps, id).catch(() => undefined);
      if (!summary)
        return c.body(
          checkoutDonePage("Checkout unavailable", error.message),
          error.status as 404,
          htmlHeaders,
        );
      return c.body(checkoutPage(summary, { error: error.message }), error.status as 402, htmlHeaders);
    }
  });
  // Where Stripe Checkout sends the customer back: the session is read from Stripe at once, so the
  // page can say "paid" even before the webhook arrives (both paths fulfil the checkout once).
  router.get("/checkout/:session/return", async (c) => {
    const deps = c.get("deps");
    const id = sessionId(c.req.param("session"));
    if (c.req.query("canceled"))
      return c.body(
        checkoutDonePage("Checkout canceled", "Nothing was charged and your plan is unchanged."),
        200,
        htmlHeaders,
      );
    try {
      const [session] = await deps.database.db
        .select()
        .from(checkoutSessions)
        .where(eq(checkoutSessions.id, id));
      if (!session?.providerReference) throw new AppError("not_found", "No such checkout.");
      const synced = await syncStripeCheckout(deps, session.providerReference);
      return synced.status === "complete"
        ? c.body(
            checkoutDonePage("Payment received", "Your subscription is active. You can close this page."),
            200,
            htmlHeaders,
          )
        : c.body(
            checkoutDonePage("Checkout not finished", "The card was not saved yet; nothing has changed."),
            200,
            htmlHeaders,
          );
    } catch (error) {
      if (!(error instanceof AppError)) {
        // A person is looking at this page: Stripe not answering is a page that says so, not a 500.
        requestLogger(c).warn({ err: (error as Error).message }, "checkout return: Stripe did not answer");
        return c.body(
          checkoutDonePage(
            "Checkout pending",
            "We could not confirm the payment yet; refresh this page in a moment.",
          ),
          503,
          htmlHeaders,
        );
      }
      return c.body(
        checkoutDonePage("Checkout unavailable", error.message),
        error.status as 404,
        htmlHeaders,
      );
    }
  });
  return router;
}

/**
 * The local provider's customer portal pages (`POST /v1/orgs/:org/portal` hands out their link): the
 * plan, the card and a form to replace it, the invoices with PDFs and "Pay now" for open ones. Forms
 * post back and the page is shown again with what happened.
 */
export function portalRoutes() {
  const router = createRouter();
  const show = async (
    c: Context<AppEnv>,
    id: string,
    notice?: { error?: string; ok?: string },
    status = 200,
  ) => {
    const deps = c.get("deps");
    const session = await portalSession(deps, id);
    return c.body(portalPage(await portalView(deps, session), notice), status as 200, htmlHeaders);
  };
  const guard = async (c: Context<AppEnv>, run: () => Promise<Response>) => {
    try {
      return await run();
    } catch (error) {
      if (!(error instanceof AppError)) throw error;
      return c.body(
        checkoutDonePage("Billing portal unavailable", error.message),
        error.status as 404,
        htmlHeaders,
      );
    }
  };
  router.get("/portal/:session", (c) => guard(c, () => show(c, c.req.param("session"))));
  router.get("/portal/:session/invoices/:file{inv_[0-9a-z]{26}\\.pdf}", (c) =>
    guard(c, async () => {
      const session = await portalSession(c.get("deps"), c.req.param("session"));
      const { pdf, filename } = await invoicePdf(
        c.get("deps"),
        session.orgId,
        c.req.param("file").slice(0, -4),
      );
      return c.body(new Uint8Array(pdf), 200, pdfHeaders(filename));
    }),
  );
  router.post("/portal/:session/card", (c) =>
    guard(c, async () => {
      const deps = c.get("deps");
      const id = c.req.param("session");
      const session = await portalSession(deps, id);
      const card = String((await c.req.parseBody()).card_number ?? "");
      try {
        // As on Stripe, a card that declines is not saved.
        if (testCard(card).outcome === "decline")
          throw new AppError("payment_required", "Your card was declined. Try another card.");
        const saved = await savePaymentMethod(deps, session.orgId, card);
        return show(c, id, { ok: `Saved: ${saved.brand} ending in ${saved.last4}.` });
      } catch (error) {
        if (!(error instanceof AppError)) throw error;
        return show(c, id, { error: error.message }, error.status);
      }
    }),
  );
  router.post("/portal/:session/invoices/:invoice/pay", (c) =>
    guard(c, async () => {
      const deps = c.get("deps");
      const id = c.req.param("session");
      const session = await portalSession(deps, id);
      const invoice = await getInvoice(deps, session.orgId, c.req.param("invoice"));
      const result = await collectInvoice(deps, invoice.id);
      const notice =
        result.status === "paid"
          ? { ok: `Invoice ${invoice.number} is paid.` }
          : result.status === "failed"
            ? { error: "The card was declined. Replace it and try again." }
            : result.status === "no_payment_method"
              ? { error: "Add a card first." }
              : { ok: `Invoice ${invoice.number} has nothing to pay.` };
      return show(c, id, notice, "error" in notice ? 402 : 200);
    }),
  );
  return router;
}

const PaymentMethod = z
  .object({ provider: z.enum(["local", "stripe"]), brand: z.string(), last4: z.string() })
  .openapi("PaymentMethod");

/** The org's card (the local provider's test cards) and paying an open invoice with it. */
export function paymentRoutes() {
  const router = createApiRouter();
  router.openapi(
    createRoute({
      method: "put",
      path: "/v1/orgs/{org}/payment-method",
      tags: ["Billing"],
      summary: "Save the org's card (test mode: 4242… pays, 4000 0000 0000 0002 is declined)",
      description:
        "Saving a card charges nothing; renewals and changes are charged to it. The local provider accepts its test cards only.",
      security: orgSecurity,
      middleware: orgAccess("billing:manage"),
      request: {
        params: OrgParam,
        body: jsonBody(z.strictObject({ card_number: z.string().min(1).max(64) }).openapi("SaveCard")),
      },
      responses: {
        200: jsonResponse(PaymentMethod, "The saved card"),
        ...errorResponses(400, 401, 403, 404),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      if (deps.env.billingProvider !== "local")
        throw new AppError(
          "conflict",
          "Cards are saved on the payment provider's own pages: open the billing portal (POST /v1/orgs/{org}/portal).",
        );
      const card = await savePaymentMethod(deps, accessOf(c).orgId, c.req.valid("json").card_number);
      return c.json({ provider: "local" as const, brand: card.brand, last4: card.last4 }, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/orgs/{org}/portal",
      tags: ["Billing"],
      summary: "Open the customer portal: change the card, see and pay invoices",
      description:
        "Returns a short-lived link: Stripe's customer portal with the stripe provider, Tollgate's test-mode portal with the local one (valid for an hour).",
      security: orgSecurity,
      middleware: orgAccess("billing:manage"),
      request: {
        params: OrgParam,
        body: jsonBody(
          z
            .strictObject({
              return_url: z
                .url({ protocol: /^https?$/, error: "must be an http(s) URL" })
                .max(2048)
                .optional()
                .openapi({ description: "Where the portal's Back link leads." }),
            })
            .openapi("OpenPortal"),
        ),
      },
      responses: {
        200: jsonResponse(z.object({ url: z.string() }).openapi("PortalSession"), "The portal's link"),
        ...errorResponses(400, 401, 403, 404, 503),
      },
    }),
    async (c) => {
      const { return_url } = c.req.valid("json");
      return c.json(await openPortal(c.get("deps"), accessOf(c).orgId, return_url ?? null), 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/billing/stripe/webhook",
      tags: ["Billing"],
      summary: "Stripe's events (stripe provider only)",
      description:
        "Authenticated by the `Stripe-Signature` header (STRIPE_WEBHOOK_SECRET, 300 s tolerance), not by a token. Each event is processed once, in any order: the object it names is re-read from Stripe. The body is Stripe's event, unparsed.",
      security: [],
      responses: {
        200: jsonResponse(
          z
            .object({ received: z.literal(true), duplicate: z.boolean(), handled: z.boolean() })
            .openapi("StripeWebhookResult"),
          "Acknowledged",
        ),
        ...errorResponses(400, 404, 503),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const result = await handleStripeWebhook(deps, await c.req.text(), c.req.header("stripe-signature"));
      return c.json(result, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/orgs/{org}/invoices/{id}/pay",
      tags: ["Billing"],
      summary: "Charge an open invoice to the card on file now",
      security: orgSecurity,
      middleware: orgAccess("billing:manage"),
      request: { params: InvoiceParams },
      responses: {
        200: jsonResponse(Invoice, "The invoice after the attempt"),
        ...errorResponses(400, 401, 402, 403, 404, 409),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const { orgId } = accessOf(c);
      const { id } = c.req.valid("param");
      const invoice = await getInvoice(deps, orgId, id);
      if (invoice.status !== "finalized")
        throw new AppError("conflict", `Invoice ${id} is ${invoice.status}: nothing to pay.`);
      const result = await collectInvoice(deps, id);
      if (result.status === "no_payment_method")
        throw new AppError("payment_required", "The org has no card on file: save one first.");
      if (result.status === "failed")
        throw new AppError("payment_required", "The card was declined.", {
          decline_code: result.failureCode,
        });
      return c.json(await getInvoice(deps, orgId, id), 200);
    },
  );
  return router;
}

const Coupon = z
  .object({
    id: z.string(),
    code: z.string(),
    name: z.string().nullable(),
    type: z.enum(["percentage", "fixed_amount"]),
    percent_off: z.string().nullable(),
    amount_off: z.string().nullable(),
    currency: z.string().nullable(),
    duration: z.enum(["once", "repeating", "forever"]),
    duration_periods: z.number().int().nullable(),
    max_redemptions: z.number().int().nullable(),
    redemptions: z.number().int(),
    redeem_by: z.string().nullable(),
    created_at: z.string(),
  })
  .openapi("Coupon");

const AppliedCoupon = z
  .object({
    id: z.string(),
    coupon: Coupon,
    applied_at: z.string(),
    periods_used: z.number().int().optional().openapi({ description: "Invoices it has discounted." }),
    ends_at: z
      .string()
      .nullable()
      .optional()
      .openapi({ description: "repeating: invoices from then on are not discounted." }),
    remaining_amount: z.string().nullable().optional(),
    status: z.enum(["active", "exhausted"]),
  })
  .openapi("AppliedCoupon");

const Credits = z
  .object({
    currency: z.string(),
    balance: z.string(),
    grants: z.array(
      z.object({
        id: z.string(),
        amount: z.string(),
        balance: z.string(),
        source: z.enum(["manual", "proration", "referral", "purchase", "credit_note", "overpayment"]),
        reason: z.string().nullable(),
        expires_at: z.string().nullable(),
        created_at: z.string(),
      }),
    ),
    ledger: z.array(
      z.object({
        id: z.string(),
        grant_id: z.string(),
        invoice_id: z.string().nullable(),
        kind: z.enum(["grant", "apply", "expire", "restore"]),
        amount: z.string(),
        created_at: z.string(),
      }),
    ),
  })
  .openapi("Credits");

/** Coupons (the operator's) and their redemption by orgs; credit balances and grants. */
export function couponRoutes() {
  const router = createApiRouter();
  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/admin/coupons",
      tags: ["Admin"],
      summary: "Create a coupon (operator)",
      security: [{ operator: [] }],
      middleware: operatorOnly,
      request: { body: jsonBody(CreateCoupon) },
      responses: { 201: jsonResponse(Coupon, "The coupon"), ...errorResponses(400, 401, 403, 409) },
    }),
    async (c) => c.json(await createCoupon(c.get("deps"), c.req.valid("json")), 201),
  );
  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/admin/coupons",
      tags: ["Admin"],
      summary: "Every coupon, newest first (operator)",
      security: [{ operator: [] }],
      middleware: operatorOnly,
      responses: {
        200: jsonResponse(z.object({ data: z.array(Coupon) }), "Coupons"),
        ...errorResponses(401, 403),
      },
    }),
    async (c) => c.json({ data: await listCoupons(c.get("deps")) }, 200),
  );
  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/orgs/{org}/coupons",
      tags: ["Billing"],
      summary: "Redeem a coupon for the org",
      description:
        "Applies to the org's invoices from now on, after any coupons applied before it, for its duration. Once per org; never past the coupon's max_redemptions.",
      security: orgSecurity,
      middleware: orgAccess("billing:manage"),
      request: {
        params: OrgParam,
        body: jsonBody(z.strictObject({ code: z.string().min(1).max(64) }).openapi("RedeemCoupon")),
      },
      responses: { 201: jsonResponse(AppliedCoupon, "Redeemed"), ...errorResponses(400, 401, 403, 404, 409) },
    }),
    async (c) => {
      const access = accessOf(c);
      return c.json(
        await redeemCoupon(c.get("deps"), access.caller, access.orgId, c.req.valid("json").code),
        201,
      );
    },
  );
  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/coupons",
      tags: ["Billing"],
      summary: "The coupons the org redeemed, in the order they apply",
      security: orgSecurity,
      middleware: orgAccess("billing:read"),
      request: { params: OrgParam },
      responses: {
        200: jsonResponse(z.object({ data: z.array(AppliedCoupon) }), "Applied coupons"),
        ...errorResponses(401, 403, 404),
      },
    }),
    async (c) => c.json({ data: await orgCouponList(c.get("deps"), accessOf(c).orgId) }, 200),
  );
  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/credits",
      tags: ["Billing"],
      summary: "The org's credit balance, grants and ledger",
      security: orgSecurity,
      middleware: orgAccess("billing:read"),
      request: { params: OrgParam },
      responses: { 200: jsonResponse(Credits, "Credits"), ...errorResponses(401, 403, 404) },
    }),
    async (c) => c.json(await creditsOf(c.get("deps"), accessOf(c).orgId), 200),
  );
  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/orgs/{org}/credits",
      tags: ["Billing"],
      summary: "Grant the org credit (operator)",
      security: [{ operator: [] }],
      middleware: [orgAccess("billing:manage"), operatorOnly],
      request: { params: OrgParam, body: jsonBody(GrantCredit) },
      responses: {
        201: jsonResponse(Credits, "The org's credits after the grant"),
        ...errorResponses(400, 401, 403, 404),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const access = accessOf(c);
      await addCredit(deps, access.caller, access.orgId, c.req.valid("json"));
      return c.json(await creditsOf(deps, access.orgId), 201);
    },
  );
  return router;
}
