import { eq } from "drizzle-orm";
import Stripe from "stripe";
import { orgs, providerCustomers } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { Money, minorUnitDigits } from "./money.js";
import type { ChargeOutcome, PaymentProvider } from "./provider.js";

/**
 * The `stripe` provider, on the official SDK. Stripe holds the customer and the card; Tollgate's
 * invoices stay the source of truth and are collected as PaymentIntents, each attempt under its own
 * idempotency key, so a retried request or a billing run re-run after a crash never charges twice.
 * Cards are entered on Stripe Checkout (setup mode: the card is saved, then the change's invoice is
 * charged to it like any other) and changed in Stripe's customer portal.
 */

const clients = new WeakMap<Deps["env"], Stripe>();

/** One SDK client per configuration; STRIPE_API_BASE points it at a local stand-in. */
export function stripeClient(deps: Deps): Stripe {
  const config = deps.env.stripe;
  if (!config) throw new AppError("not_found", "The stripe provider is not configured.");
  let client = clients.get(deps.env);
  if (!client) {
    const base = config.apiBase ? new URL(config.apiBase) : undefined;
    client = new Stripe(config.secretKey, {
      // POSTs are retried with the SDK's own idempotency keys, ours where we pass one.
      maxNetworkRetries: 2,
      timeout: 20_000,
      telemetry: false,
      appInfo: { name: "Tollgate" },
      ...(base
        ? {
            host: base.hostname,
            port: base.port || (base.protocol === "https:" ? 443 : 80),
            protocol: base.protocol === "https:" ? "https" : "http",
          }
        : {}),
    });
    clients.set(deps.env, client);
  }
  return client;
}

/** Stripe could not be reached or answered with a server error: nothing was decided, try again. */
function unavailable(error: unknown): never {
  if (error instanceof AppError) throw error;
  const message = error instanceof Error ? error.message : String(error);
  throw new AppError("unavailable", `The payment provider did not answer: ${message}`);
}

/** The org's Stripe customer, created on first need under an idempotency key (two callers, one customer). */
export async function stripeCustomerOf(deps: Deps, orgId: string): Promise<string> {
  const db = deps.database.db;
  const [known] = await db
    .select({ id: providerCustomers.customerId })
    .from(providerCustomers)
    .where(eq(providerCustomers.orgId, orgId));
  if (known) return known.id;
  const [org] = await db.select({ name: orgs.name }).from(orgs).where(eq(orgs.id, orgId));
  if (!org) throw new AppError("not_found", `No org ${orgId}.`);
  const customer = await stripeClient(deps)
    .customers.create(
      { name: org.name, metadata: { tollgate_org: orgId } },
      { idempotencyKey: `tollgate:customer:${orgId}` },
    )
    .catch(unavailable);
  await db
    .insert(providerCustomers)
    .values({ orgId, provider: "stripe", customerId: customer.id, createdAt: deps.clock.now() })
    .onConflictDoNothing();
  const [row] = await db
    .select({ id: providerCustomers.customerId })
    .from(providerCustomers)
    .where(eq(providerCustomers.orgId, orgId));
  return row?.id ?? customer.id;
}

/** The org a Stripe customer belongs to, if it is one of ours. */
export async function orgOfStripeCustomer(deps: Deps, customerId: string): Promise<string | undefined> {
  const [row] = await deps.database.db
    .select({ orgId: providerCustomers.orgId })
    .from(providerCustomers)
    .where(eq(providerCustomers.customerId, customerId));
  return row?.orgId;
}

/** An amount in the currency's smallest unit, as Stripe takes it ("19.00" USD → 1900, "500" JPY → 500). */
export function toMinorUnits(amount: string, currency: string): number {
  const minor = new Money(amount).times(new Money(10).pow(minorUnitDigits(currency)));
  if (!minor.isInteger()) throw new Error(`${amount} ${currency} is not a whole number of minor units`);
  return minor.toNumber();
}

/** What a PaymentIntent's state means for the invoice; null while it is not settled either way. */
export function outcomeOfPaymentIntent(intent: Stripe.PaymentIntent): ChargeOutcome | null {
  if (intent.status === "succeeded") return { status: "succeeded", reference: intent.id };
  if (intent.status === "requires_payment_method" || intent.status === "canceled") {
    const error = intent.last_payment_error;
    return {
      status: "failed",
      reference: intent.id,
      failureCode: error?.decline_code ?? error?.code ?? intent.cancellation_reason ?? "payment_failed",
    };
  }
  // Off-session, a card that wants the customer present fails with authentication_required.
  if (intent.status === "requires_action")
    return { status: "failed", reference: intent.id, failureCode: "authentication_required" };
  return null;
}

const base = (deps: Deps) => deps.env.publicUrl.replace(/\/$/, "");

const instances = new WeakMap<Deps["env"], PaymentProvider>();

