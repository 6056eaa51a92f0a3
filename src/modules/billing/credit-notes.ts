import { z } from "@hono/zod-openapi";
import { and, asc, desc, eq, inArray, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import {
  creditLedger,
  creditNoteLines,
  creditNotes,
  invoiceLines,
  invoices,
  payments,
  refunds,
} from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { AppError, isUniqueViolation } from "../../lib/errors.js";
import { newId } from "../../lib/ids.js";
import { recordAudit } from "../audit/service.js";
import type { Caller } from "../auth/caller.js";
import { amount } from "../catalog/fields.js";
import { subscriptionChanged } from "../plans/subscriptions.js";
import { emitEvent } from "../webhooks/events.js";
import { grantCredit } from "./adjustments.js";
import { invoiceEventData } from "./events.js";
import { nextNumber } from "./invoices.js";
import { formatMoney, Money, minorUnitDigits } from "./money.js";
import { amountRemaining, assertNoPaymentInFlight, clearPastDue } from "./payments.js";
import { providerOf } from "./provider.js";

/**
 * Corrections after an invoice is final: voiding an open invoice, and credit notes. The invoice never
 * changes (database triggers see to it); a credit note is a document of its own, numbered
 * `CN-000001…` gaplessly, that takes an amount off the invoice and settles it:
 * - on an **open** invoice, by lowering what is left to pay (fully credited, the invoice is paid);
 * - on a **paid** invoice, as a **refund** to the card the invoice was paid with, or as **credit**
 *   for later invoices (a credit grant).
 * This is Stripe's model. Refunds are written before the provider is asked, under the idempotency key
 * `refund:<credit note>`, and a refund the provider did not answer is retried by the billing run.
 */

const bounded = z.union([z.string().max(40), z.number()]).pipe(amount());

export const CreateCreditNote = z
  .strictObject({
    reason: z
      .enum(["duplicate", "fraudulent", "order_change", "product_unsatisfactory", "other"])
      .default("other"),
    memo: z.string().min(1).max(500).optional(),
    lines: z
      .array(
        z.strictObject({
          invoice_line: z
            .number()
            .int()
            .min(0)
            .max(10_000)
            .optional()
            .openapi({ description: "The invoice line credited: its index in the invoice's `lines`." }),
          description: z.string().min(1).max(200).optional(),
          amount: bounded.openapi({ type: "string", example: "5.00" }),
        }),
      )
      .min(1)
      .max(100)
      .optional()
      .openapi({ description: "What is credited, line by line. Or give `amount` alone." }),
    amount: bounded.optional().openapi({
      type: "string",
      description: "A sum credited against the invoice as a whole (or the lines' total, checked).",
    }),
    idempotency_key: z
      .string()
      .min(1)
      .max(255)
      .optional()
      .openapi({ description: "Sent again with the same key, the request returns the first note." }),
    settle: z.enum(["refund", "credit"]).default("refund").openapi({
      description:
        "For a paid invoice: `refund` to the card, or `credit` for later invoices. An open invoice is always settled by lowering what is left to pay.",
    }),
  })
  .openapi("CreateCreditNote");

const invalid = (field: string, message: string, detail: string) =>
  new AppError("validation_failed", detail, {
    errors: [{ field, message, code: "invalid", location: "body" }],
  });

type CreditNoteRow = typeof creditNotes.$inferSelect;

export async function creditNoteOut(db: Database, rows: CreditNoteRow[]) {
  const ids = rows.map((r) => r.id);
  const [lines, refundRows] = ids.length
    ? await Promise.all([
        db
          .select()
          .from(creditNoteLines)
          .where(inArray(creditNoteLines.creditNoteId, ids))
          .orderBy(asc(creditNoteLines.position)),
        db.select().from(refunds).where(inArray(refunds.creditNoteId, ids)),
      ])
    : [[], []];
  return rows.map((row) => {
    const c = row.currency;
    const refund = refundRows.find((r) => r.creditNoteId === row.id);
    return {
      id: row.id,
      number: row.number,
      org_id: row.orgId,
      invoice_id: row.invoiceId,
      reason: row.reason,
      memo: row.memo,
      currency: c,
      amount: formatMoney(new Money(row.amount), c),
      refund_amount: formatMoney(new Money(row.refundAmount), c),
      credit_amount: formatMoney(new Money(row.creditAmount), c),
      outstanding_amount: formatMoney(new Money(row.outstandingAmount), c),
      refund_status: refund?.status ?? null,
      lines: lines
        .filter((l) => l.creditNoteId === row.id)
        .map((l) => ({
          invoice_line: l.invoiceLine,
          description: l.description,
          amount: formatMoney(new Money(l.amount), c),
        })),
      created_at: row.createdAt.toISOString(),
    };
  });
}

export async function listCreditNotes(deps: Deps, orgId: string, invoiceId?: string) {
  const db = deps.database.db;
  const rows = await db
    .select()
    .from(creditNotes)
    .where(and(eq(creditNotes.orgId, orgId), invoiceId ? eq(creditNotes.invoiceId, invoiceId) : undefined))
    .orderBy(desc(creditNotes.id))
    .limit(100);
  return creditNoteOut(db, rows);
}

export async function getCreditNote(deps: Deps, orgId: string, id: string) {
  const db = deps.database.db;
  const rows = await db
    .select()
    .from(creditNotes)
    .where(and(eq(creditNotes.id, id), eq(creditNotes.orgId, orgId)));
  const [out] = await creditNoteOut(db, rows);
  if (!out) throw new AppError("not_found", `No credit note ${id}.`);
  return out;
}

/** Checks an amount has no more decimals than the currency's minor unit ("1.005" is not dollars). */
function money(value: string, currency: string, field: string): Money {
  const m = new Money(value);
  if (!m.greaterThan(0)) throw invalid(field, "must be more than 0", "A credit must be more than zero.");
  if (m.decimalPlaces() > minorUnitDigits(currency))
    throw invalid(
      field,
      `at most ${minorUnitDigits(currency)} decimals`,
      `${value} is not an amount of ${currency}.`,
    );
  return m;
}

const keyConflict = (key: string) =>
  new AppError("conflict", `The idempotency key ${key} was used for another invoice's credit note.`);

export async function createCreditNote(
  deps: Deps,
  caller: Caller,
  orgId: string,
  invoiceId: string,
  input: z.output<typeof CreateCreditNote>,
) {
  if (!input.lines && input.amount === undefined)
    throw invalid("amount", "give amount or lines", "A credit note needs an amount or lines.");
  const key = input.idempotency_key;
  const now = deps.clock.now();
  const written = await deps.database.db
    .transaction(async (tx) => {
      // The invoice row is the lock: two credit notes (or a note and a payment) serialise here.
      const [invoice] = await tx
        .select()
        .from(invoices)
        .where(and(eq(invoices.id, invoiceId), eq(invoices.orgId, orgId)))
        .for("update");
      if (!invoice) throw new AppError("not_found", `No invoice ${invoiceId}.`);
      // A key seen before answers with its note (sent twice at once, the second waited on the first's
      // lock); a key used for another invoice is a conflict.
      if (key) {
        const [first] = await tx
          .select({ id: creditNotes.id, invoiceId: creditNotes.invoiceId })
          .from(creditNotes)
          .where(and(eq(creditNotes.orgId, orgId), eq(creditNotes.idempotencyKey, key)));
        if (first?.invoiceId === invoiceId) return { id: first.id, refundId: null, settled: false };
        if (first) throw keyConflict(key);
      }
      if (invoice.status !== "finalized" && invoice.status !== "paid")
        throw new AppError(
          "conflict",
          `Invoice ${invoice.number ?? invoiceId} is ${invoice.status}: nothing to credit.`,
        );
      await assertNoPaymentInFlight(tx, invoice.id);
      const c = invoice.currency;
      const existing = await tx.select().from(creditNotes).where(eq(creditNotes.invoiceId, invoice.id));
      const creditedLines = existing.length
        ? await tx
            .select()
            .from(creditNoteLines)
            .where(
              inArray(
                creditNoteLines.creditNoteId,
                existing.map((n) => n.id),
              ),
            )
        : [];
      const invoiceLineRows = await tx
        .select()
        .from(invoiceLines)
        .where(eq(invoiceLines.invoiceId, invoice.id));

      const lines = (
        input.lines ?? [
          { description: input.memo ?? `Credit on ${invoice.number}`, amount: input.amount as string },
        ]
      ).map((line, index) => {
        const value = money(line.amount, c, `lines[${index}].amount`);
        if (line.invoice_line === undefined) {
          if (!line.description)
            throw invalid(
              `lines[${index}].description`,
              "is required without invoice_line",
              "Say what is credited.",
            );
          return { invoiceLine: null, description: line.description, amount: value };
        }
        const target = invoiceLineRows.find((l) => l.position === line.invoice_line);
        if (!target)
          throw invalid(
            `lines[${index}].invoice_line`,
            "is not a line of this invoice",
            "No such invoice line.",
          );
        const already = creditedLines
          .filter((l) => l.invoiceLine === target.position)
          .reduce((sum, l) => sum.plus(l.amount), new Money(0));
        const left = new Money(target.amount).minus(already);
        if (value.greaterThan(left))
          throw invalid(
            `lines[${index}].amount`,
            `at most ${formatMoney(left, c)}`,
            `Only ${c} ${formatMoney(left, c)} of "${target.description}" is left to credit.`,
          );
        return {
          invoiceLine: target.position,
          description: line.description ?? target.description,
          amount: value,
        };
      });
      const total = lines.reduce((sum, l) => sum.plus(l.amount), new Money(0));
      if (input.lines && input.amount !== undefined && !money(input.amount, c, "amount").equals(total))
        throw invalid(
          "amount",
          `must equal the lines' total, ${formatMoney(total, c)}`,
          "The amount and the lines disagree.",
        );

      // How much of the invoice may still be credited: all of it, less earlier notes — except notes
      // whose refund failed, which gave nothing back (the operator settles them again as credit).
      const failedRefunds = new Set(
        existing.length
          ? (
              await tx
                .select({ note: refunds.creditNoteId })
                .from(refunds)
                .where(
                  and(
                    inArray(
                      refunds.creditNoteId,
                      existing.map((n) => n.id),
                    ),
                    eq(refunds.status, "failed"),
                  ),
                )
            ).map((r) => r.note)
          : [],
      );
      const counted = existing.filter((n) => !failedRefunds.has(n.id));
      const creditedSoFar = counted.reduce((sum, n) => sum.plus(n.amount), new Money(0));
      const creditable = new Money(invoice.total).minus(creditedSoFar);
      if (total.greaterThan(creditable))
        throw invalid(
          "amount",
          `at most ${formatMoney(creditable, c)}`,
          `Only ${c} ${formatMoney(creditable, c)} of ${invoice.number} is left to credit.`,
        );

      let outstanding = new Money(0);
      let refund = new Money(0);
      let credit = new Money(0);
      let payment: typeof payments.$inferSelect | undefined;
      if (invoice.status === "finalized") {
        // Open: what is left to pay goes down first; anything beyond it (the part paid with credits)
        // becomes credit again.
        const remaining = await amountRemaining(tx, invoice);
        outstanding = Money.min(total, remaining);
        credit = total.minus(outstanding);
      } else if (input.settle === "refund") {
        [payment] = await tx
          .select()
          .from(payments)
          .where(and(eq(payments.invoiceId, invoice.id), eq(payments.status, "succeeded")));
        const refundedSoFar = counted.reduce((sum, n) => sum.plus(n.refundAmount), new Money(0));
        const refundable = new Money(invoice.amountPaid).minus(refundedSoFar);
        if (!payment || total.greaterThan(refundable))
          throw new AppError(
            "conflict",
            `Only ${c} ${formatMoney(Money.max(refundable, 0), c)} of ${invoice.number} was paid by card and can be refunded; settle the rest as credit.`,
          );
        refund = total;
      } else credit = total;

      const id = newId("creditNote");
      const number = await nextNumber(tx, "credit_notes", "CN");
      await tx.insert(creditNotes).values({
        id,
        orgId,
        invoiceId: invoice.id,
        number,
        reason: input.reason,
        memo: input.memo ?? null,
        currency: c,
        amount: total.toFixed(),
        refundAmount: refund.toFixed(),
        creditAmount: credit.toFixed(),
        outstandingAmount: outstanding.toFixed(),
        idempotencyKey: key ?? null,
        createdAt: now,
      });
      await tx.insert(creditNoteLines).values(
        lines.map((l, position) => ({
          id: newId("creditNoteLine"),
          creditNoteId: id,
          invoiceLine: l.invoiceLine,
          description: l.description,
          amount: l.amount.toFixed(),
          position,
        })),
      );
      let refundId: string | null = null;
      if (refund.greaterThan(0) && payment) {
        refundId = newId("refund");
        await tx.insert(refunds).values({
          id: refundId,
          orgId,
          creditNoteId: id,
          paymentId: payment.id,
          provider: payment.provider,
          amount: refund.toFixed(),
          currency: c,
          status: "pending",
          idempotencyKey: `refund:${id}`,
          createdAt: now,
        });
      }
      if (credit.greaterThan(0))
        await grantCredit(tx, deps, orgId, {
          amount: credit,
          source: "credit_note",
          reason: `Credit note ${number} on ${invoice.number}`,
          expiresAt: null,
        });
      // Fully credited while open: nothing is left to pay, and dunning stops.
      const settled = invoice.status === "finalized" && !(await amountRemaining(tx, invoice)).greaterThan(0);
      if (settled) {
        await tx
          .update(invoices)
          .set({ status: "paid", paidAt: now, nextAttemptAt: null, updatedAt: now })
          .where(eq(invoices.id, invoice.id));
        if (invoice.subscriptionId) await clearPastDue(tx, invoice.subscriptionId, now);
      }
      await recordAudit(tx, {
        orgId,
        actor: caller,
        action: "credit_note.created",
        target: { type: "credit_note", id },
        metadata: { invoice: invoice.id, number, amount: total.toFixed(), settle: input.settle },
      });
      await emitEvent(deps, tx, {
        orgId,
        type: "credit_note.created",
        data: {
          id,
          org_id: orgId,
          number,
          invoice_id: invoice.id,
          invoice_number: invoice.number,
          amount: total.toFixed(),
          currency: invoice.currency,
          settle: input.settle,
          refund_id: refundId,
        },
      });
      if (settled) {
        const [paid] = await tx.select().from(invoices).where(eq(invoices.id, invoice.id));
        if (paid?.status === "paid") {
          await emitEvent(deps, tx, { orgId, type: "invoice.paid", data: invoiceEventData(paid) });
        }
      }
      return { id, refundId, settled };
    })
    .catch((error: unknown) => {
      // The same key for two invoices at once: the index lets one through.
      if (key && isUniqueViolation(error)) throw keyConflict(key);
      throw error;
    });
  if (written.settled) await subscriptionChanged(deps, orgId);
  if (written.refundId) await sendRefund(deps, written.refundId).catch(() => {});
  return getCreditNote(deps, orgId, written.id);
}

/**
 * Asks the provider for a pending refund, under its idempotency key, and writes down the answer. A
 * provider that does not answer leaves it pending for the billing run to retry.
 */
export async function sendRefund(deps: Deps, refundId: string): Promise<void> {
  const db = deps.database.db;
  const [refund] = await db.select().from(refunds).where(eq(refunds.id, refundId));
  if (refund?.status !== "pending") return;
  const [payment] = await db.select().from(payments).where(eq(payments.id, refund.paymentId));
  if (!payment) return;
  // Refunded by the provider that took the payment; a payment of a provider no longer configured
  // cannot be refunded here.
  const provider = providerOf(deps);
  if (provider.name !== refund.provider) {
    await db
      .update(refunds)
      .set({ status: "failed", failureCode: "provider_not_configured", updatedAt: deps.clock.now() })
      .where(and(eq(refunds.id, refundId), eq(refunds.status, "pending")));
    return;
  }
  try {
    const outcome = await provider.refund(deps, {
      paymentReference: payment.reference,
      amount: refund.amount,
      currency: refund.currency,
      idempotencyKey: refund.idempotencyKey,
    });
    await db
      .update(refunds)
      .set({
        status: outcome.status,
        reference: outcome.reference,
        failureCode: outcome.status === "failed" ? outcome.failureCode : null,
        updatedAt: deps.clock.now(),
      })
      .where(and(eq(refunds.id, refundId), eq(refunds.status, "pending")));
  } catch (error) {
    deps.logger.warn(
      { err: (error as Error).message, refund: refundId },
      "refund not sent; the billing run retries it",
    );
    throw error;
  }
}

/** Refunds the provider has not answered yet (the billing run sends them again). */
export async function sendPendingRefunds(deps: Deps): Promise<void> {
  const pending = await deps.database.db
    .select({ id: refunds.id })
    .from(refunds)
    .where(eq(refunds.status, "pending"))
    .limit(500);
  for (const { id } of pending) await sendRefund(deps, id).catch(() => {});
}

/**
 * Voids an open invoice: nothing is owed on it any more, dunning stops, and credits applied to it are
 * given back. A paid invoice is corrected with a credit note instead.
 */
export async function voidInvoice(deps: Deps, caller: Caller, orgId: string, invoiceId: string) {
  const now = deps.clock.now();
  await deps.database.db.transaction(async (tx) => {
    const [invoice] = await tx
      .select()
      .from(invoices)
      .where(and(eq(invoices.id, invoiceId), eq(invoices.orgId, orgId)))
      .for("update");
    if (!invoice) throw new AppError("not_found", `No invoice ${invoiceId}.`);
    if (invoice.status !== "finalized")
      throw new AppError(
        "conflict",
        invoice.status === "paid"
          ? `Invoice ${invoice.number} is paid: correct it with a credit note.`
          : `Invoice ${invoice.number ?? invoiceId} is ${invoice.status}: only an open invoice can be voided.`,
      );
    await assertNoPaymentInFlight(tx, invoice.id);
    await tx
      .update(invoices)
      .set({ status: "void", voidedAt: now, nextAttemptAt: null, updatedAt: now })
      .where(eq(invoices.id, invoice.id));
    // Credits applied to it go back to the grants they came from.
    const applied = await tx
      .select({ grantId: creditLedger.grantId, amount: sql<string>`sum(${creditLedger.amount})` })
      .from(creditLedger)
      .where(and(eq(creditLedger.invoiceId, invoice.id), eq(creditLedger.kind, "apply")))
      .groupBy(creditLedger.grantId);
    for (const row of applied) {
      const back = new Money(row.amount).negated();
      if (!back.greaterThan(0)) continue;
      await tx.insert(creditLedger).values({
        id: newId("ledger"),
        orgId,
        grantId: row.grantId,
        invoiceId: invoice.id,
        kind: "restore",
        amount: back.toFixed(),
        createdAt: now,
      });
    }
    if (invoice.subscriptionId) await clearPastDue(tx, invoice.subscriptionId, now);
    await recordAudit(tx, {
      orgId,
      actor: caller,
      action: "invoice.voided",
      target: { type: "invoice", id: invoice.id },
      metadata: { number: invoice.number, amount_due: invoice.amountDue },
    });
    await emitEvent(deps, tx, {
      orgId,
      type: "invoice.voided",
      data: invoiceEventData(invoice, { status: "void" }),
    });
  });
  await subscriptionChanged(deps, orgId);
}
