import { type paymentMethods, portalSessions } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { secretId } from "../../lib/ids.js";
import { stripeProvider } from "./stripe-provider.js";

/**
 * The payment provider: who holds the card and moves the money. Tollgate keeps the subscription, the
 * invoices and the dunning schedule itself; a provider only charges an invoice's amount, hosts the
 * page where a card is entered, and hosts the portal where it is changed. Two implementations:
 * `local` (built-in test mode, offline) and `stripe` (the official SDK), chosen by
 * TOLLGATE_BILLING_PROVIDER.
 */

export type PaymentMethodRow = typeof paymentMethods.$inferSelect;

export interface ChargeRequest {
  orgId: string;
  invoiceId: string;
  invoiceNumber: string | null;
  /** The amount due, a decimal string in the currency's major unit ("19.00"). */
  amount: string;
  currency: string;
  /** One per attempt (`invoice:<id>:attempt:<n>`): the same attempt sent twice is charged once. */
  idempotencyKey: string;
  method: PaymentMethodRow;
}

export type ChargeOutcome =
  | { status: "succeeded"; reference: string | null }
  | { status: "failed"; reference: string | null; failureCode: string };

export interface RefundRequest {
  /** The provider's reference of the payment refunded (Stripe: the PaymentIntent). */
  paymentReference: string | null;
  amount: string;
  currency: string;
  /** `refund:<credit note>`: a refund asked for twice is made once. */
  idempotencyKey: string;
}

export type RefundOutcome =
  | { status: "succeeded"; reference: string | null }
  | { status: "failed"; reference: string | null; failureCode: string };

export interface CheckoutRequest {
  checkoutId: string;
  orgId: string;
  currency: string;
  expiresAt: Date;
}

export interface PaymentProvider {
  readonly name: "local" | "stripe";
  /** Charges the card on file. Throws (`unavailable`) when the provider cannot be reached. */
  charge(deps: Deps, request: ChargeRequest): Promise<ChargeOutcome>;
  /** Sends money back for a payment. Throws (`unavailable`) when the provider cannot be reached. */
  refund(deps: Deps, request: RefundRequest): Promise<RefundOutcome>;
  /** Where the customer enters a card for a checkout, and the provider's id for that page. */
  startCheckout(deps: Deps, request: CheckoutRequest): Promise<{ url: string; reference: string | null }>;
  /** Where the customer changes the card and sees the invoices. */
  portalUrl(deps: Deps, orgId: string, returnUrl: string | null): Promise<string>;
}

export const publicBase = (deps: Deps) => deps.env.publicUrl.replace(/\/$/, "");

/** Tollgate's own test mode: the card's behaviour is the test card's (see payments.ts). */
export const localProvider: PaymentProvider = {
  name: "local",
  async charge(_deps, request) {
    return request.method.reference === "succeed"
      ? { status: "succeeded", reference: `local_${request.method.last4}` }
      : { status: "failed", reference: `local_${request.method.last4}`, failureCode: "card_declined" };
  },
  async refund(_deps, request) {
    return { status: "succeeded", reference: `local_refund_${request.idempotencyKey}` };
  },
  async startCheckout(deps, request) {
    return { url: `${publicBase(deps)}/checkout/${request.checkoutId}`, reference: null };
  },
  async portalUrl(deps, orgId, returnUrl) {
    // The local portal is a Tollgate page (portal.ts) behind a short-lived session id.
    const id = secretId("portal");
    const now = deps.clock.now();
    await deps.database.db
      .insert(portalSessions)
      .values({ id, orgId, returnUrl, expiresAt: new Date(now.getTime() + PORTAL_TTL_MS), createdAt: now });
    return `${publicBase(deps)}/portal/${id}`;
  },
};

/** A local portal link works for an hour. */
export const PORTAL_TTL_MS = 3_600_000;

/** The provider TOLLGATE_BILLING_PROVIDER chose. */
export function providerOf(deps: Deps): PaymentProvider {
  return deps.env.billingProvider === "stripe" ? stripeProvider(deps) : localProvider;
}
