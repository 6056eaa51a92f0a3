import { z } from "@hono/zod-openapi";
import { and, asc, desc, eq, isNull, lt, or, sql } from "drizzle-orm";
import { coupons, creditGrants, creditLedger, orgCoupons } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { newId } from "../../lib/ids.js";
import { recordAudit } from "../audit/service.js";
import type { Caller } from "../auth/caller.js";
import { amount, percent } from "../catalog/fields.js";
import { periodStart } from "../plans/periods.js";
import { getSubscription } from "../plans/subscriptions.js";
import { creditBalances, grantCredit } from "./adjustments.js";
import { formatMoney, Money } from "./money.js";

/** Coupons (created by the operator, redeemed by orgs) and credit grants. Semantics: adjustments.ts. */

/** A decimal field of bounded length (a JSON number or a string). */
const bounded = (schema: ReturnType<typeof amount>) => z.union([z.string().max(40), z.number()]).pipe(schema);

export const CreateCoupon = z
  .strictObject({
    code: z
      .string()
      .regex(/^[A-Za-z0-9_-]{3,64}$/, "3 to 64 letters, digits, _ or -")
      .openapi({ example: "LAUNCH20" }),
    name: z.string().min(1).max(200).optional(),
    type: z.enum(["percentage", "fixed_amount"]),
    percent_off: bounded(percent()).optional().openapi({ type: "string", example: "20" }),
    amount_off: bounded(amount()).optional().openapi({ type: "string", example: "10.00" }),
    currency: z
      .string()
      .regex(/^[A-Z]{3}$/)
      .optional()
      .openapi({ description: "fixed_amount: must be the catalog's currency (the default)." }),
    duration: z.enum(["once", "repeating", "forever"]),
    duration_periods: z.number().int().min(1).max(1200).optional(),
    max_redemptions: z.number().int().min(1).max(1_000_000_000).optional(),
    redeem_by: z.iso.datetime({ offset: true }).optional(),
  })
  .superRefine((body, ctx) => {
    const issue = (path: string, message: string) => ctx.addIssue({ code: "custom", path: [path], message });
    if (body.type === "percentage") {
      if (body.percent_off === undefined) issue("percent_off", "is required for a percentage coupon");
      else if (new Money(body.percent_off).isZero()) issue("percent_off", "must be more than 0");
      if (body.amount_off !== undefined) issue("amount_off", "only applies to fixed_amount coupons");
    } else {
      if (body.amount_off === undefined) issue("amount_off", "is required for a fixed_amount coupon");
      else if (new Money(body.amount_off).isZero()) issue("amount_off", "must be more than 0");
      if (body.percent_off !== undefined) issue("percent_off", "only applies to percentage coupons");
    }
    if (body.duration === "repeating" && body.duration_periods === undefined)
      issue("duration_periods", "is required for a repeating coupon");
    if (body.duration !== "repeating" && body.duration_periods !== undefined)
      issue("duration_periods", "only applies to repeating coupons");
  })
  .openapi("CreateCoupon");

type CouponRow = typeof coupons.$inferSelect;

export function couponOut(row: CouponRow, currency: string) {
  return {
    id: row.id,
    code: row.code,
    name: row.name,
    type: row.type,
    percent_off: row.percentOff === null ? null : new Money(row.percentOff).toFixed(),
    amount_off: row.amountOff === null ? null : formatMoney(new Money(row.amountOff), currency),
    currency: row.currency,
    duration: row.duration,
    duration_periods: row.durationPeriods,
    max_redemptions: row.maxRedemptions,
    redemptions: row.redemptions,
    redeem_by: row.redeemBy?.toISOString() ?? null,
    created_at: row.createdAt.toISOString(),
  };
}

