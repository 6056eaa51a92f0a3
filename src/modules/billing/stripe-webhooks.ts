import { and, eq, isNotNull } from "drizzle-orm";
import Stripe from "stripe";
import { checkoutSessions, invoices, providerEvents, refunds } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { fulfilCheckout } from "./checkout.js";
import { recordPayment, saveCard } from "./payments.js";
import { orgOfStripeCustomer, outcomeOfPaymentIntent, stripeClient } from "./stripe-provider.js";

/**
 * `POST /v1/billing/stripe/webhook`. The signature is checked with the SDK (300 s tolerance); each
 * event id is processed once; and no event's payload is trusted: the object it names is read again
 * from Stripe and Tollgate moves to *that* state. So events may come in any order, twice, or late —
 * a stale `payment_intent.payment_failed` after the success finds the payment succeeded and changes
 * nothing — and every handler is idempotent on its own, which is what makes a crash half-way safe.
 */

export const SIGNATURE_TOLERANCE_S = 300;

export type WebhookResult = { received: true; duplicate: boolean; handled: boolean };

export async function handleStripeWebhook(
  deps: Deps,
  rawBody: string,
  signature: string | undefined,
): Promise<WebhookResult> {
  const config = deps.env.stripe;
  if (deps.env.billingProvider !== "stripe" || !config)
    throw new AppError("not_found", "The stripe provider is not configured.");
  if (!signature) throw new AppError("invalid_signature", "The Stripe-Signature header is missing.");
  let event: Stripe.Event;
  try {
    event = await stripeClient(deps).webhooks.constructEventAsync(
      rawBody,
      signature,
      config.webhookSecret,
      // Freshness is about the delivery, not billing time: real time even under the test clock.
      SIGNATURE_TOLERANCE_S,
    );
  } catch (error) {
    throw new AppError(
      "invalid_signature",
      `The Stripe signature does not verify: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
  const db = deps.database.db;
  const [seen] = await db
    .select({ processedAt: providerEvents.processedAt })
    .from(providerEvents)
    .where(and(eq(providerEvents.id, event.id), isNotNull(providerEvents.processedAt)));
  if (seen) return { received: true, duplicate: true, handled: false };
  const object = event.data.object as { id?: string };
  await db
    .insert(providerEvents)
    .values({
      id: event.id,
      provider: "stripe",
      type: event.type,
      objectId: object.id ?? null,
      createdAt: deps.clock.now(),
    })
    .onConflictDoNothing();
  let handled: boolean;
  try {
    handled = await dispatch(deps, event);
  } catch (error) {
    // An object that is not (or no longer) on Stripe's side is nothing for us to do: acknowledged.
    if (error instanceof Stripe.errors.StripeInvalidRequestError && error.code === "resource_missing")
      handled = false;
    else if (error instanceof Stripe.errors.StripeError)
      // Stripe could not be asked: not processed, so Stripe delivers it again.
      throw new AppError(
        "unavailable",
        `Stripe did not answer while processing ${event.id}: ${error.message}`,
      );
    else throw error;
  }
  await db
    .update(providerEvents)
    .set({ processedAt: deps.clock.now() })
    .where(eq(providerEvents.id, event.id));
  return { received: true, duplicate: false, handled };
}

async function dispatch(deps: Deps, event: Stripe.Event): Promise<boolean> {
  switch (event.type) {
    case "checkout.session.completed":
    case "checkout.session.async_payment_succeeded":
      await syncStripeCheckout(deps, event.data.object.id);
      return true;
    case "payment_intent.succeeded":
    case "payment_intent.payment_failed":
    case "payment_intent.canceled":
    case "payment_intent.requires_action":
      await syncPaymentIntent(deps, event.data.object.id);
      return true;
    case "refund.updated":
    case "refund.failed":
      await syncRefund(deps, event.data.object.id);
      return true;
    case "charge.refund.updated":
      await syncRefund(deps, (event.data.object as { id: string }).id);
      return true;
    case "customer.updated":
      await syncCustomerCard(deps, event.data.object.id);
      return true;
    case "payment_method.attached":
    case "payment_method.detached":
    case "payment_method.updated": {
      const customer = event.data.object.customer ?? event.data.previous_attributes?.customer;
      const id = typeof customer === "string" ? customer : customer?.id;
      if (id) await syncCustomerCard(deps, id);
      return Boolean(id);
    }
    case "setup_intent.succeeded": {
      const customer = event.data.object.customer;
      const id = typeof customer === "string" ? customer : customer?.id;
      if (id) await syncCustomerCard(deps, id);
      return Boolean(id);
    }
    default:
      // Acknowledged, so Stripe stops resending it; Tollgate has nothing to do with it.
      return false;
  }
}

/** Saves a Stripe card as the org's payment method. */
async function saveStripeCard(deps: Deps, orgId: string, paymentMethod: string | Stripe.PaymentMethod) {
  const method =
    typeof paymentMethod === "string"
      ? await stripeClient(deps).paymentMethods.retrieve(paymentMethod)
      : paymentMethod;
  await saveCard(deps, orgId, {
    provider: "stripe",
    brand: method.card?.brand ?? method.type,
    last4: method.card?.last4 ?? "",
    reference: method.id,
  });
}

/**
 * A Checkout Session completed on Stripe: its card becomes the org's (and the customer's default),
 * then the change it was opened for applies and is charged — once, however many times this runs.
 * Also called when the customer comes back to the success page, which may be before the webhook.
 */
export async function syncStripeCheckout(deps: Deps, stripeSessionId: string) {
  const stripe = stripeClient(deps);
  const session = await stripe.checkout.sessions.retrieve(stripeSessionId, { expand: ["setup_intent"] });
  const checkoutId = session.client_reference_id;
  if (session.status !== "complete" || !checkoutId) return { status: session.status ?? "open" };
  const [row] = await deps.database.db
    .select()
    .from(checkoutSessions)
    .where(and(eq(checkoutSessions.id, checkoutId), eq(checkoutSessions.providerReference, session.id)));
  if (!row) return { status: "unknown" as const };
  if (row.status === "completed") return { status: "complete" as const, invoiceId: row.invoiceId };
  const intent = session.setup_intent as Stripe.SetupIntent | string | null;
  const paymentMethod = typeof intent === "string" ? undefined : intent?.payment_method;
  if (!paymentMethod) return { status: "open" as const };
  await saveStripeCard(deps, row.orgId, paymentMethod);
  const customer = typeof session.customer === "string" ? session.customer : session.customer?.id;
  if (customer)
    await stripe.customers.update(customer, {
      invoice_settings: {
        default_payment_method: typeof paymentMethod === "string" ? paymentMethod : paymentMethod.id,
      },
    });
  try {
    const done = await fulfilCheckout(deps, checkoutId, { allowLate: true });
    return { status: "complete" as const, invoiceId: done.invoiceId };
  } catch (error) {
    // Fulfilled meanwhile by the other path (the return page or another delivery).
    if (error instanceof AppError && error.code === "conflict") return { status: "complete" as const };
    throw error;
  }
}

/**
 * A PaymentIntent for one of Tollgate's invoices settled: writes the attempt down if the charge's own
 * answer was lost (the process died after charging), or corrects it (a failure later succeeded).
 */
export async function syncPaymentIntent(deps: Deps, paymentIntentId: string) {
  const intent = await stripeClient(deps).paymentIntents.retrieve(paymentIntentId);
  const invoiceId = intent.metadata?.tollgate_invoice;
  const idempotencyKey = intent.metadata?.tollgate_attempt;
  const outcome = outcomeOfPaymentIntent(intent);
  if (!invoiceId || !idempotencyKey || !outcome) return;
  const [invoice] = await deps.database.db
    .select({ id: invoices.id })
    .from(invoices)
    .where(eq(invoices.id, invoiceId));
  if (!invoice) return;
  await recordPayment(deps, invoiceId, { idempotencyKey, outcome });
}

/** The customer's default card changed (in the portal): it becomes the org's card. */
export async function syncCustomerCard(deps: Deps, customerId: string) {
  const orgId = await orgOfStripeCustomer(deps, customerId);
  if (!orgId) return;
  const customer = await stripeClient(deps).customers.retrieve(customerId, {
    expand: ["invoice_settings.default_payment_method"],
  });
  if (customer.deleted) return;
  const method = customer.invoice_settings?.default_payment_method;
  if (method) await saveStripeCard(deps, orgId, method);
}

/** A refund failed or was canceled at the bank after Stripe accepted it: Tollgate's refund says so. */
export async function syncRefund(deps: Deps, refundId: string) {
  const refund = await stripeClient(deps).refunds.retrieve(refundId);
  if (refund.status !== "failed" && refund.status !== "canceled") return;
  await deps.database.db
    .update(refunds)
    .set({
      status: "failed",
      failureCode: refund.failure_reason ?? refund.status,
      updatedAt: deps.clock.now(),
    })
    .where(and(eq(refunds.reference, refund.id), eq(refunds.provider, "stripe")));
}
