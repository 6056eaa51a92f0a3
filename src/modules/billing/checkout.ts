import { and, eq } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { checkoutSessions, orgs } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { escapeHtml } from "../../lib/email-templates.js";
import { AppError } from "../../lib/errors.js";
import { secretId } from "../../lib/ids.js";
import type { AuditEntry } from "../audit/service.js";
import type { Caller } from "../auth/caller.js";
import type { Interval } from "../catalog/schema.js";
import { applyChange, quoteChange, quoteOut } from "./changes.js";
import { Money } from "./money.js";
import { collectAfterCommit, paymentMethodOf, savePaymentMethod, testCard } from "./payments.js";
import { providerOf } from "./provider.js";

/**
 * Changing plans as a customer: `POST /v1/orgs/:org/subscription`. A change that costs money now and
 * finds no card on file goes through the local provider's test-mode checkout page; anything else
 * applies at once, and its invoice is charged to the card on file.
 */

const CHECKOUT_TTL_MS = 24 * 3_600_000;

export type ChangeOutcome =
  | { status: "applied"; invoiceId: string | null; payment: string | null }
  | { status: "checkout"; checkoutId: string; checkoutUrl: string };

/** Quotes and applies a change; a subscription changed meanwhile is quoted again. */
async function applyFresh(
  deps: Deps,
  caller: AuditEntry["actor"],
  orgId: string,
  input: { plan: string; interval?: Interval | undefined },
  inTransaction?: (tx: Database) => Promise<void>,
) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const quote = await quoteChange(deps, orgId, input);
    const applied = await applyChange(deps, caller, quote, inTransaction);
    if (!applied) continue;
    const payment = applied.invoiceId ? await collectAfterCommit(deps, applied.invoiceId) : null;
    return { invoiceId: applied.invoiceId, payment: payment?.status ?? null };
  }
  throw new AppError("conflict", "The subscription kept changing meanwhile; try again.");
}

export async function requestChange(
  deps: Deps,
  caller: Caller,
  orgId: string,
  input: { plan: string; interval?: Interval | undefined },
): Promise<ChangeOutcome> {
  const quote = await quoteChange(deps, orgId, input);
  const due = new Money((await quoteOut(deps, quote)).amount_due);
  const method = await paymentMethodOf(deps, orgId);
  // The card on file is tried before anything changes: a declined upgrade leaves the plan as it was
  // (Stripe's pending_if_incomplete), rather than moving the org to a plan it cannot pay for.
  // The local test card says in advance that it will be declined: it is tried before anything changes,
  // and a declined upgrade leaves the plan as it was (Stripe's pending_if_incomplete) rather than
  // moving the org to a plan it cannot pay for. A Stripe card is only known to decline when charged.
  if (quote.timing === "now" && due.greaterThan(0) && method?.reference === "decline")
    throw new AppError("payment_required", "The card on file was declined; update it and try again.", {
      decline_code: "card_declined",
    });
  if (quote.timing === "now" && due.greaterThan(0) && !method) {
    const id = secretId("checkout");
    const now = deps.clock.now();
    const expiresAt = new Date(now.getTime() + CHECKOUT_TTL_MS);
    await deps.database.db.insert(checkoutSessions).values({
      id,
      orgId,
      status: "open",
      planKey: quote.to.plan.key,
      planVersion: quote.to.version,
      interval: quote.to.interval,
      expiresAt,
      createdAt: now,
    });
    const started = await providerOf(deps)
      .startCheckout(deps, { checkoutId: id, orgId, currency: deps.catalog.currency, expiresAt })
      .catch(async (error: unknown) => {
        await deps.database.db
          .update(checkoutSessions)
          .set({ status: "expired" })
          .where(eq(checkoutSessions.id, id));
        throw error;
      });
    if (started.reference)
      await deps.database.db
        .update(checkoutSessions)
        .set({ providerReference: started.reference })
        .where(eq(checkoutSessions.id, id));
    return { status: "checkout", checkoutId: id, checkoutUrl: started.url };
  }
  const applied = await applyFresh(deps, caller, orgId, input);
  return { status: "applied", ...applied };
}

/** An open, unexpired checkout session; 404 otherwise (an id names nothing else). */
export async function openSession(deps: Deps, id: string, options: { allowLate?: boolean } = {}) {
  const [session] = await deps.database.db.select().from(checkoutSessions).where(eq(checkoutSessions.id, id));
  if (!session) throw new AppError("not_found", "No such checkout.");
  if (session.status === "completed") throw new AppError("conflict", "This checkout is already paid.");
  // A provider's session completed on its side is honoured even after our own expiry time.
  if (
    session.status === "expired" ||
    (!options.allowLate && session.expiresAt.getTime() <= deps.clock.nowMs())
  )
    throw new AppError("not_found", "This checkout has expired; start again from the billing page.");
  return session;
}