export async function createCoupon(deps: Deps, input: z.output<typeof CreateCoupon>) {
  const currency = deps.catalog.currency;
  if (input.type === "fixed_amount" && input.currency !== undefined && input.currency !== currency) {
    throw new AppError(
      "validation_failed",
      `Fixed-amount coupons are in the catalog's currency, ${currency}.`,
      {
        errors: [
          { field: "currency", message: `must be ${currency}`, code: "currency_mismatch", location: "body" },
        ],
      },
    );
  }
  const row = {
    id: newId("coupon"),
    code: input.code.toUpperCase(),
    name: input.name ?? null,
    type: input.type,
    percentOff: input.percent_off ?? null,
    amountOff: input.amount_off ?? null,
    currency: input.type === "fixed_amount" ? currency : null,
    duration: input.duration,
    durationPeriods: input.duration_periods ?? null,
    maxRedemptions: input.max_redemptions ?? null,
    redeemBy: input.redeem_by ? new Date(input.redeem_by) : null,
    createdAt: deps.clock.now(),
  };
  const [created] = await deps.database.db
    .insert(coupons)
    .values(row)
    .onConflictDoNothing({ target: coupons.code })
    .returning();
  if (!created) throw new AppError("conflict", `A coupon with the code ${row.code} exists.`);
  return couponOut(created, currency);
}

export async function listCoupons(deps: Deps) {
  const rows = await deps.database.db.select().from(coupons).orderBy(desc(coupons.id)).limit(500);
  return rows.map((row) => couponOut(row, deps.catalog.currency));
}

const unknownCoupon = (code: string) =>
  new AppError("validation_failed", `There is no coupon ${code}.`, {
    errors: [
      { field: "code", message: "is not a valid coupon code", code: "unknown_coupon", location: "body" },
    ],
  });

/**
 * Redeems a coupon for an org: once per org, and never past `max_redemptions` however many orgs
 * redeem at once (the count is taken in the same statement that checks it).
 */
export async function redeemCoupon(deps: Deps, caller: Caller, orgId: string, code: string) {
  const [coupon] = await deps.database.db.select().from(coupons).where(eq(coupons.code, code.toUpperCase()));
  if (!coupon) throw unknownCoupon(code);
  const now = deps.clock.now();
  const { interval } = (await getSubscription(deps, orgId)).row;
  if (coupon.redeemBy && coupon.redeemBy.getTime() <= now.getTime())
    throw new AppError("validation_failed", `Coupon ${coupon.code} has expired.`, {
      errors: [{ field: "code", message: "has expired", code: "coupon_expired", location: "body" }],
    });
  return deps.database.db.transaction(async (tx) => {
    const [existing] = await tx
      .select({ id: orgCoupons.id })
      .from(orgCoupons)
      .where(and(eq(orgCoupons.orgId, orgId), eq(orgCoupons.couponId, coupon.id)));
    if (existing)
      throw new AppError("conflict", `Coupon ${coupon.code} is already applied to this organization.`);
    const counted = await tx
      .update(coupons)
      .set({ redemptions: sql`${coupons.redemptions} + 1` })
      .where(
        and(
          eq(coupons.id, coupon.id),
          or(isNull(coupons.maxRedemptions), lt(coupons.redemptions, coupons.maxRedemptions)),
        ),
      )
      .returning({ id: coupons.id });
    if (counted.length === 0)
      throw new AppError("conflict", `Coupon ${coupon.code} has been fully redeemed.`);
    const id = newId("redemption");
    const inserted = await tx
      .insert(orgCoupons)
      .values({
        id,
        orgId,
        couponId: coupon.id,
        appliedAt: now,
        remainingAmount:
          coupon.duration === "once" && coupon.type === "fixed_amount" ? coupon.amountOff : null,
        endsAt:
          coupon.duration === "repeating"
            ? new Date(periodStart(now.getTime(), interval, coupon.durationPeriods ?? 1))
            : null,
        status: "active",
      })
      .onConflictDoNothing()
      .returning({ id: orgCoupons.id });
    if (inserted.length === 0)
      throw new AppError("conflict", `Coupon ${coupon.code} is already applied to this organization.`);
    await recordAudit(tx, {
      orgId,
      actor: caller,
      action: "coupon.redeemed",
      target: { type: "coupon", id: coupon.id },
      metadata: { code: coupon.code },
    });
    return {
      id,
      coupon: couponOut(coupon, deps.catalog.currency),
      applied_at: now.toISOString(),
      status: "active" as const,
    };
  });
}

