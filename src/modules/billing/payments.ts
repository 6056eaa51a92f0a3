import { and, count, eq, gt, inArray, isNull, notExists, sql } from "drizzle-orm";
import { invoices, paymentMethods, payments, subscriptions } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { newId } from "../../lib/ids.js";
import { subscriptionChanged } from "../plans/subscriptions.js";
import { paymentFailedEmail } from "./emails.js";
import { Money } from "./money.js";

/**
 * Collecting invoices. The `local` provider is Tollgate's built-in test mode: it keeps a test card per
 * org and answers as Stripe's test cards do — 4242 4242 4242 4242 pays, 4000 0000 0000 0002 is
 * declined — so the whole journey (checkout, renewals, failed payments) works offline. Each attempt
 * is a `payments` row under a unique idempotency key, written in the same transaction that marks the
 * invoice paid: an invoice is never charged twice.
 */

export const TEST_CARDS: Record<string, { brand: string; outcome: "succeed" | "decline" }> = {
  "4242424242424242": { brand: "visa", outcome: "succeed" },
  "4000000000000002": { brand: "visa", outcome: "decline" },
};

/** The test card a number names (spaces and dashes ignored), or a 400 that says which ones exist. */
export function testCard(cardNumber: string) {
  const digits = cardNumber.replace(/[\s-]/g, "");
  const card = TEST_CARDS[digits];
  if (!card) {
    throw new AppError("validation_failed", "This is test mode: use a test card.", {
      errors: [
        {
          field: "card_number",
          message: "use 4242 4242 4242 4242 (pays) or 4000 0000 0000 0002 (is declined)",
          code: "unknown_test_card",
          location: "body",
        },
      ],
    });
  }
  return { ...card, last4: digits.slice(-4) };
}

/** Saves (or replaces) the org's card. */
export async function savePaymentMethod(deps: Deps, orgId: string, cardNumber: string) {
  const card = testCard(cardNumber);
  const row = {
    orgId,
    provider: "local" as const,
    brand: card.brand,
    last4: card.last4,
    reference: card.outcome,
    createdAt: deps.clock.now(),
  };
  await deps.database.db
    .insert(paymentMethods)
    .values(row)
    .onConflictDoUpdate({
      target: paymentMethods.orgId,
      set: { brand: row.brand, last4: row.last4, reference: row.reference, createdAt: row.createdAt },
    });
  return card;
}

export async function paymentMethodOf(deps: Deps, orgId: string) {
  const [row] = await deps.database.db.select().from(paymentMethods).where(eq(paymentMethods.orgId, orgId));
  return row;
}

export type CollectResult =
  | { status: "paid"; paymentId: string }
  | {
      status: "failed";
      paymentId: string;
      failureCode: string;
      /** The dunning schedule's next attempt; null when the retries are used up. */
      nextAttemptAt: Date | null;
      attempt: number;
    }
  | { status: "no_payment_method" }
  | { status: "not_due" };

/**
 * Charges an invoice's amount due to the org's card. A finalized invoice only; a paid, void or
 * zero invoice is not due. A failed payment makes the subscription past_due.
 */
