import { eq } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { type invoices, subscriptionHistory, subscriptions } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { newId } from "../../lib/ids.js";
import { emitEvent } from "../webhooks/events.js";
import { Money } from "./money.js";

/** An invoice as webhooks describe it (the same fields as the API's, without the lines). */
export function invoiceEventData(
  row: typeof invoices.$inferSelect,
  changes: Partial<typeof invoices.$inferSelect> = {},
) {
  const invoice = { ...row, ...changes };
  return {
    id: invoice.id,
    org_id: invoice.orgId,
    number: invoice.number,
    status: invoice.status,
    reason: invoice.reason,
    currency: invoice.currency,
    subscription_id: invoice.subscriptionId,
    plan: invoice.planKey,
    period_start: invoice.periodStart.toISOString(),
    period_end: invoice.periodEnd.toISOString(),
    subtotal: invoice.subtotal,
    discount: invoice.discount,
    credits_applied: invoice.creditsApplied,
    total: invoice.total,
    amount_due: invoice.amountDue,
    amount_paid: invoice.amountPaid,
    due_at: invoice.dueAt?.toISOString() ?? null,
    paid_at: invoice.paidAt?.toISOString() ?? null,
  };
}

/**
 * Emits a subscription event with the subscription as it is now in `tx` (after the change): plan,
 * interval, status, the current period and any scheduled change or cancellation.
 */
export async function emitSubscriptionEvent(
  deps: Deps,
  tx: Database,
  type: "subscription.created" | "subscription.updated" | "subscription.canceled" | "subscription.resumed",
  subscriptionId: string,
  extra: Record<string, unknown> = {},
): Promise<void> {
  const [sub] = await tx.select().from(subscriptions).where(eq(subscriptions.id, subscriptionId));
  if (!sub) return;
  await recordSubscriptionState(deps, tx, sub);
  await emitEvent(deps, tx, {
    orgId: sub.orgId,
    type,
    data: {
      id: sub.id,
      org_id: sub.orgId,
      plan: sub.planKey,
      plan_version: sub.planVersion,
      interval: sub.interval,
      status: sub.status,
      cancel_at_period_end: sub.cancelAtPeriodEnd,
      canceled_at: sub.canceledAt?.toISOString() ?? null,
      trial_ends_at: sub.trialEndsAt?.toISOString() ?? null,
      billed_through: sub.billedThrough?.toISOString() ?? null,
      next_billing_at: sub.nextBillingAt?.toISOString() ?? null,
      pending_change: sub.pendingPlanKey
        ? { plan: sub.pendingPlanKey, interval: sub.pendingInterval ?? sub.interval }
        : null,
      ...extra,
    },
  });
}

/**
 * Appends the subscription's state as of now to `subscription_history` (the revenue metrics read
 * it), in the transaction of the change. MRR is the plan version's base price per month.
 */
export async function recordSubscriptionState(
  deps: Deps,
  tx: Database,
  sub: typeof subscriptions.$inferSelect,
): Promise<void> {
  const plan =
    deps.plans.get(sub.planKey, sub.planVersion) ?? (await deps.plans.load(sub.planKey, sub.planVersion));
  const price = sub.interval === "year" ? plan?.price.year : plan?.price.month;
  const mrr =
    price === undefined
      ? new Money(0)
      : sub.interval === "year"
        ? new Money(price).dividedBy(12)
        : new Money(price);
  await tx.insert(subscriptionHistory).values({
    id: newId("history"),
    subscriptionId: sub.id,
    orgId: sub.orgId,
    at: deps.clock.now(),
    planKey: sub.planKey,
    planVersion: sub.planVersion,
    interval: sub.interval,
    status: sub.status,
    // Exact enough for sums of thousands (an annual price ÷ 12 does not terminate); rounded on output.
    mrr: mrr.toDecimalPlaces(6).toFixed(),
    currency: deps.catalog.currency,
  });
}
