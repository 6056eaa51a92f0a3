import { and, count, eq, gt, inArray, lte, notExists, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { creditNotes, invoices, paymentMethods, payments, subscriptions } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { newId } from "../../lib/ids.js";
import { subscriptionChanged } from "../plans/subscriptions.js";
import { emitEvent } from "../webhooks/events.js";
import { grantCredit } from "./adjustments.js";
import { paymentFailedEmail, receiptEmail } from "./emails.js";
import { invoiceEventData } from "./events.js";
import { Money } from "./money.js";
import { type ChargeOutcome, providerOf } from "./provider.js";

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

/** Saves (or replaces) the org's card: a test card with the local provider. */
export async function savePaymentMethod(deps: Deps, orgId: string, cardNumber: string) {
  const card = testCard(cardNumber);
  await saveCard(deps, orgId, {
    provider: "local",
    brand: card.brand,
    last4: card.last4,
    reference: card.outcome,
  });
  return card;
}

/** Saves (or replaces) the org's card as the provider knows it (Stripe: a `pm_…`). */
export async function saveCard(
  deps: Deps,
  orgId: string,
  card: { provider: "local" | "stripe"; brand: string; last4: string; reference: string },
) {
  const createdAt = deps.clock.now();
  await deps.database.db
    .insert(paymentMethods)
    .values({ orgId, ...card, createdAt })
    .onConflictDoUpdate({ target: paymentMethods.orgId, set: { ...card, createdAt } });
}

/** The org's card, if it has one the active provider can charge. */
export async function paymentMethodOf(deps: Deps, orgId: string) {
  const [row] = await deps.database.db.select().from(paymentMethods).where(eq(paymentMethods.orgId, orgId));
  return row?.provider === providerOf(deps).name ? row : undefined;
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

const attemptKey = (invoiceId: string, attempt: number) => `invoice:${invoiceId}:attempt:${attempt}`;

/**
 * Charges what is left to pay on an invoice to the org's card. A finalized invoice only; a paid, void
 * or fully credited invoice is not due. The attempt is written down first, as a `pending` payment
 * with its amount and idempotency key, under the invoice's lock: while it is pending, credit notes and
 * voids wait (409), so the amount charged is the amount recorded. Then the provider is asked, under
 * the same key, and the answer written down. A process that dies in between leaves the attempt
 * pending; the billing run sends it again, and the provider answers with the first result.
 */
export async function collectInvoice(deps: Deps, invoiceId: string): Promise<CollectResult> {
  const db = deps.database.db;
  const [invoice] = await db.select().from(invoices).where(eq(invoices.id, invoiceId));
  if (invoice?.status !== "finalized") return { status: "not_due" };
  const method = await paymentMethodOf(deps, invoice.orgId);
  if (!method) return { status: "no_payment_method" };
  const provider = providerOf(deps);
  const attempt = await db.transaction(async (tx) => {
    const [locked] = await tx.select().from(invoices).where(eq(invoices.id, invoiceId)).for("update");
    if (locked?.status !== "finalized") return null;
    const previous = await tx.select().from(payments).where(eq(payments.invoiceId, invoiceId));
    // An attempt already under way (or cut off by a crash) is sent again as it was.
    const pending = previous.find((p) => p.status === "pending");
    if (pending) return pending;
    const remaining = await amountRemaining(tx, locked);
    if (!remaining.greaterThan(0)) return null;
    const [row] = await tx
      .insert(payments)
      .values({
        id: newId("payment"),
        orgId: locked.orgId,
        invoiceId,
        provider: provider.name,
        amount: remaining.toFixed(),
        currency: locked.currency,
        status: "pending",
        paymentMethod: method.reference,
        idempotencyKey: attemptKey(invoiceId, previous.length + 1),
        createdAt: deps.clock.now(),
      })
      .returning();
    return row ?? null;
  });
  if (!attempt) return { status: "not_due" };
  const outcome = await provider.charge(deps, {
    orgId: invoice.orgId,
    invoiceId: invoice.id,
    invoiceNumber: invoice.number,
    amount: attempt.amount,
    currency: attempt.currency,
    idempotencyKey: attempt.idempotencyKey,
    // Sent again, an attempt charges the card it named first: the same key with another card is
    // a different request, which Stripe refuses.
    method: { ...method, reference: attempt.paymentMethod ?? method.reference },
  });
  return recordPayment(deps, invoice.id, { idempotencyKey: attempt.idempotencyKey, outcome });
}

/**
 * Collects an invoice where the caller has already committed its own work (a period closed, a change
 * applied): a provider that cannot be reached leaves the invoice finalized and uncollected — the next
 * billing run charges it, under the same attempt's idempotency key — rather than failing what is done.
 */
export async function collectAfterCommit(
  deps: Deps,
  invoiceId: string,
): Promise<CollectResult | { status: "deferred" }> {
  try {
    return await collectInvoice(deps, invoiceId);
  } catch (error) {
    deps.logger.warn(
      { err: (error as Error).message, invoice: invoiceId },
      "collecting an invoice failed; the billing run retries it",
    );
    return { status: "deferred" };
  }
}

/** The last unpaid invoice settled (paid, voided, credited): a past_due subscription is in good standing again. */
export async function clearPastDue(tx: Database, subscriptionId: string, now: Date) {
  const [unpaid] = await tx
    .select({ n: count() })
    .from(invoices)
    .where(and(eq(invoices.subscriptionId, subscriptionId), eq(invoices.status, "finalized")));
  if ((unpaid?.n ?? 0) === 0)
    await tx
      .update(subscriptions)
      .set({ status: "active", pastDueSince: null, updatedAt: now })
      .where(and(eq(subscriptions.id, subscriptionId), eq(subscriptions.status, "past_due")));
}

/**
 * What is left to pay on an invoice: its amount due, less what credit notes took off it while it was
 * open (the invoice itself never changes once finalized).
 */
export async function amountRemaining(db: Database, invoice: { id: string; amountDue: string }) {
  const [row] = await db
    .select({ credited: sql<string | null>`sum(${creditNotes.outstandingAmount})` })
    .from(creditNotes)
    .where(eq(creditNotes.invoiceId, invoice.id));
  return new Money(invoice.amountDue).minus(row?.credited ?? 0);
}

/**
 * Writes down an attempt's outcome, once: the charge above, or the provider telling us later (a
 * webhook re-read from Stripe). A success marks the invoice paid with the attempt's amount and, with
 * the last unpaid invoice paid, the subscription active again; a failure makes it past_due and sets
 * the invoice's next attempt on the catalog's dunning schedule, counted from the first failure. An
 * attempt written as failed that the provider later reports succeeded (a customer who finished 3-D
 * Secure late) is corrected; if the invoice was settled meanwhile, that money becomes credit rather
 * than being lost.
 */
export async function recordPayment(
  deps: Deps,
  invoiceId: string,
  attempt: { idempotencyKey: string; outcome: ChargeOutcome },
): Promise<CollectResult> {
  const { outcome, idempotencyKey } = attempt;
  const now = deps.clock.now();
  const result = await deps.database.db.transaction(async (tx) => {
    // The invoice row is the lock: two collections of one invoice serialise here.
    const [locked] = await tx.select().from(invoices).where(eq(invoices.id, invoiceId)).for("update");
    if (!locked) return null;
    const previous = await tx
      .select()
      .from(payments)
      .where(eq(payments.invoiceId, invoiceId))
      .orderBy(payments.createdAt, payments.id);
    const same = previous.find((p) => p.idempotencyKey === idempotencyKey);
    if (!same) return null;
    const correcting = same.status === "failed" && outcome.status === "succeeded";
    if (same.status !== "pending" && !correcting) return null;
    await tx
      .update(payments)
      .set({
        status: outcome.status,
        failureCode: outcome.status === "failed" ? outcome.failureCode : null,
        reference: outcome.reference ?? same.reference,
      })
      .where(eq(payments.id, same.id));
    if (outcome.status === "succeeded") {
      if (locked.status !== "finalized") {
        // Paid for twice (a late success after another attempt, or a credit note, settled it): the
        // money is the org's, as credit for later invoices, and the operator can refund it.
        await grantCredit(tx, deps, locked.orgId, {
          amount: new Money(same.amount),
          source: "overpayment",
          reason: `Payment ${same.id} on ${locked.number} after it was settled`,
          expiresAt: null,
        });
        deps.logger.warn(
          { invoice: invoiceId, payment: same.id },
          "a payment arrived for a settled invoice: credited",
        );
        return { status: "paid" as const, paymentId: same.id, orgId: locked.orgId };
      }
      await tx
        .update(invoices)
        .set({ status: "paid", amountPaid: same.amount, paidAt: now, nextAttemptAt: null, updatedAt: now })
        .where(eq(invoices.id, invoiceId));
      if (locked.subscriptionId) await clearPastDue(tx, locked.subscriptionId, now);
      await emitEvent(deps, tx, {
        orgId: locked.orgId,
        type: "invoice.paid",
        data: {
          ...invoiceEventData(locked, { status: "paid", amountPaid: same.amount, paidAt: now }),
          payment_id: same.id,
        },
      });
      return { status: "paid" as const, paymentId: same.id, orgId: locked.orgId };
    }
    if (locked.status !== "finalized") return null;
    // Dunning: retries are counted from the first failure, on the catalog's schedule.
    const failures = previous.filter((p) => p.status === "failed" && p.id !== same.id);
    const firstFailureMs = failures[0]?.createdAt.getTime() ?? now.getTime();
    const nextRetryDays = deps.catalog.dunning.retry_days[failures.length];
    const nextAttemptAt =
      nextRetryDays === undefined ? null : new Date(firstFailureMs + nextRetryDays * 86_400_000);
    await tx.update(invoices).set({ nextAttemptAt, updatedAt: now }).where(eq(invoices.id, invoiceId));
    if (locked.subscriptionId)
      await tx
        .update(subscriptions)
        .set({ status: "past_due", pastDueSince: now, updatedAt: now })
        .where(
          and(
            eq(subscriptions.id, locked.subscriptionId),
            inArray(subscriptions.status, ["active", "trialing"]),
          ),
        );
    await emitEvent(deps, tx, {
      orgId: locked.orgId,
      type: "invoice.payment_failed",
      data: {
        ...invoiceEventData(locked),
        payment_id: same.id,
        attempt: failures.length + 1,
        failure_code: outcome.failureCode,
        next_attempt_at: nextAttemptAt?.toISOString() ?? null,
      },
    });
    return {
      status: "failed" as const,
      paymentId: same.id,
      orgId: locked.orgId,
      failureCode: outcome.failureCode,
      nextAttemptAt,
      attempt: failures.length + 1,
    };
  });
  if (result === null) return { status: "not_due" };
  // The subscription's standing may have changed: every process's plan cache hears of it.
  await subscriptionChanged(deps, result.orgId);
  if (result.status === "paid") {
    await receiptEmail(deps, invoiceId);
    return { status: "paid", paymentId: result.paymentId };
  }
  await paymentFailedEmail(deps, invoiceId, result.nextAttemptAt);
  const { orgId: _orgId, ...failed } = result;
  return failed;
}

/** A payment attempt under way blocks changes to what the invoice asks for (credit notes, voids). */
export async function assertNoPaymentInFlight(tx: Database, invoiceId: string) {
  const [pending] = await tx
    .select({ id: payments.id })
    .from(payments)
    .where(and(eq(payments.invoiceId, invoiceId), eq(payments.status, "pending")));
  if (pending)
    throw new AppError(
      "conflict",
      "A payment of this invoice is being processed; try again once it has succeeded or failed.",
    );
}

/**
 * Invoices the billing run collects without a dunning date: finalized ones that were never attempted
 * (the process died between writing an invoice and charging it), and attempts left pending (it died
 * while charging) since `olderThan`.
 */
export async function uncollectedInvoices(deps: Deps, olderThan: Date): Promise<string[]> {
  const db = deps.database.db;
  const never = await db
    .select({ id: invoices.id })
    .from(invoices)
    .where(
      and(
        eq(invoices.status, "finalized"),
        gt(invoices.amountDue, "0"),
        notExists(db.select({ one: sql`1` }).from(payments).where(eq(payments.invoiceId, invoices.id))),
      ),
    )
    .limit(1000);
  const stuck = await db
    .selectDistinct({ id: payments.invoiceId })
    .from(payments)
    .where(and(eq(payments.status, "pending"), lte(payments.createdAt, olderThan)))
    .limit(1000);
  return [...new Set([...never, ...stuck].map((r) => r.id))];
}