export async function collectInvoice(deps: Deps, invoiceId: string): Promise<CollectResult> {
  const db = deps.database.db;
  const [invoice] = await db.select().from(invoices).where(eq(invoices.id, invoiceId));
  if (invoice?.status !== "finalized" || !new Money(invoice.amountDue).greaterThan(0))
    return { status: "not_due" };
  const method = await paymentMethodOf(deps, invoice.orgId);
  if (!method) return { status: "no_payment_method" };
  const previous = await db
    .select({ status: payments.status, createdAt: payments.createdAt })
    .from(payments)
    .where(eq(payments.invoiceId, invoice.id))
    .orderBy(payments.createdAt);
  const attempt = previous.length + 1;
  const succeeded = method.reference === "succeed";
  const paymentId = newId("payment");
  const now = deps.clock.now();
  // Dunning: retries are counted from the first failure, on the catalog's schedule.
  const failures = previous.filter((p) => p.status === "failed");
  const firstFailureMs = failures[0]?.createdAt.getTime() ?? now.getTime();
  const retryDays = deps.catalog.dunning.retry_days;
  const nextRetryDays = retryDays[failures.length];
  const nextAttemptAt =
    nextRetryDays === undefined ? null : new Date(firstFailureMs + nextRetryDays * 86_400_000);
  const outcome = await db.transaction(async (tx) => {
    // The invoice row is the lock: two collections of one invoice serialise here.
    const [locked] = await tx.select().from(invoices).where(eq(invoices.id, invoice.id)).for("update");
    if (locked?.status !== "finalized") return null;
    const inserted = await tx
      .insert(payments)
      .values({
        id: paymentId,
        orgId: invoice.orgId,
        invoiceId: invoice.id,
        provider: "local",
        amount: locked.amountDue,
        currency: locked.currency,
        status: succeeded ? "succeeded" : "failed",
        failureCode: succeeded ? null : "card_declined",
        reference: `local_${method.last4}`,
        idempotencyKey: `invoice:${invoice.id}:attempt:${attempt}`,
        createdAt: now,
      })
      .onConflictDoNothing({ target: payments.idempotencyKey })
      .returning({ id: payments.id });
    if (inserted.length === 0) return null;
    if (succeeded) {
      await tx
        .update(invoices)
        .set({
          status: "paid",
          amountPaid: locked.amountDue,
          paidAt: now,
          nextAttemptAt: null,
          updatedAt: now,
        })
        .where(eq(invoices.id, invoice.id));
      // The last unpaid invoice paid: a past_due subscription is in good standing again.
      if (invoice.subscriptionId) {
        const [unpaid] = await tx
          .select({ n: count() })
          .from(invoices)
          .where(and(eq(invoices.subscriptionId, invoice.subscriptionId), eq(invoices.status, "finalized")));
        if ((unpaid?.n ?? 0) === 0)
          await tx
            .update(subscriptions)
            .set({ status: "active", pastDueSince: null, updatedAt: now })
            .where(and(eq(subscriptions.id, invoice.subscriptionId), eq(subscriptions.status, "past_due")));
      }
    } else {
      await tx.update(invoices).set({ nextAttemptAt, updatedAt: now }).where(eq(invoices.id, invoice.id));
    }
    if (!succeeded && invoice.subscriptionId) {
      await tx
        .update(subscriptions)
        .set({ status: "past_due", pastDueSince: now, updatedAt: now })
        .where(
          and(
            eq(subscriptions.id, invoice.subscriptionId),
            inArray(subscriptions.status, ["active", "trialing"]),
          ),
        );
    }
    return succeeded;
  });
  if (outcome === null) return { status: "not_due" };
  // The subscription's standing may have changed: every process's plan cache hears of it.
  await subscriptionChanged(deps, invoice.orgId);
  if (!outcome) await paymentFailedEmail(deps, invoice.id, nextAttemptAt);
  return outcome
    ? { status: "paid", paymentId }
    : { status: "failed", paymentId, failureCode: "card_declined", nextAttemptAt, attempt };
}

/**
 * Finalized invoices with something due that were never attempted (the process died between writing
 * an invoice and charging it): the billing run collects them.
 */
export async function uncollectedInvoices(deps: Deps): Promise<string[]> {
  const rows = await deps.database.db
    .select({ id: invoices.id })
    .from(invoices)
    .where(
      and(
        eq(invoices.status, "finalized"),
        gt(invoices.amountDue, "0"),
        isNull(invoices.voidedAt),
        notExists(
          deps.database.db.select({ one: sql`1` }).from(payments).where(eq(payments.invoiceId, invoices.id)),
        ),
      ),
    )
    .limit(1000);
  return rows.map((r) => r.id);
}
