import { eq } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { subscriptions } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { type AuditEntry, recordAudit } from "../audit/service.js";
import type { Caller } from "../auth/caller.js";
import type { Interval, Plan } from "../catalog/schema.js";
import { apiRateKey, rateKey } from "../metering/keys.js";
import { type Period, periodAt } from "../plans/periods.js";
import {
  getSubscription,
  lockAtRevision,
  resolveTargetPlan,
  subscriptionChanged,
} from "../plans/subscriptions.js";
import { previewTotals } from "./adjustments.js";
import { emitSubscriptionEvent } from "./events.js";
import {
  baseFeeLine,
  billedBaseFee,
  cycleLines,
  type DraftLine,
  draftLineOut,
  writeInvoice,
} from "./invoices.js";
import { formatMoney, Money, roundMoney, text } from "./money.js";
import { collectAfterCommit } from "./payments.js";
import { periodShare } from "./proration.js";
import { catchUp } from "./run.js";

/**
 * Subscription changes, as the catalog spec defines them:
 * - an **upgrade** (a higher base price on the same interval) applies now: the unused part of the old
 *   base fee is credited and the rest of the period on the new plan charged, by `proration_unit`;
 * - a **downgrade** (a lower price, or annual → monthly) waits for the period end, unless the plan
 *   being left says `downgrade: immediate`;
 * - a plan at the same price applies now at no cost; monthly → annual applies now and restarts the
 *   periods (the interrupted month's usage is billed, its unused base fee credited, the year charged);
 * - a canceled subscription starts again now, charged a full period.
 * A quote prices the change; the change posts exactly the quote's lines (the preview).
 */

type SubscriptionRow = typeof subscriptions.$inferSelect;

export type ChangeKind = "upgrade" | "downgrade" | "same_price" | "interval_change" | "resubscribe" | "keep";

export interface ChangeQuote {
  kind: ChangeKind;
  timing: "now" | "period_end";
  effectiveAtMs: number;
  sub: SubscriptionRow;
  from: { plan: Plan; interval: Interval };
  to: { plan: Plan; version: number; interval: Interval };
  /** The invoice's period: the running billing period (or the new one when periods restart). */
  period: Period;
  /** Periods restart at the change (a new interval, or after a cancellation). */
  restart: boolean;
  /** The change starts the new plan's trial (an org's first): it ends here, and nothing is charged now. */
  trialEndsMs?: number;
  lines: DraftLine[];
}

const iso = (ms: number) => new Date(ms).toISOString();
const price = (plan: Plan, interval: Interval) => new Money(plan.price[interval] ?? 0);

/** The running billing period, as the billing run sees it. */
function runningPeriod(sub: SubscriptionRow, nowMs: number): Period {
  if (
    sub.billedThrough &&
    sub.nextBillingAt &&
    sub.billedThrough.getTime() <= nowMs &&
    nowMs < sub.nextBillingAt.getTime()
  )
    return { startMs: sub.billedThrough.getTime(), endMs: sub.nextBillingAt.getTime() };
  return periodAt(sub.anchorAt.getTime(), sub.interval, nowMs);
}

function prorationLine(
  deps: Deps,
  kind: "proration_credit" | "proration_charge",
  plan: Plan,
  interval: Interval,
  unitPrice: Money,
  span: Period,
  period: Period,
): DraftLine | null {
  const unit = deps.catalog.proration_unit;
  const share = periodShare(span.startMs, span.endMs, period, unit);
  if (share.isZero() || unitPrice.isZero()) return null;
  const sign = kind === "proration_credit" ? -1 : 1;
  const exact = unitPrice.times(share).times(sign);
  const currency = deps.catalog.currency;
  const day = (ms: number) => iso(ms).slice(0, 10);
  return {
    kind,
    description: `${kind === "proration_credit" ? "Unused time on" : "Remaining time on"} ${plan.name} (${interval}ly), ${day(span.startMs)} to ${day(span.endMs)}`,
    meter: null,
    model: null,
    quantity: text(share),
    unitAmount: text(unitPrice),
    amount: formatMoney(roundMoney(exact, currency), currency),
    exactAmount: text(exact),
    period: span,
    details: { proration: { unit, from: iso(span.startMs), to: iso(span.endMs), share: text(share) } },
  };
}

/**
 * Prices a change of the org's subscription to `input` at `nowMs`, without changing anything. A plan
 * with `trial_days` starts with its trial when the org never had one and is not in a paid period:
 * nothing is charged now, and the base fee starts when the trial ends.
 */
