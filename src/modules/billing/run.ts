import { and, asc, eq, gt, isNotNull, isNull, lte, ne, or } from "drizzle-orm";
import { invoices, orgs, subscriptions } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { recordAudit } from "../audit/service.js";
import type { Plan } from "../catalog/schema.js";
import { type Period, periodAt } from "../plans/periods.js";
import { getSubscription, lockAtRevision, subscriptionChanged } from "../plans/subscriptions.js";
import { expireCredits, previewTotals } from "./adjustments.js";
import { sendPendingRefunds } from "./credit-notes.js";
import { dunningEndedEmail } from "./emails.js";
import { emitSubscriptionEvent } from "./events.js";
import {
  baseFeeLine,
  billedBaseFee,
  cycleLines,
  type DraftLine,
  draftLineOut,
  type NextPeriod,
  writeInvoice,
} from "./invoices.js";
import { Money } from "./money.js";
import { collectAfterCommit, paymentMethodOf, uncollectedInvoices } from "./payments.js";

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

/** A plan version a subscription names; every version ever used is in plan_versions. */
async function requirePlan(deps: Deps, key: string, version: number): Promise<Plan> {
  const plan = await deps.plans.load(key, version);
  if (!plan) throw new Error(`plan ${key} v${version} is missing from plan_versions`);
  return plan;
}

/** The period after `period` for a subscription's anchor and interval. */
function following(sub: SubscriptionRow, period: Period): Period {
  return periodAt(sub.anchorAt.getTime(), sub.interval, period.endMs);
}

/**
 * What follows the period being closed: nothing after a cancellation; the scheduled change's plan
 * (a downgrade), whose periods restart at the boundary when its interval differs; else the same plan.
 */
async function nextAfter(
  deps: Deps,
  sub: SubscriptionRow,
  plan: Plan,
  period: Period,
): Promise<NextPeriod | null> {
  if (sub.cancelAtPeriodEnd) return null;
  if (sub.pendingPlanKey !== null && sub.pendingPlanVersion !== null) {
    const pending = await requirePlan(deps, sub.pendingPlanKey, sub.pendingPlanVersion);
    const interval = sub.pendingInterval ?? sub.interval;
    const next =
      interval === sub.interval ? following(sub, period) : periodAt(period.endMs, interval, period.endMs);
    return { plan: pending, interval, period: next };
  }
  return { plan, interval: sub.interval, period: following(sub, period) };
}

/** Runs the billing run over every subscription due at `now` (default: the clock's now). */
export async function runBilling(deps: Deps, nowMs = deps.clock.nowMs()): Promise<BillingRunResult> {
  const result: BillingRunResult = { closed: 0, invoices: [] };
  await expireCredits(deps, nowMs);
  result.invoices.push(...(await endTrials(deps, nowMs)));
  await runDunning(deps, nowMs);
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
  // Invoices written by a run (or a change) whose process died before charging them.
  for (const id of await uncollectedInvoices(deps, new Date(nowMs - settleMs(deps))))
    await collectAfterCommit(deps, id);
  // Refunds of credit notes the payment provider has not answered yet.
  await sendPendingRefunds(deps);
  if (result.closed > 0)
    deps.logger.info({ closed: result.closed, invoices: result.invoices.length }, "billing run");
  return result;
}

/**
 * Trials that have ended: the subscription becomes active and the rest of the running period's base
 * fee is invoiced and charged now, unless an invoice already billed it (a trial longer than the first
 * period was billed in advance when that period closed). With no card on file, or a declined one, the
 * subscription is past_due.
 */
