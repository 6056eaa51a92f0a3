import { eq } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { type invoices, subscriptions } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { emitEvent } from "../webhooks/events.js";

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