export async function quoteChange(
  deps: Deps,
  orgId: string,
  input: { plan: string; interval?: Interval | undefined },
  nowMs = deps.clock.nowMs(),
): Promise<ChangeQuote> {
  const { row } = await getSubscription(deps, orgId);
  await catchUp(deps, row.id, nowMs);
  const quote = await priceChange(deps, orgId, input, nowMs);
  const days = quote.to.plan.trial_days;
  if (quote.timing !== "now" || quote.kind === "keep" || days === 0 || quote.sub.trialEndsAt !== null)
    return quote;
  // A period someone was billed for is not given away as a trial.
  if (await billedBaseFee(deps.database.db, quote.sub.id, nowMs)) return quote;
  return {
    ...quote,
    trialEndsMs: quote.effectiveAtMs + days * 86_400_000,
    lines: quote.lines.filter((line) => line.kind === "usage" || line.kind === "minimum_spend"),
  };
}

async function priceChange(
  deps: Deps,
  orgId: string,
  input: { plan: string; interval?: Interval | undefined },
  nowMs: number,
): Promise<ChangeQuote> {
  const { row: sub, plan: fromPlan } = await getSubscription(deps, orgId);
  const { current: target, interval } = resolveTargetPlan(deps, input, sub.interval);
  const base = {
    sub,
    from: { plan: fromPlan, interval: sub.interval },
    to: { plan: target.plan, version: target.version, interval },
  };
  const running = runningPeriod(sub, nowMs);
  const samePlan =
    sub.planKey === target.plan.key && sub.planVersion === target.version && sub.interval === interval;

  if (sub.status === "canceled") {
    const period = periodAt(nowMs, interval, nowMs);
    const fee = baseFeeLine(deps, target.plan, interval, period, null);
    const lines = fee ? [fee] : [];
    return {
      ...base,
      kind: "resubscribe",
      timing: "now",
      effectiveAtMs: nowMs,
      period,
      restart: true,
      lines,
    };
  }
  if (samePlan) {
    if (sub.cancelAtPeriodEnd || sub.pendingPlanKey !== null)
      return {
        ...base,
        kind: "keep",
        timing: "now",
        effectiveAtMs: nowMs,
        period: running,
        restart: false,
        lines: [],
      };
    throw new AppError("conflict", `The org is already on ${target.plan.name} (${interval}ly).`);
  }

  const oldPrice = price(fromPlan, sub.interval);
  const newPrice = price(target.plan, interval);
  const inTrial = sub.status === "trialing" && sub.trialEndsAt !== null && sub.trialEndsAt.getTime() > nowMs;
  // Credited: only what was paid for this period, and only the part of it still ahead.
  const billed = inTrial
    ? undefined
    : await billedBaseFee(deps.database.db, sub.id, nowMs, { paidOnly: true, notBeforeMs: running.startMs });
  const rest: Period = { startMs: nowMs, endMs: running.endMs };
  const credit = billed
    ? prorationLine(
        deps,
        "proration_credit",
        fromPlan,
        sub.interval,
        billed.price,
        { startMs: nowMs, endMs: Math.min(running.endMs, billed.span.endMs) },
        running,
      )
    : null;

  if (interval !== sub.interval) {
    if (interval === "month") {
      // Annual → monthly is a downgrade: at the end of the year.
      return {
        ...base,
        kind: "downgrade",
        timing: "period_end",
        effectiveAtMs: running.endMs,
        period: running,
        restart: true,
        lines: [],
      };
    }
    // Monthly → annual: the month closes now (its usage in arrears, its unused fee credited) and the
    // year starts.
    const closed: Period = { startMs: running.startMs, endMs: nowMs };
    const year = periodAt(nowMs, interval, nowMs);
    const lines = await cycleLines(deps, sub, fromPlan, closed, null, running);
    if (credit) lines.push(credit);
    if (!inTrial) {
      const charge = prorationLine(deps, "proration_charge", target.plan, interval, newPrice, year, year);
      if (charge) lines.push(charge);
    }
    return {
      ...base,
      kind: "interval_change",
      timing: "now",
      effectiveAtMs: nowMs,
      period: closed,
      restart: true,
      lines,
    };
  }

  const immediateDowngrade = fromPlan.downgrade === "immediate";
  if (newPrice.lessThan(oldPrice) && !immediateDowngrade)
    return {
      ...base,
      kind: "downgrade",
      timing: "period_end",
      effectiveAtMs: running.endMs,
      period: running,
      restart: false,
      lines: [],
    };
  const kind: ChangeKind = newPrice.greaterThan(oldPrice)
    ? "upgrade"
    : newPrice.equals(oldPrice)
      ? "same_price"
      : "downgrade";
  const lines: DraftLine[] = [];
  if (kind !== "same_price" && !inTrial) {
    if (credit) lines.push(credit);
    const charge = prorationLine(deps, "proration_charge", target.plan, interval, newPrice, rest, running);
    if (charge) lines.push(charge);
  }
  return { ...base, kind, timing: "now", effectiveAtMs: nowMs, period: running, restart: false, lines };
}

