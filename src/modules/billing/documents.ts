import { and, asc, eq, inArray } from "drizzle-orm";
import { memberships, orgs, users } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { instanceBranding } from "../orgs/branding.js";
import { getCreditNote } from "./credit-notes.js";
import { getInvoice } from "./invoices.js";
import { type PdfParty, renderInvoicePdf } from "./pdf.js";

/**
 * The documents a customer keeps: invoice and credit-note PDFs, issued in the seller's (the
 * instance's) white-label branding, addressed to the org and its first billing contact.
 */

async function customerOf(deps: Deps, orgId: string): Promise<PdfParty> {
  const db = deps.database.db;
  const [org] = await db.select({ name: orgs.name }).from(orgs).where(eq(orgs.id, orgId));
  const [contact] = await db
    .select({ email: users.email })
    .from(memberships)
    .innerJoin(users, eq(users.id, memberships.userId))
    .where(and(eq(memberships.orgId, orgId), inArray(memberships.role, ["billing", "owner"])))
    .orderBy(asc(memberships.role), asc(memberships.createdAt))
    .limit(1);
  return { name: org?.name ?? orgId, email: contact?.email ?? null };
}

export async function invoicePdf(deps: Deps, orgId: string, invoiceId: string) {
  const [invoice, customer, branding] = await Promise.all([
    getInvoice(deps, orgId, invoiceId),
    customerOf(deps, orgId),
    instanceBranding(deps),
  ]);
  const pdf = await renderInvoicePdf({ kind: "invoice", invoice, customer, branding });
  return { pdf, filename: `${invoice.number ?? invoice.id}.pdf` };
}

export async function creditNotePdf(deps: Deps, orgId: string, creditNoteId: string) {
  const note = await getCreditNote(deps, orgId, creditNoteId);
  const [invoice, customer, branding] = await Promise.all([
    getInvoice(deps, orgId, note.invoice_id),
    customerOf(deps, orgId),
    instanceBranding(deps),
  ]);
  const pdf = await renderInvoicePdf({
    kind: "credit_note",
    invoice,
    customer,
    branding,
    credit_note: {
      number: note.number,
      reason: note.reason,
      memo: note.memo,
      created_at: note.created_at,
      lines: note.lines.map((l) => ({ description: l.description, amount: l.amount })),
      total: note.amount,
    },
  });
  return { pdf, filename: `${note.number}.pdf` };
}

export const pdfHeaders = (filename: string) => ({
  "content-type": "application/pdf",
  "content-disposition": `inline; filename="${filename}"`,
  "cache-control": "private, no-store",
  "x-content-type-options": "nosniff",
});