export function stripeProvider(deps: Deps): PaymentProvider {
  let provider = instances.get(deps.env);
  if (provider) return provider;
  provider = {
    name: "stripe",
    async charge(deps, request) {
      const stripe = stripeClient(deps);
      const customer = await stripeCustomerOf(deps, request.orgId);
      try {
        const intent = await stripe.paymentIntents.create(
          {
            amount: toMinorUnits(request.amount, request.currency),
            currency: request.currency.toLowerCase(),
            customer,
            payment_method: request.method.reference,
            off_session: true,
            confirm: true,
            description: `Invoice ${request.invoiceNumber ?? request.invoiceId}`,
            metadata: {
              tollgate_org: request.orgId,
              tollgate_invoice: request.invoiceId,
              tollgate_attempt: request.idempotencyKey,
            },
          },
          { idempotencyKey: `tollgate:${request.idempotencyKey}` },
        );
        const outcome = outcomeOfPaymentIntent(intent);
        if (!outcome) unavailable(new Error(`payment ${intent.id} is ${intent.status}`));
        // Off-session, an intent that wants the customer (3-D Secure) is a failed attempt: it is
        // canceled, so it cannot succeed later behind dunning's back.
        if (intent.status === "requires_action")
          await stripe.paymentIntents
            .cancel(intent.id, {}, { idempotencyKey: `tollgate:cancel:${request.idempotencyKey}` })
            .catch((error: Error) =>
              deps.logger.warn(
                { err: error.message, payment_intent: intent.id },
                "could not cancel a payment intent",
              ),
            );
        return outcome;
      } catch (error) {
        if (error instanceof Stripe.errors.StripeCardError) {
          const raw = error.raw as { payment_intent?: { id?: string } } | undefined;
          return {
            status: "failed",
            reference: raw?.payment_intent?.id ?? null,
            failureCode: error.decline_code ?? error.code ?? "card_declined",
          };
        }
        // Refused for good (an amount below Stripe's minimum, a card detached meanwhile): a failed
        // attempt, so dunning goes on, rather than a retry that can never succeed.
        if (error instanceof Stripe.errors.StripeInvalidRequestError)
          return { status: "failed", reference: null, failureCode: error.code ?? "invalid_request" };
        unavailable(error);
      }
    },
    async refund(deps, request) {
      if (!request.paymentReference?.startsWith("pi_"))
        return { status: "failed", reference: null, failureCode: "not_a_stripe_payment" };
      try {
        const refund = await stripeClient(deps).refunds.create(
          {
            payment_intent: request.paymentReference,
            amount: toMinorUnits(request.amount, request.currency),
            metadata: { tollgate_refund: request.idempotencyKey },
          },
          { idempotencyKey: `tollgate:${request.idempotencyKey}` },
        );
        // A card refund is `pending` until the bank has it; it is on its way, and Tollgate is done.
        if (refund.status === "failed" || refund.status === "canceled")
          return {
            status: "failed",
            reference: refund.id,
            failureCode: refund.failure_reason ?? refund.status,
          };
        return { status: "succeeded", reference: refund.id };
      } catch (error) {
        if (error instanceof Stripe.errors.StripeInvalidRequestError)
          return { status: "failed", reference: null, failureCode: error.code ?? "invalid_request" };
        unavailable(error);
      }
    },
    async startCheckout(deps, request) {
      const customer = await stripeCustomerOf(deps, request.orgId);
      // Stripe keeps a Checkout Session open for 30 minutes to 24 hours.
      // In real time: Stripe checks it against its own clock, not the test clock.
      const nowS = Math.floor(Date.now() / 1000);
      const ttlS = Math.floor((request.expiresAt.getTime() - deps.clock.nowMs()) / 1000);
      const expiresS = nowS + Math.min(Math.max(ttlS, 1800), 86_400);
      const session = await stripeClient(deps)
        .checkout.sessions.create(
          {
            mode: "setup",
            customer,
            currency: request.currency.toLowerCase(),
            client_reference_id: request.checkoutId,
            metadata: { tollgate_org: request.orgId, tollgate_checkout: request.checkoutId },
            success_url: `${base(deps)}/checkout/${request.checkoutId}/return`,
            cancel_url: `${base(deps)}/checkout/${request.checkoutId}/return?canceled=1`,
            expires_at: expiresS,
          },
          { idempotencyKey: `tollgate:checkout:${request.checkoutId}` },
        )
        .catch(unavailable);
      if (!session.url) unavailable(new Error(`checkout session ${session.id} has no url`));
      return { url: session.url, reference: session.id };
    },
    async portalUrl(deps, orgId, returnUrl) {
      const customer = await stripeCustomerOf(deps, orgId);
      const session = await stripeClient(deps)
        .billingPortal.sessions.create({ customer, return_url: returnUrl ?? `${base(deps)}/` })
        .catch(unavailable);
      return session.url;
    },
  };
  instances.set(deps.env, provider);
  return provider;
}
