import { eq } from "drizzle-orm";
import { orgs, portalSessions } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { escapeHtml } from "../../lib/email-templates.js";
import { AppError } from "../../lib/errors.js";
import { getSubscription } from "../plans/subscriptions.js";
import { listInvoices } from "./invoices.js";
import { paymentMethodOf } from "./payments.js";
import { providerOf } from "./provider.js";

/**
 * The customer portal: `POST /v1/orgs/:org/portal` → `{url}`. With Stripe it is Stripe's portal; with
 * the local provider it is this test-mode page, behind a short-lived session id: the plan, the card
 * (and a form to replace it with a test card), and the invoices with their PDFs, each open one with a
 * "Pay now" button.
 */

export async function openPortal(deps: Deps, orgId: string, returnUrl: string | null) {
  return { url: await providerOf(deps).portalUrl(deps, orgId, returnUrl) };
}

/** A live local portal session; 404 for an unknown or expired one (an id names nothing else). */
export async function portalSession(deps: Deps, id: string) {
  if (!/^bps_[0-9a-z]{32}$/.test(id) || providerOf(deps).name !== "local")
    throw new AppError("not_found", "No such portal session.");
  const [session] = await deps.database.db.select().from(portalSessions).where(eq(portalSessions.id, id));
  if (!session) throw new AppError("not_found", "No such portal session.");
  if (session.expiresAt.getTime() <= deps.clock.nowMs())
    throw new AppError("not_found", "This link has expired; open the billing portal again.");
  return session;
}

export async function portalView(deps: Deps, session: typeof portalSessions.$inferSelect) {
  const [org] = await deps.database.db
    .select({ name: orgs.name })
    .from(orgs)
    .where(eq(orgs.id, session.orgId));
  const { row, plan } = await getSubscription(deps, session.orgId);
  const [card, invoices] = await Promise.all([
    paymentMethodOf(deps, session.orgId),
    listInvoices(deps, session.orgId, 24),
  ]);
  return { session, orgName: org?.name ?? "", subscription: row, plan, card, invoices };
}

export function portalPage(
  view: Awaited<ReturnType<typeof portalView>>,
  notice?: { error?: string; ok?: string },
) {
  const { session, orgName, subscription, plan, card, invoices } = view;
  const base = `/portal/${escapeHtml(session.id)}`;
  const rows = invoices
    .filter((i) => i.status !== "draft")
    .map((i) => {
      const pay =
        i.status === "finalized"
          ? `<form method="post" action="${base}/invoices/${escapeHtml(i.id)}/pay"><button type="submit">Pay now</button></form>`
          : "";
      return `<tr><td>${escapeHtml(i.number ?? i.id)}</td><td>${escapeHtml((i.finalized_at ?? i.created_at).slice(0, 10))}</td><td class="num">${escapeHtml(i.currency)} ${escapeHtml(i.status === "finalized" ? i.amount_remaining : i.total)}</td><td>${escapeHtml(i.status === "finalized" ? "open" : i.status)}</td><td><a href="${base}/invoices/${escapeHtml(i.id)}.pdf">PDF</a></td><td>${pay}</td></tr>`;
    })
    .join("");
  const back = session.returnUrl ? `<p><a href="${escapeHtml(session.returnUrl)}">← Back</a></p>` : "";
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Billing — ${escapeHtml(orgName)}</title>
<style>
body{font:16px/1.5 system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem;color:#111}
.test{background:#fff3cd;border:1px solid #c9a227;padding:.5rem .75rem;border-radius:6px}
table{width:100%;border-collapse:collapse;margin:1rem 0}td,th{padding:.4rem .3rem;border-bottom:1px solid #ddd;text-align:left}
.num{text-align:right;white-space:nowrap}form{display:inline}
label{display:block;font-weight:600;margin-top:1rem}input{font:inherit;width:100%;padding:.5rem;box-sizing:border-box}
button{font:inherit;padding:.4rem .9rem;background:#1a56db;color:#fff;border:0;border-radius:6px;cursor:pointer}
.error{color:#a00;font-weight:600}.ok{color:#064;font-weight:600}
</style></head><body>
<main>
<p class="test" role="note">Test mode: no real card is charged. 4242 4242 4242 4242 pays; 4000 0000 0000 0002 is declined.</p>
${back}
<h1>Billing for ${escapeHtml(orgName)}</h1>
${notice?.error ? `<p class="error" role="alert">${escapeHtml(notice.error)}</p>` : ""}${notice?.ok ? `<p class="ok" role="status">${escapeHtml(notice.ok)}</p>` : ""}
<h2>Plan</h2>
<p>${escapeHtml(plan.name)} (${escapeHtml(subscription.interval)}ly) — ${escapeHtml(subscription.status.replace("_", " "))}${subscription.cancelAtPeriodEnd ? ", ends at the end of the period" : ""}</p>
<h2>Card</h2>
<p>${card ? `${escapeHtml(card.brand)} ending in ${escapeHtml(card.last4)}` : "No card on file."}</p>
<form method="post" action="${base}/card" style="display:block">
<label for="card_number">${card ? "Replace the card" : "Add a card"}</label>
<input id="card_number" name="card_number" inputmode="numeric" autocomplete="cc-number" required placeholder="4242 4242 4242 4242">
<p><button type="submit">Save card</button></p>
</form>
<h2>Invoices</h2>
${rows ? `<table><thead><tr><th>Number</th><th>Date</th><th class="num">Total</th><th>Status</th><th></th><th></th></tr></thead><tbody>${rows}</tbody></table>` : "<p>No invoices yet.</p>"}
</main></body></html>`;
}
