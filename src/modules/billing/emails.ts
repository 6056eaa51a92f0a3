import { and, count, eq } from "drizzle-orm";
import { invoices, payments, type Role } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { type ActionEmail, brandFor, renderActionEmail } from "../../lib/email-templates.js";
import { greeting, orgContacts } from "../notifications/emails.js";
import { formatMoney } from "./money.js";
import { amountRemaining } from "./payments.js";

/**
 * Billing e-mails, in the org's branding: a failed payment (which attempt it was, and when the next
 * one is or that it was the last), the end of dunning, and the receipt of a paid invoice. They go to
 * the org's owners and billing members; delivery failures are the mailer's to record, never the
 * billing run's to fail on.
 */

const BILLING_CONTACTS: readonly Role[] = ["owner", "billing"];

async function sendToContacts(
  deps: Deps,
  orgId: string,
  template: string,
  build: (orgName: string, name: string) => Omit<ActionEmail, "brand">,
) {
  try {
    const { contacts, orgName } = await orgContacts(deps, orgId, BILLING_CONTACTS);
    if (contacts.length === 0) return;
    const brand = await brandFor(deps, orgId);
    for (const contact of contacts) {
      await deps.mailer.send({
        to: contact.email,
        ...renderActionEmail({ ...build(orgName, contact.name), brand }),
        template,
        orgId,
      });
    }
  } catch (error) {
    deps.logger.warn({ err: (error as Error).message, org: orgId, template }, "billing e-mail not recorded");
  }
}

const day = (date: Date) => date.toISOString().slice(0, 10);

/** How many charges of the invoice have failed so far (the one just failed included). */
async function failedAttempts(deps: Deps, invoiceId: string): Promise<number> {
  const [row] = await deps.database.db
    .select({ n: count() })
    .from(payments)
    .where(and(eq(payments.invoiceId, invoiceId), eq(payments.status, "failed")));
  return Math.max(1, Number(row?.n ?? 1));
}

export async function paymentFailedEmail(deps: Deps, invoiceId: string, nextAttemptAt: Date | null) {
  const [invoice] = await deps.database.db.select().from(invoices).where(eq(invoices.id, invoiceId));
  if (!invoice) return;
  const action = deps.catalog.dunning.final_action === "cancel" ? "canceled" : "moved to the free plan";
  const remaining = formatMoney(await amountRemaining(deps.database.db, invoice), invoice.currency);
  const number = invoice.number ?? invoice.id;
  // The first charge and one per retry day: attempt n of that many (manual retries can add more).
  const attempt = await failedAttempts(deps, invoiceId).catch(() => 1);
  const scheduled = deps.catalog.dunning.retry_days.length + 1;
  const ofTotal = attempt <= scheduled ? `attempt ${attempt} of ${scheduled}` : `attempt ${attempt}`;
  await sendToContacts(deps, invoice.orgId, "payment_failed", (orgName, name) => ({
    subject: `Payment failed for ${orgName}: invoice ${number} (${ofTotal})`,
    greeting: greeting(name),
    intro: [
      `We could not charge ${invoice.currency} ${remaining} for invoice ${number}: the card was declined. This was ${ofTotal}.`,
      nextAttemptAt
        ? `We will try again on ${day(nextAttemptAt)} (attempt ${attempt + 1}). Update the card before then to keep your plan.`
        : `That was the last attempt: unless the invoice is paid, the subscription will be ${action}.`,
    ],
    action: { label: "Update the payment method", url: `${deps.env.publicUrl}/billing` },
    outro: ["If you have already updated your card, you can ignore this e-mail."],
  }));
}

export async function dunningEndedEmail(deps: Deps, orgId: string, outcome: "canceled" | "free") {
  await sendToContacts(deps, orgId, "dunning_ended", (orgName, name) => ({
    subject:
      outcome === "canceled"
        ? `The subscription of ${orgName} was canceled`
        : `${orgName} was moved to the free plan`,
    greeting: greeting(name),
    intro: [
      outcome === "canceled"
        ? "We could not collect payment after several attempts, so the subscription has been canceled. The free plan's features stay available."
        : "We could not collect payment after several attempts, so the organization is now on the free plan.",
    ],
    action: { label: "Choose a plan", url: `${deps.env.publicUrl}/billing` },
    outro: ["Paying the open invoice and choosing a plan again restores everything."],
  }));
}

/** A receipt: a payment settled the invoice. */
export async function receiptEmail(deps: Deps, invoiceId: string) {
  const [invoice] = await deps.database.db.select().from(invoices).where(eq(invoices.id, invoiceId));
  if (invoice?.status !== "paid") return;
  const number = invoice.number ?? invoice.id;
  await sendToContacts(deps, invoice.orgId, "invoice_paid", (orgName, name) => ({
    subject: `Receipt for ${orgName}: invoice ${number} is paid`,
    greeting: greeting(name),
    intro: [
      `Thank you: ${invoice.currency} ${invoice.amountPaid} was charged for invoice ${number} on ${day(invoice.paidAt ?? deps.clock.now())}.`,
      `It covers ${day(invoice.periodStart)} to ${day(invoice.periodEnd)}. The invoice and its PDF are on the billing page.`,
    ],
    action: { label: "View invoices", url: `${deps.env.publicUrl}/billing` },
    outro: ["Keep this e-mail for your records."],
  }));
}