/** What the checkout page shows: the change and what it costs now, priced afresh. */
export async function checkoutSummary(deps: Deps, id: string) {
  const session = await openSession(deps, id);
  // A Stripe checkout is paid on Stripe's page, never on this one.
  if (session.providerReference || providerOf(deps).name !== "local")
    throw new AppError("not_found", "No such checkout.");
  const [org] = await deps.database.db
    .select({ name: orgs.name })
    .from(orgs)
    .where(eq(orgs.id, session.orgId));
  const quote = await quoteChange(deps, session.orgId, { plan: session.planKey, interval: session.interval });
  return { session, orgName: org?.name ?? "", quote: await quoteOut(deps, quote) };
}

/**
 * Pays a checkout with a test card: a declined card changes nothing (402); a paying one is saved as
 * the org's card, the change applies and its invoice is charged. A session completes once.
 */
export async function completeCheckout(deps: Deps, id: string, cardNumber: string) {
  const session = await openSession(deps, id);
  if (session.providerReference || providerOf(deps).name !== "local")
    throw new AppError("not_found", "This checkout is paid on the payment provider's page.");
  const card = testCard(cardNumber);
  if (card.outcome === "decline")
    throw new AppError("payment_required", "Your card was declined. Try another card.", {
      decline_code: "card_declined",
    });
  await savePaymentMethod(deps, session.orgId, cardNumber);
  return fulfilCheckout(deps, id);
}

/**
 * Applies a checkout's change once its card is saved, and charges the change's invoice to it. The
 * session is claimed in the change's own transaction: fulfilled once, and never marked completed
 * without the change (a crash in between leaves both undone).
 */
export async function fulfilCheckout(deps: Deps, id: string, options: { allowLate?: boolean } = {}) {
  const session = await openSession(deps, id, options);
  const claim = async (tx: Database) => {
    const claimed = await tx
      .update(checkoutSessions)
      .set({ status: "completed", completedAt: deps.clock.now() })
      .where(and(eq(checkoutSessions.id, id), eq(checkoutSessions.status, "open")))
      .returning({ id: checkoutSessions.id });
    if (claimed.length === 0) throw new AppError("conflict", "This checkout is already paid.");
  };
  const applied = await applyFresh(
    deps,
    { kind: "system" },
    session.orgId,
    { plan: session.planKey, interval: session.interval },
    claim,
  );
  await deps.database.db
    .update(checkoutSessions)
    .set({ invoiceId: applied.invoiceId })
    .where(eq(checkoutSessions.id, id));
  return { orgId: session.orgId, ...applied };
}

/** The test-mode checkout page. */
export function checkoutPage(
  summary: Awaited<ReturnType<typeof checkoutSummary>>,
  options: { error?: string; brand?: string } = {},
): string {
  const { quote, orgName, session } = summary;
  const rows = quote.lines
    .map((l) => `<tr><td>${escapeHtml(l.description)}</td><td class="num">${escapeHtml(l.amount)}</td></tr>`)
    .join("");
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Checkout — ${escapeHtml(quote.to.plan)}</title>
<style>
body{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;color:#111}
.test{background:#fff3cd;border:1px solid #c9a227;padding:.5rem .75rem;border-radius:6px}
table{width:100%;border-collapse:collapse;margin:1rem 0}td{padding:.4rem 0;border-bottom:1px solid #ddd}
.num{text-align:right;white-space:nowrap}.total td{font-weight:700;border-bottom:0}
label{display:block;font-weight:600;margin-top:1rem}input{font:inherit;width:100%;padding:.5rem;box-sizing:border-box}
button{font:inherit;margin-top:1rem;padding:.6rem 1.2rem;background:#1a56db;color:#fff;border:0;border-radius:6px;cursor:pointer}
.error{color:#a00;font-weight:600}
</style></head><body>
<main>
<p class="test" role="note">Test mode: no real card is charged. Use 4242 4242 4242 4242 to pay, or 4000 0000 0000 0002 to see a decline.</p>
<h1>Subscribe ${escapeHtml(orgName)} to ${escapeHtml(quote.to.plan)} (${escapeHtml(quote.to.interval)}ly)</h1>
<table aria-label="What you pay now">${rows}<tr class="total"><td>Due now</td><td class="num">${escapeHtml(quote.currency)} ${escapeHtml(quote.amount_due)}</td></tr></table>
${options.error ? `<p class="error" role="alert">${escapeHtml(options.error)}</p>` : ""}
<form method="post" action="/checkout/${escapeHtml(session.id)}">
<label for="card_number">Card number</label>
<input id="card_number" name="card_number" inputmode="numeric" autocomplete="cc-number" required placeholder="4242 4242 4242 4242">
<button type="submit">Pay ${escapeHtml(quote.currency)} ${escapeHtml(quote.amount_due)}</button>
</form>
</main></body></html>`;
}

/** The page after a checkout; `next` links back (the dashboard's billing page). */
export function checkoutDonePage(
  title: string,
  message: string,
  next?: { label: string; url: string },
): string {
  const link = next ? `<p><a href="${escapeHtml(next.url)}">${escapeHtml(next.label)}</a></p>` : "";
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;color:#111}</style>
</head><body><main><h1>${escapeHtml(title)}</h1><p>${escapeHtml(message)}</p>${link}</main></body></html>`;
}