async function endTrials(deps: Deps, nowMs: number, onlyId?: string): Promise<string[]> {
  const written: string[] = [];
  const ended = await deps.database.db
    .select()
    .from(subscriptions)
    .where(
      and(
        eq(subscriptions.status, "trialing"),
        lte(subscriptions.trialEndsAt, new Date(nowMs)),
        onlyId ? eq(subscriptions.id, onlyId) : undefined,
      ),
    )
    .limit(1000);
  for (const sub of ended) {
    try {
      const trialEndsMs = (sub.trialEndsAt as Date).getTime();
      const plan = await requirePlan(deps, sub.planKey, sub.planVersion);
      // Only a trial ending in the open period is billed here; one that ended at or after its end is
      // billed in advance by that period's close (which runs next).
      const open =
        sub.billedThrough !== null &&
        sub.nextBillingAt !== null &&
        sub.billedThrough.getTime() <= trialEndsMs &&
        trialEndsMs < sub.nextBillingAt.getTime();
      const period = open
        ? { startMs: (sub.billedThrough as Date).getTime(), endMs: (sub.nextBillingAt as Date).getTime() }
        : periodAt(sub.anchorAt.getTime(), sub.interval, trialEndsMs);
      const billed = open ? await billedBaseFee(deps.database.db, sub.id, trialEndsMs) : undefined;
      const line = !open || billed ? null : baseFeeLine(deps, plan, sub.interval, period, trialEndsMs);
      const hasCard = Boolean(await paymentMethodOf(deps, sub.orgId));
      const invoiceId = await deps.database.db.transaction(async (tx) => {
        if (!(await lockAtRevision(tx, sub, { skipLocked: true }))) return undefined;
        let id: string | null = null;
        if (line) {
          const invoice = await writeInvoice(tx, deps, {
            orgId: sub.orgId,
            subscriptionId: sub.id,
            reason: "subscription_cycle",
            period,
            plan: { key: sub.planKey, version: sub.planVersion, interval: sub.interval },
            lines: [line],
            dedupKey: `trial_end:${sub.id}:${new Date(trialEndsMs).toISOString()}`,
          });
          id = invoice?.id ?? null;
        }
        const due = line !== null && new Money(line.amount).greaterThan(0);
        await tx
          .update(subscriptions)
          .set(
            due && !hasCard
              ? { status: "past_due", pastDueSince: deps.clock.now(), updatedAt: deps.clock.now() }
              : { status: "active", updatedAt: deps.clock.now() },
          )
          .where(eq(subscriptions.id, sub.id));
        return id;
      });
      if (invoiceId === undefined) continue;
      await subscriptionChanged(deps, sub.orgId);
      if (invoiceId) {
        written.push(invoiceId);
        await collectAfterCommit(deps, invoiceId);
      }
    } catch (error) {
      deps.logger.error(
        { err: (error as Error).message, subscription: sub.id },
        "billing run: ending a trial failed",
      );
    }
  }
  return written;
}

/**
 * Closes a subscription's ended periods, oldest first, one transaction each. The lines are priced
 * before the transaction (reading usage), then the transaction locks the row and writes only if no
 * one closed the period meanwhile.
 */
export async function closeDuePeriods(
  deps: Deps,
  subscriptionId: string,
  nowMs: number,
  options: { settle?: boolean } = {},
) {
  const settle = options.settle === false ? 0 : settleMs(deps);
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
        .where(
          and(
            eq(subscriptions.id, sub.id),
            or(isNull(subscriptions.billedThrough), isNull(subscriptions.nextBillingAt)),
          ),
        );
      continue;
    }
    if (sub.nextBillingAt.getTime() + settle > nowMs) return out;
    const period = { startMs: sub.billedThrough.getTime(), endMs: sub.nextBillingAt.getTime() };
    const plan = await requirePlan(deps, sub.planKey, sub.planVersion);
    const next = await nextAfter(deps, sub, plan, period);
    const lines = await cycleLines(deps, sub, plan, period, next);
    const written = await deps.database.db.transaction(async (tx) => {
      // Another process holds it, or closed this period (or changed the plan) since we priced it.
      if (!(await lockAtRevision(tx, sub, { skipLocked: true }))) return null;
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
      const end = new Date(period.endMs);
      await tx
        .update(subscriptions)
        .set(
          next === null
            ? // The cancellation takes effect: the org falls back to the default plan's grants.
              {
                status: "canceled",
                canceledAt: end,
                cancelAtPeriodEnd: false,
                billedThrough: end,
                nextBillingAt: null,
                updatedAt: deps.clock.now(),
              }
            : {
                planKey: next.plan === plan ? sub.planKey : (sub.pendingPlanKey as string),
                planVersion: next.plan === plan ? sub.planVersion : (sub.pendingPlanVersion as number),
                interval: next.interval,
                ...(next.interval !== sub.interval ? { anchorAt: end } : {}),
                pendingPlanKey: null,
                pendingPlanVersion: null,
                pendingInterval: null,
                billedThrough: new Date(next.period.startMs),
                nextBillingAt: new Date(next.period.endMs),
                updatedAt: deps.clock.now(),
              },
        )
        .where(eq(subscriptions.id, sub.id));
      if (next === null) await emitSubscriptionEvent(deps, tx, "subscription.canceled", sub.id);
      else if (next.plan !== plan || next.interval !== sub.interval) {
        await emitSubscriptionEvent(deps, tx, "subscription.updated", sub.id, {
          previous: { plan: sub.planKey, interval: sub.interval },
        });
      }
      return { invoiceId, changed: next === null || next.plan !== plan };
    });
    // Locked elsewhere: that process closes it. Changed under us: price it again from the new state.
    if (written === null) {
      const [again] = await deps.database.db
        .select({ revision: subscriptions.revision })
        .from(subscriptions)
        .where(eq(subscriptions.id, sub.id));
      if (!again || again.revision === sub.revision) return out;
      continue;
    }
    out.closed++;
    if (written.changed) await subscriptionChanged(deps, sub.orgId);
    if (written.invoiceId) {
      out.invoices.push(written.invoiceId);
      await collectAfterCommit(deps, written.invoiceId);
    }
  }
}