/** A quote in the API's shape (the preview). */
export async function quoteOut(deps: Deps, quote: ChangeQuote) {
  return {
    kind: quote.kind,
    timing: quote.timing,
    effective_at: iso(quote.effectiveAtMs),
    trial_ends_at: quote.trialEndsMs !== undefined ? iso(quote.trialEndsMs) : null,
    from: { plan: quote.from.plan.key, interval: quote.from.interval },
    to: { plan: quote.to.plan.key, version: quote.to.version, interval: quote.to.interval },
    currency: deps.catalog.currency,
    lines: quote.lines.map(draftLineOut),
    ...(await previewTotals(deps, quote.sub.orgId, quote.lines)),
  };
}

/**
 * Applies a quoted change in one transaction: the subscription moves (now, or a pending change for
 * the period end), and the quote's lines post as one invoice. Returns undefined if the subscription
 * changed since the quote (the caller quotes again). The invoice still has to be collected.
 */
export async function applyChange(
  deps: Deps,
  caller: AuditEntry["actor"],
  quote: ChangeQuote,
  /** Runs in the change's transaction after the lock (a checkout claims its session): throw to abort. */
  inTransaction?: (tx: Database) => Promise<void>,
): Promise<{ invoiceId: string | null } | undefined> {
  const { sub } = quote;
  const now = deps.clock.now();
  const result = await deps.database.db.transaction(async (tx) => {
    if (!(await lockAtRevision(tx, sub))) return undefined;
    await inTransaction?.(tx);
    if (quote.timing === "period_end") {
      await tx
        .update(subscriptions)
        .set({
          pendingPlanKey: quote.to.plan.key,
          pendingPlanVersion: quote.to.version,
          pendingInterval: quote.to.interval,
          cancelAtPeriodEnd: false,
          updatedAt: now,
        })
        .where(eq(subscriptions.id, sub.id));
    } else {
      const restartAt = quote.effectiveAtMs;
      const next = quote.restart ? periodAt(restartAt, quote.to.interval, restartAt) : undefined;
      await tx
        .update(subscriptions)
        .set({
          planKey: quote.to.plan.key,
          planVersion: quote.to.version,
          interval: quote.to.interval,
          status:
            quote.trialEndsMs !== undefined ? "trialing" : sub.status === "canceled" ? "active" : sub.status,
          ...(quote.trialEndsMs !== undefined ? { trialEndsAt: new Date(quote.trialEndsMs) } : {}),
          cancelAtPeriodEnd: false,
          canceledAt: null,
          pendingPlanKey: null,
          pendingPlanVersion: null,
          pendingInterval: null,
          ...(next
            ? {
                anchorAt: new Date(restartAt),
                billedThrough: new Date(next.startMs),
                nextBillingAt: new Date(next.endMs),
              }
            : {}),
          updatedAt: now,
        })
        .where(eq(subscriptions.id, sub.id));
    }
    let invoiceId: string | null = null;
    if (quote.lines.length > 0) {
      const invoice = await writeInvoice(tx, deps, {
        orgId: sub.orgId,
        subscriptionId: sub.id,
        reason: quote.kind === "resubscribe" ? "subscription_create" : "subscription_update",
        period: quote.period,
        plan: { key: quote.to.plan.key, version: quote.to.version, interval: quote.to.interval },
        lines: quote.lines,
        dedupKey: `change:${sub.id}:${sub.revision}`,
      });
      invoiceId = invoice?.id ?? null;
    }
    await recordAudit(tx, {
      orgId: sub.orgId,
      actor: caller,
      action: quote.timing === "now" ? "subscription.plan_changed" : "subscription.change_scheduled",
      target: { type: "subscription", id: sub.id },
      metadata: {
        kind: quote.kind,
        from: { plan: sub.planKey, version: sub.planVersion, interval: sub.interval },
        to: { plan: quote.to.plan.key, version: quote.to.version, interval: quote.to.interval },
        effective_at: iso(quote.effectiveAtMs),
        invoice: invoiceId,
      },
    });
    await emitSubscriptionEvent(
      deps,
      tx,
      quote.kind === "resubscribe" ? "subscription.created" : "subscription.updated",
      sub.id,
      { previous: { plan: sub.planKey, interval: sub.interval }, invoice_id: invoiceId },
    );
    return { invoiceId };
  });
  if (result && quote.timing === "now") {
    await subscriptionChanged(deps, sub.orgId);
    // A new plan starts with full rate limiters (as an operator's plan change does).
    const keys = deps.catalog.features.filter((f) => f.type === "rate").map((f) => rateKey(sub.orgId, f.key));
    await deps.counters.delete([...keys, apiRateKey(sub.orgId)]).catch(() => {});
  }
  return result;
}