export async function orgCouponList(deps: Deps, orgId: string) {
  const rows = await deps.database.db
    .select({ org: orgCoupons, coupon: coupons })
    .from(orgCoupons)
    .innerJoin(coupons, eq(coupons.id, orgCoupons.couponId))
    .where(eq(orgCoupons.orgId, orgId))
    .orderBy(asc(orgCoupons.appliedAt), asc(orgCoupons.id));
  const currency = deps.catalog.currency;
  return rows.map(({ org, coupon }) => ({
    id: org.id,
    coupon: couponOut(coupon, currency),
    applied_at: org.appliedAt.toISOString(),
    periods_used: org.periodsUsed,
    ends_at: org.endsAt?.toISOString() ?? null,
    remaining_amount:
      org.remainingAmount === null ? null : formatMoney(new Money(org.remainingAmount), currency),
    status: org.status,
  }));
}

export const GrantCredit = z
  .strictObject({
    amount: bounded(amount()).openapi({ type: "string", example: "25.00" }),
    reason: z.string().min(1).max(500).optional(),
    expires_at: z.iso.datetime({ offset: true }).optional(),
  })
  .openapi("GrantCredit");

export async function addCredit(
  deps: Deps,
  caller: Caller,
  orgId: string,
  input: z.output<typeof GrantCredit>,
) {
  const value = new Money(input.amount);
  if (!value.greaterThan(0))
    throw new AppError("validation_failed", "A credit must be more than zero.", {
      errors: [{ field: "amount", message: "must be more than 0", code: "too_small", location: "body" }],
    });
  const expiresAt = input.expires_at ? new Date(input.expires_at) : null;
  if (expiresAt && expiresAt.getTime() <= deps.clock.nowMs())
    throw new AppError("validation_failed", "The credit would expire at once.", {
      errors: [
        { field: "expires_at", message: "must be in the future", code: "too_small", location: "body" },
      ],
    });
  return deps.database.db.transaction(async (tx) => {
    const id = await grantCredit(tx, deps, orgId, {
      amount: value,
      source: "manual",
      reason: input.reason ?? null,
      expiresAt,
    });
    await recordAudit(tx, {
      orgId,
      actor: caller,
      action: "credit.granted",
      target: { type: "credit", id },
      metadata: { amount: value.toFixed(), expires_at: expiresAt?.toISOString() ?? null },
    });
    return id;
  });
}

/** The org's balance, its grants with what is left of each, and the ledger, newest first. */
export async function creditsOf(deps: Deps, orgId: string) {
  const db = deps.database.db;
  const currency = deps.catalog.currency;
  const usable = await creditBalances(db, orgId, deps.clock.nowMs());
  const balanceOf = new Map(usable.map((g) => [g.id, g.balance]));
  const grants = await db
    .select()
    .from(creditGrants)
    .where(eq(creditGrants.orgId, orgId))
    .orderBy(desc(creditGrants.id))
    .limit(500);
  const ledger = await db
    .select()
    .from(creditLedger)
    .where(eq(creditLedger.orgId, orgId))
    .orderBy(desc(creditLedger.id))
    .limit(500);
  const balance = usable.reduce((sum, g) => sum.plus(g.balance), new Money(0));
  return {
    currency,
    balance: formatMoney(balance, currency),
    grants: grants.map((g) => ({
      id: g.id,
      amount: formatMoney(new Money(g.amount), currency),
      balance: formatMoney(balanceOf.get(g.id) ?? new Money(0), currency),
      source: g.source,
      reason: g.reason,
      expires_at: g.expiresAt?.toISOString() ?? null,
      created_at: g.createdAt.toISOString(),
    })),
    ledger: ledger.map((l) => ({
      id: l.id,
      grant_id: l.grantId,
      invoice_id: l.invoiceId,
      kind: l.kind,
      amount: formatMoney(new Money(l.amount), currency),
      created_at: l.createdAt.toISOString(),
    })),
  };
}