/**
 * Dunning: invoices whose next attempt is due are collected again (each failure schedules the next
 * retry, and e-mails the org's billing contacts); a past_due subscription with no retry left once the
 * last retry day has passed gets the catalog's `final_action` — canceled, or moved to the default plan.
 */
async function runDunning(deps: Deps, nowMs: number): Promise<void> {
  const now = new Date(nowMs);
  const due = await deps.database.db
    .select({ id: invoices.id })
    .from(invoices)
    .where(and(eq(invoices.status, "finalized"), lte(invoices.nextAttemptAt, now)))
    .limit(1000);
  for (const { id } of due) {
    const result = await collectAfterCommit(deps, id);
    // A card that was removed meanwhile: no attempt was made, so nothing reschedules it.
    if (result.status === "no_payment_method")
      await deps.database.db.update(invoices).set({ nextAttemptAt: null }).where(eq(invoices.id, id));
  }
  const { retry_days: retries, final_action: finalAction } = deps.catalog.dunning;
  const lastRetryMs = (retries[retries.length - 1] ?? 0) * 86_400_000;
  const overdue = await deps.database.db
    .select()
    .from(subscriptions)
    .where(
      and(
        eq(subscriptions.status, "past_due"),
        lte(subscriptions.pastDueSince, new Date(nowMs - lastRetryMs)),
      ),
    )
    .limit(1000);
  for (const sub of overdue) {
    const [pending] = await deps.database.db
      .select({ id: invoices.id })
      .from(invoices)
      .where(
        and(
          eq(invoices.subscriptionId, sub.id),
          eq(invoices.status, "finalized"),
          isNotNull(invoices.nextAttemptAt),
        ),
      )
      .limit(1);
    if (pending) continue;
    const fallback = deps.plans.current(deps.catalog.default_plan);
    const changed = await deps.database.db.transaction(async (tx) => {
      if (!(await lockAtRevision(tx, sub, { skipLocked: true }))) return false;
      const cleared = {
        pastDueSince: null,
        cancelAtPeriodEnd: false,
        pendingPlanKey: null,
        pendingPlanVersion: null,
        pendingInterval: null,
        updatedAt: now,
      };
      if (finalAction === "free" && fallback) {
        const interval = fallback.plan.price.month !== undefined ? "month" : "year";
        const period = periodAt(nowMs, interval, nowMs);
        await tx
          .update(subscriptions)
          .set({
            ...cleared,
            planKey: fallback.plan.key,
            planVersion: fallback.version,
            interval,
            status: "active",
            anchorAt: now,
            billedThrough: now,
            nextBillingAt: new Date(period.endMs),
          })
          .where(eq(subscriptions.id, sub.id));
      } else {
        await tx
          .update(subscriptions)
          .set({ ...cleared, status: "canceled", canceledAt: now, billedThrough: now, nextBillingAt: null })
          .where(eq(subscriptions.id, sub.id));
      }
      await recordAudit(tx, {
        orgId: sub.orgId,
        actor: { kind: "system" },
        action: finalAction === "free" ? "subscription.dunning_downgraded" : "subscription.dunning_canceled",
        target: { type: "subscription", id: sub.id },
        metadata: { plan: sub.planKey, past_due_since: sub.pastDueSince?.toISOString() ?? null },
      });
      await emitSubscriptionEvent(
        deps,
        tx,
        finalAction === "free" ? "subscription.updated" : "subscription.canceled",
        sub.id,
        { previous: { plan: sub.planKey, interval: sub.interval }, reason: "payment_failed" },
      );
      return true;
    });
    if (!changed) continue;
    await subscriptionChanged(deps, sub.orgId);
    await dunningEndedEmail(deps, sub.orgId, finalAction === "free" && fallback ? "free" : "canceled");
  }
}

/**
 * Brings one subscription up to date before a change: a trial that has ended is ended and periods
 * that have ended are closed (without the settling wait), so a change never prices a period the run
 * has not opened yet.
 */
export async function catchUp(deps: Deps, subscriptionId: string, nowMs: number): Promise<void> {
  await endTrials(deps, nowMs, subscriptionId);
  await closeDuePeriods(deps, subscriptionId, nowMs, { settle: false });
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
  const lines: DraftLine[] = await cycleLines(
    deps,
    sub,
    plan,
    period,
    await nextAfter(deps, sub, plan, period),
  );
  const totals = await previewTotals(deps, orgId, lines);
  return {
    id: null,
    org_id: orgId,
    subscription_id: sub.id,
    number: null,
    status: "upcoming" as const,
    reason: "subscription_cycle" as const,
    currency: deps.catalog.currency,
    period_start: new Date(period.startMs).toISOString(),
    period_end: new Date(period.endMs).toISOString(),
    plan: sub.planKey,
    plan_version: sub.planVersion,
    interval: sub.interval,
    lines: lines.map(draftLineOut),
    ...totals,
    /** When the run will write it. */
    next_billing_at: new Date(period.endMs).toISOString(),
  };
}
