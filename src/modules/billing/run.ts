import { and, asc, eq, gt, isNull, lte, ne, or } from "drizzle-orm";
import { orgs, subscriptions } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { type Period, periodAt } from "../plans/periods.js";
import { getSubscription } from "../plans/subscriptions.js";
import { cycleLines, type DraftLine, draftLineOut, totalsOf, writeInvoice } from "./invoices.js";

/**
 * The billing run: closes every subscription period that has ended. Closing a period writes one
 * invoice — the period's usage charges in arrears and the next period's base fee in advance — and
 * moves the subscription's `billed_through` to the period's end, in one transaction. So the run is
 * idempotent (a closed period is never closed again; the invoice's dedup key backs that up) and
 * crash-safe (killed half-way, each period is either fully closed or untouched, and the next run
 * picks up what is left). Several processes may run it at once: each subscription is locked while
 * it is closed, and the others skip it.
 */

export interface BillingRunResult {
  /** Periods closed. */
  closed: number;
  /** Invoices written (a free plan's period closes without one). */
  invoices: string[];
}

const BATCH = 200;

/**
 * How long after a period ends the run waits before closing it: usage acknowledged just before the
 * end may still be on its way to Postgres (another process's journal commits every 100 ms; an ingest
 * batch validated before the boundary commits just after it). The test clock closes at once.
 */
const SETTLE_MS = 60_000;
const settleMs = (deps: Deps) => (deps.testClock ? 0 : SETTLE_MS);

type SubscriptionRow = typeof subscriptions.$inferSelect;

/** The period after `period` for a subscription's anchor and interval. */
function following(sub: SubscriptionRow, period: Period): Period {
  return periodAt(sub.anchorAt.getTime(), sub.interval, period.endMs);
}

/** Runs the billing run over every subscription due at `now` (default: the clock's now). */
export async function runBilling(deps: Deps, nowMs = deps.clock.nowMs()): Promise<BillingRunResult> {
  const result: BillingRunResult = { closed: 0, invoices: [] };
  let after = "";
  for (;;) {
    const due = await deps.database.db
      .select({ id: subscriptions.id })
      .from(subscriptions)
      .innerJoin(orgs, eq(orgs.id, subscriptions.orgId))
      .where(
        and(
          gt(subscriptions.id, after),
          ne(subscriptions.status, "canceled"),
          isNull(orgs.deletedAt),
          or(
            isNull(subscriptions.nextBillingAt),
            lte(subscriptions.nextBillingAt, new Date(nowMs - settleMs(deps))),
          ),
        ),
      )
      .orderBy(asc(subscriptions.id))
      .limit(BATCH);
    for (const { id } of due) {
      try {
        const closed = await closeDuePeriods(deps, id, nowMs);
        result.closed += closed.closed;
        result.invoices.push(...closed.invoices);
      } catch (error) {
        // One subscription's failure (a plan version gone missing) must not hold up everyone else's.
        deps.logger.error({ err: (error as Error).message, subscription: id }, "billing run: closing failed");
      }
    }
    if (due.length < BATCH) break;
    after = due[due.length - 1]?.id ?? after;
  }
  if (result.closed > 0)
    deps.logger.info({ closed: result.closed, invoices: result.invoices.length }, "billing run");
  return result;
}

/**
 * Closes a subscription's ended periods, oldest first, one transaction each. The lines are priced
 * before the transaction (reading usage), then the transaction locks the row and writes only if no
 * one closed the period meanwhile.
 */
