import { and, eq, inArray } from "drizzle-orm";
import { invoices, memberships, orgs, users } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { renderActionEmail } from "../../lib/email-templates.js";
import { formatMoney } from "./money.js";
import { amountRemaining } from "./payments.js";

/**
 * Billing e-mails: a failed payment (with when the next attempt is, or that it was the last) and the
 * end of dunning. They go to the org's owners and billing members; delivery failures are the
 * mailer's to record, never the billing run's to fail on.
 */

async function billingContacts(deps: Deps, orgId: string) {
  const rows = await deps.database.db
    .select({ email: users.email, name: users.name })
    .from(memberships)
    .innerJoin(users, eq(users.id, memberships.userId))
    .where(and(eq(memberships.orgId, orgId), inArray(memberships.role, ["owner", "billing"])));
  const [org] = await deps.database.db.select({ name: orgs.name }).from(orgs).where(eq(orgs.id, orgId));
  return { contacts: rows, orgName: org?.name ?? "your organization" };
}

async function sendToContacts(
  deps: Deps,
  orgId: string,
  template: string,
  build: (orgName: string, name: string) => Parameters<typeof renderActionEmail>[0],
) {
  try {
    const { contacts, orgName } = await billingContacts(deps, orgId);
    for (const contact of contacts) {
      await deps.mailer.send({
        to: contact.email,
        ...renderActionEmail(build(orgName, contact.name)),
        template,
        orgId,
      });
    }
  } catch (error) {
    deps.logger.warn({ err: (error as Error).message, org: orgId, template }, "billing e-mail not recorded");
  }
}

const day = (date: Date) => date.toISOString().slice(0, 10);

export async function paymentFailedEmail(deps: Deps, invoiceId: string, nextAttemptAt: Date | null) {
  const [invoice] = await deps.database.db.select().from(invoices).where(eq(invoices.id, invoiceId));
  if (!invoice) return;
  const action = deps.catalog.dunning.final_action === "cancel" ? "canceled" : "moved to the free plan";
  const remaining = formatMoney(await amountRemaining(deps.database.db, invoice), invoice.currency);
  await sendToContacts(deps, invoice.orgId, "payment_failed", (orgName, name) => ({
    subject: `Payment failed for ${orgName}: invoice ${invoice.number ?? invoice.id}`,
    greeting: `Hi ${name},`,
    intro: [
      `We could not charge ${invoice.currency} ${remaining} for invoice ${invoice.number ?? invoice.id}: the card was declined.`,
      nextAttemptAt
        ? `We will try again on ${day(nextAttemptAt)}. Update the card before then to keep your plan.`
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
    greeting: `Hi ${name},`,
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
    greeting: `Hi ${name},`,
    intro: [
      `Thank you: ${invoice.currency} ${invoice.amountPaid} was charged for invoice ${number} on ${day(invoice.paidAt ?? deps.clock.now())}.`,
      `It covers ${day(invoice.periodStart)} to ${day(invoice.periodEnd)}. The invoice and its PDF are on the billing page.`,
    ],
    action: { label: "View invoices", url: `${deps.env.publicUrl}/billing` },
    outro: ["Keep this e-mail for your records."],
  }));
}