/** Cancels at the period end (the default) or now. Canceling now bills the period's usage so far. */
export async function cancelSubscription(deps: Deps, caller: Caller, orgId: string, atPeriodEnd: boolean) {
  await catchUp(deps, (await getSubscription(deps, orgId)).row.id, deps.clock.nowMs());
  const { row: sub, plan } = await getSubscription(deps, orgId);
  if (sub.status === "canceled") throw new AppError("conflict", "The subscription is already canceled.");
  const nowMs = deps.clock.nowMs();
  const now = new Date(nowMs);
  let lines: DraftLine[] = [];
  let period: Period | undefined;
  if (!atPeriodEnd) {
    const running = runningPeriod(sub, nowMs);
    period = { startMs: running.startMs, endMs: nowMs };
    lines = await cycleLines(deps, sub, plan, period, null, running);
    // No refund of the unused base fee on an immediate cancellation (as Stripe's default); credits
    // for it would go here.
  }
  const done = await deps.database.db.transaction(async (tx) => {
    if (!(await lockAtRevision(tx, sub))) return null;
    await tx
      .update(subscriptions)
      .set(
        atPeriodEnd
          ? {
              cancelAtPeriodEnd: true,
              pendingPlanKey: null,
              pendingPlanVersion: null,
              pendingInterval: null,
              updatedAt: now,
            }
          : {
              status: "canceled",
              canceledAt: now,
              cancelAtPeriodEnd: false,
              billedThrough: now,
              nextBillingAt: null,
              updatedAt: now,
            },
      )
      .where(eq(subscriptions.id, sub.id));
    let invoiceId: string | null = null;
    if (period && lines.length > 0) {
      const invoice = await writeInvoice(tx, deps, {
        orgId,
        subscriptionId: sub.id,
        reason: "subscription_update",
        period,
        plan: { key: sub.planKey, version: sub.planVersion, interval: sub.interval },
        lines,
        dedupKey: `cancel:${sub.id}:${sub.revision}`,
      });
      invoiceId = invoice?.id ?? null;
    }
    await recordAudit(tx, {
      orgId,
      actor: caller,
      action: atPeriodEnd ? "subscription.cancel_scheduled" : "subscription.canceled",
      target: { type: "subscription", id: sub.id },
      metadata: { plan: sub.planKey, at_period_end: atPeriodEnd, invoice: invoiceId },
    });
    await emitSubscriptionEvent(
      deps,
      tx,
      atPeriodEnd ? "subscription.updated" : "subscription.canceled",
      sub.id,
      {
        invoice_id: invoiceId,
      },
    );
    return { invoiceId };
  });
  if (!done) throw new AppError("conflict", "The subscription changed meanwhile; try again.");
  if (!atPeriodEnd) await subscriptionChanged(deps, orgId);
  if (done.invoiceId) await collectAfterCommit(deps, done.invoiceId);
}

/** Undoes a cancellation (or a scheduled downgrade) that has not taken effect yet. */
export async function resumeSubscription(deps: Deps, caller: Caller, orgId: string) {
  await catchUp(deps, (await getSubscription(deps, orgId)).row.id, deps.clock.nowMs());
  const { row: sub } = await getSubscription(deps, orgId);
  if (sub.status === "canceled")
    throw new AppError("conflict", "The subscription has ended; subscribe to a plan again instead.");
  if (!sub.cancelAtPeriodEnd && sub.pendingPlanKey === null)
    throw new AppError("conflict", "There is no scheduled cancellation or change to undo.");
  const now = deps.clock.now();
  const resumed = await deps.database.db.transaction(async (tx) => {
    if (!(await lockAtRevision(tx, sub))) return false;
    await tx
      .update(subscriptions)
      .set({
        cancelAtPeriodEnd: false,
        pendingPlanKey: null,
        pendingPlanVersion: null,
        pendingInterval: null,
        updatedAt: now,
      })
      .where(eq(subscriptions.id, sub.id));
    await recordAudit(tx, {
      orgId,
      actor: caller,
      action: "subscription.resumed",
      target: { type: "subscription", id: sub.id },
      metadata: { plan: sub.planKey },
    });
    await emitSubscriptionEvent(deps, tx, "subscription.resumed", sub.id);
    return true;
  });
  if (!resumed) throw new AppError("conflict", "The subscription changed meanwhile; try again.");
}