export async function closeDuePeriods(deps: Deps, subscriptionId: string, nowMs: number) {
  const out = { closed: 0, invoices: [] as string[] };
  for (;;) {
    const [sub] = await deps.database.db
      .select()
      .from(subscriptions)
      .where(eq(subscriptions.id, subscriptionId));
    if (!sub || sub.status === "canceled") return out;
    if (sub.billedThrough === null || sub.nextBillingAt === null) {
      // A subscription from before billing: it starts at its current period, the past left alone.
      const current = periodAt(sub.anchorAt.getTime(), sub.interval, nowMs);
      await deps.database.db
        .update(subscriptions)
        .set({ billedThrough: new Date(current.startMs), nextBillingAt: new Date(current.endMs) })
        .where(and(eq(subscriptions.id, sub.id), isNull(subscriptions.billedThrough)));
      continue;
    }
    if (sub.nextBillingAt.getTime() + settleMs(deps) > nowMs) return out;
    const period = { startMs: sub.billedThrough.getTime(), endMs: sub.nextBillingAt.getTime() };
    const next = following(sub, period);
    const plan = await deps.plans.load(sub.planKey, sub.planVersion);
    if (!plan) throw new Error(`plan ${sub.planKey} v${sub.planVersion} is missing from plan_versions`);
    const lines = await cycleLines(deps, sub, plan, period, next);
    const written = await deps.database.db.transaction(async (tx) => {
      const [locked] = await tx
        .select()
        .from(subscriptions)
        .where(eq(subscriptions.id, sub.id))
        .for("update", { skipLocked: true });
      // Another process holds it, or closed this period (or changed the plan) since we priced it.
      if (
        !locked ||
        locked.updatedAt.getTime() !== sub.updatedAt.getTime() ||
        locked.billedThrough?.getTime() !== period.startMs
      )
        return null;
      let invoiceId: string | undefined;
      if (lines.length > 0) {
        const invoice = await writeInvoice(tx, deps, {
          orgId: sub.orgId,
          subscriptionId: sub.id,
          reason: "subscription_cycle",
          period,
          plan: { key: sub.planKey, version: sub.planVersion, interval: sub.interval },
          lines,
          dedupKey: `cycle:${sub.id}:${new Date(period.startMs).toISOString()}`,
        });
        invoiceId = invoice?.id;
      }
      await tx
        .update(subscriptions)
        .set({
          billedThrough: new Date(next.startMs),
          nextBillingAt: new Date(next.endMs),
          updatedAt: deps.clock.now(),
        })
        .where(eq(subscriptions.id, sub.id));
      return { invoiceId };
    });
    // Locked elsewhere: that process closes it. Changed under us: price it again from the new state.
    if (written === null) {
      const [again] = await deps.database.db
        .select({ updatedAt: subscriptions.updatedAt })
        .from(subscriptions)
        .where(eq(subscriptions.id, sub.id));
      if (!again || again.updatedAt.getTime() === sub.updatedAt.getTime()) return out;
      continue;
    }
    out.closed++;
    if (written.invoiceId) out.invoices.push(written.invoiceId);
  }
}

/**
 * The invoice the next run will write for the org's running period: usage so far in arrears and the
 * next period's base fee, priced exactly as the run will price them (usage can still grow).
 */
export async function upcomingInvoice(deps: Deps, orgId: string) {
  const { row: sub, plan } = await getSubscription(deps, orgId);
  if (sub.status === "canceled")
    throw new AppError("not_found", "A canceled subscription has no upcoming invoice.");
  const nowMs = deps.clock.nowMs();
  const period =
    sub.billedThrough && sub.nextBillingAt && sub.nextBillingAt.getTime() > nowMs
      ? { startMs: sub.billedThrough.getTime(), endMs: sub.nextBillingAt.getTime() }
      : periodAt(sub.anchorAt.getTime(), sub.interval, nowMs);
  const lines: DraftLine[] = await cycleLines(deps, sub, plan, period, following(sub, period));
  const currency = deps.catalog.currency;
  const { subtotal, total } = totalsOf(lines, currency);
  return {
    id: null,
    org_id: orgId,
    subscription_id: sub.id,
    number: null,
    status: "upcoming" as const,
    reason: "subscription_cycle" as const,
    currency,
    period_start: new Date(period.startMs).toISOString(),
    period_end: new Date(period.endMs).toISOString(),
    plan: sub.planKey,
    plan_version: sub.planVersion,
    interval: sub.interval,
    lines: lines.map(draftLineOut),
    subtotal,
    total,
    amount_due: total,
    /** When the run will write it. */
    next_billing_at: new Date(period.endMs).toISOString(),
  };
}
