import { and, asc, eq, gt, isNull, or, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { coupons, creditGrants, creditLedger, invoiceDiscounts, orgCoupons, orgs } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { newId } from "../../lib/ids.js";
import { formatMoney, Money, roundMoney } from "./money.js";

/**
 * What comes off an invoice after its lines, exactly as the catalog spec orders it: coupons one after
 * another in the order they were applied, each on what is left (fixed 10 then 20% of 100 → 10 + 18),
 * then credits, oldest expiring first. An invoice never goes below zero; a negative subtotal (an
 * immediate downgrade) becomes a credit grant instead of being lost.
 */

type OrgCouponRow = typeof orgCoupons.$inferSelect;
type CouponRow = typeof coupons.$inferSelect;

export interface PlannedDiscount {
  orgCouponId: string;
  code: string;
  amount: Money;
  /** The coupon's state after this invoice. */
  next: Pick<OrgCouponRow, "periodsUsed" | "remainingAmount" | "status">;
}

export interface Adjustments {
  subtotal: Money;
  discounts: PlannedDiscount[];
  /** Coupons found used up on the way (a repeating coupon past its periods). */
  exhausted: string[];
  discount: Money;
  total: Money;
  credits: { grantId: string; amount: Money }[];
  creditsApplied: Money;
  amountDue: Money;
  /** A negative subtotal, given back as credit. */
  overflow: Money;
}

const ZERO = new Money(0);

/** Each of the org's usable credit grants with its balance, oldest expiring first. */
export async function creditBalances(db: Database, orgId: string, nowMs: number) {
  const rows = await db
    .select({
      id: creditGrants.id,
      expiresAt: creditGrants.expiresAt,
      // Written out: inside a subquery, drizzle would leave the outer column unqualified.
      balance: sql<string>`coalesce((select sum(l.amount) from credit_ledger l where l.grant_id = "credit_grants"."id"), 0)::text`,
    })
    .from(creditGrants)
    .where(
      and(
        eq(creditGrants.orgId, orgId),
        or(isNull(creditGrants.expiresAt), gt(creditGrants.expiresAt, new Date(nowMs))),
      ),
    )
    .orderBy(
      sql`${creditGrants.expiresAt} asc nulls last`,
      asc(creditGrants.createdAt),
      asc(creditGrants.id),
    );
  return rows.map((r) => ({ ...r, balance: new Money(r.balance) })).filter((r) => r.balance.greaterThan(0));
}

/**
 * Plans the invoice's discounts and credits. With `lock`, the org row is locked first so that two
 * invoices of one org take coupons and credits one after the other (call it in the writing
 * transaction); without, it is a read for previews.
 */
export async function planAdjustments(
  db: Database,
  deps: Deps,
  orgId: string,
  subtotal: Money,
  options: { lock: boolean },
): Promise<Adjustments> {
  const currency = deps.catalog.currency;
  const out: Adjustments = {
    subtotal,
    discounts: [],
    exhausted: [],
    discount: ZERO,
    total: Money.max(subtotal, 0),
    credits: [],
    creditsApplied: ZERO,
    amountDue: Money.max(subtotal, 0),
    overflow: subtotal.isNegative() ? subtotal.neg() : ZERO,
  };
  if (options.lock) await db.select({ id: orgs.id }).from(orgs).where(eq(orgs.id, orgId)).for("update");
  if (!subtotal.greaterThan(0)) return out;

  let left = subtotal;
  const applied = await db
    .select({ org: orgCoupons, coupon: coupons })
    .from(orgCoupons)
    .innerJoin(coupons, eq(coupons.id, orgCoupons.couponId))
    .where(and(eq(orgCoupons.orgId, orgId), eq(orgCoupons.status, "active")))
    .orderBy(asc(orgCoupons.appliedAt), asc(orgCoupons.id));
  for (const { org, coupon } of applied) {
    if (!left.greaterThan(0)) break;
    const planned = planCoupon(org, coupon, left, deps.clock.nowMs(), currency);
    if (planned === "exhausted") {
      out.exhausted.push(org.id);
      continue;
    }
    if (!planned.amount.greaterThan(0)) continue;
    out.discounts.push(planned);
    left = left.minus(planned.amount);
  }
  out.discount = subtotal.minus(left);
  out.total = left;

  for (const grant of await creditBalances(db, orgId, deps.clock.nowMs())) {
    if (!left.greaterThan(0)) break;
    const amount = Money.min(grant.balance, left);
    out.credits.push({ grantId: grant.id, amount });
    left = left.minus(amount);
  }
  out.creditsApplied = out.total.minus(left);
  out.amountDue = left;
  return out;
}

/**
 * One coupon on what is left of an invoice, or "exhausted" when its duration is over:
 * - `once`: a percentage discounts one invoice; a fixed amount discounts until it is used up;
 * - `repeating`: every invoice written before `ends_at` (n periods of the org's interval from the
 *   redemption, as Stripe counts months);
 * - `forever`: every invoice.
 */
function planCoupon(
  org: OrgCouponRow,
  coupon: CouponRow,
  left: Money,
  nowMs: number,
  currency: string,
): PlannedDiscount | "exhausted" {
  const onceFixed = coupon.duration === "once" && coupon.type === "fixed_amount";
  if (coupon.duration === "repeating" && org.endsAt !== null && nowMs >= org.endsAt.getTime())
    return "exhausted";
  if (coupon.duration === "once" && !onceFixed && org.periodsUsed >= 1) return "exhausted";
  let amount: Money;
  let remaining = org.remainingAmount;
  if (coupon.type === "percentage") {
    amount = roundMoney(left.times(coupon.percentOff ?? 0).div(100), currency);
  } else {
    // Capped at what is left; a once coupon keeps its unused remainder for later invoices.
    const available = new Money(
      onceFixed ? (org.remainingAmount ?? coupon.amountOff ?? 0) : (coupon.amountOff ?? 0),
    );
    amount = Money.min(available, left);
    if (onceFixed) remaining = available.minus(amount).toFixed();
  }
  const usedUp = onceFixed ? new Money(remaining ?? 0).isZero() : coupon.duration === "once";
  return {
    orgCouponId: org.id,
    code: coupon.code,
    amount,
    next: {
      periodsUsed: org.periodsUsed + 1,
      remainingAmount: remaining,
      status: usedUp ? "exhausted" : "active",
    },
  };
}

/** Writes what {@link planAdjustments} planned for an invoice, in the invoice's transaction. */
export async function recordAdjustments(
  tx: Database,
  deps: Deps,
  invoiceId: string,
  orgId: string,
  adjustments: Adjustments,
): Promise<void> {
  const now = deps.clock.now();
  let position = 0;
  for (const discount of adjustments.discounts) {
    await tx.insert(invoiceDiscounts).values({
      invoiceId,
      position: position++,
      orgCouponId: discount.orgCouponId,
      code: discount.code,
      amount: discount.amount.toFixed(),
    });
    await tx.update(orgCoupons).set(discount.next).where(eq(orgCoupons.id, discount.orgCouponId));
  }
  for (const id of adjustments.exhausted)
    await tx.update(orgCoupons).set({ status: "exhausted" }).where(eq(orgCoupons.id, id));
  for (const credit of adjustments.credits) {
    await tx.insert(creditLedger).values({
      id: newId("ledger"),
      orgId,
      grantId: credit.grantId,
      invoiceId,
      kind: "apply",
      amount: credit.amount.neg().toFixed(),
      createdAt: now,
    });
  }
  if (adjustments.overflow.greaterThan(0))
    await grantCredit(tx, deps, orgId, {
      amount: adjustments.overflow,
      source: "proration",
      reason: `Unused time, invoice ${invoiceId}`,
      expiresAt: null,
    });
}

/** Adds credit to an org: a grant and its ledger entry. */
export async function grantCredit(
  tx: Database,
  deps: Deps,
  orgId: string,
  input: {
    amount: Money;
    source: "manual" | "proration" | "referral" | "purchase" | "credit_note" | "overpayment";
    reason: string | null;
    expiresAt: Date | null;
  },
) {
  const now = deps.clock.now();
  const id = newId("credit");
  await tx.insert(creditGrants).values({
    id,
    orgId,
    amount: input.amount.toFixed(),
    currency: deps.catalog.currency,
    source: input.source,
    reason: input.reason,
    expiresAt: input.expiresAt,
    createdAt: now,
  });
  await tx.insert(creditLedger).values({
    id: newId("ledger"),
    orgId,
    grantId: id,
    kind: "grant",
    amount: input.amount.toFixed(),
    createdAt: now,
  });
  return id;
}

/** Expired grants with a balance left: each gets an `expire` entry for it (history is not edited). */
export async function expireCredits(deps: Deps, nowMs: number): Promise<number> {
  const rows = await deps.database.query<{ id: string; org_id: string; balance: string }>(sql`
    select g.id, g.org_id, coalesce(sum(l.amount), 0)::text as balance
    from credit_grants g left join credit_ledger l on l.grant_id = g.id
    where g.expires_at is not null and g.expires_at <= ${new Date(nowMs).toISOString()}
    group by g.id, g.org_id
    having coalesce(sum(l.amount), 0) > 0
    limit 1000`);
  const now = deps.clock.now();
  for (const row of rows) {
    await deps.database.db.transaction(async (tx) => {
      // Serialised with invoices of the org (they lock the org row): the balance is read again.
      await tx.select({ id: orgs.id }).from(orgs).where(eq(orgs.id, row.org_id)).for("update");
      const [fresh] = await tx
        .select({ balance: sql<string>`coalesce(sum(${creditLedger.amount}), 0)::text` })
        .from(creditLedger)
        .where(eq(creditLedger.grantId, row.id));
      const balance = new Money(fresh?.balance ?? 0);
      if (!balance.greaterThan(0)) return;
      await tx.insert(creditLedger).values({
        id: newId("ledger"),
        orgId: row.org_id,
        grantId: row.id,
        kind: "expire",
        amount: balance.neg().toFixed(),
        createdAt: now,
      });
    });
  }
  return rows.length;
}

/** The totals a preview shows: what the invoice would take off and leave due, were it written now. */
export async function previewTotals(deps: Deps, orgId: string, lines: readonly { amount: string }[]) {
  const currency = deps.catalog.currency;
  const subtotal = lines.reduce((sum, line) => sum.plus(line.amount), new Money(0));
  const adjustments = await planAdjustments(deps.database.db, deps, orgId, subtotal, {
    lock: false,
  });
  return {
    subtotal: formatMoney(subtotal, currency),
    discounts: adjustments.discounts.map((d) => ({ code: d.code, amount: formatMoney(d.amount, currency) })),
    discount: formatMoney(adjustments.discount, currency),
    total: formatMoney(adjustments.total, currency),
    credits_applied: formatMoney(adjustments.creditsApplied, currency),
    amount_due: formatMoney(adjustments.amountDue, currency),
  };
}
