import { and, desc, eq, gt, gte, inArray, lt, lte, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import {
  creditNotes,
  type InvoiceLineKind,
  type InvoiceReason,
  invoiceDiscounts,
  invoiceLines,
  invoiceSequences,
  invoices,
  type subscriptions,
} from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { newId } from "../../lib/ids.js";
import type { Charge, Interval, Meter, Plan } from "../catalog/schema.js";
import { aggregatePeriod } from "../metering/usage.js";
import type { Period } from "../plans/periods.js";
import { emitEvent } from "../webhooks/events.js";
import { planAdjustments, recordAdjustments } from "./adjustments.js";
import { invoiceEventData } from "./events.js";
import { chargeLines } from "./lines.js";
import { formatMoney, Money, roundMoney, text } from "./money.js";
import { periodShare } from "./proration.js";

/**
 * Invoices: how a billing period becomes lines (usage in arrears, the next base fee in advance), how an
 * invoice is written and finalized (a gapless number, then immutable), and how it reads back.
 */

type SubscriptionRow = typeof subscriptions.$inferSelect;
type InvoiceRow = typeof invoices.$inferSelect;
type LineRow = typeof invoiceLines.$inferSelect;
type DiscountRow = typeof invoiceDiscounts.$inferSelect;

/** A line before it is written. Amounts are rounded to the currency's minor unit; `exact` is not. */
export interface DraftLine {
  kind: InvoiceLineKind;
  description: string;
  meter: string | null;
  model: string | null;
  quantity: string | null;
  unitAmount: string | null;
  amount: string;
  exactAmount: string;
  period: Period;
  details: Record<string, unknown> | null;
}

const iso = (ms: number) => new Date(ms).toISOString();
const day = (ms: number) => iso(ms).slice(0, 10);

/** The transactions a percentage charge walks: the period's events of its meter, in timestamp order. */
async function transactionsOf(deps: Deps, orgId: string, meter: string, period: Period) {
  const rows = await deps.database.query<{ value: string }>(sql`
    select value::text as value from usage_events
    where org_id = ${orgId} and meter = ${meter}
      and period_start >= ${iso(period.startMs)} and period_start < ${iso(period.endMs)}
    order by timestamp, received_at, batch_position, event_id`);
  return rows.map((row) => ({ value: row.value }));
}

/** One charge's lines for a closed (or, for the upcoming invoice, running) period. */
async function usageLines(deps: Deps, orgId: string, charge: Charge, period: Period): Promise<DraftLine[]> {
  const meter = deps.catalog.meters.find((m) => m.key === charge.meter);
  // A grandfathered plan version may price a meter the catalog has since dropped: nothing to count.
  const quantity = meter ? await aggregatePeriod(deps, orgId, meter as Meter, period) : "0";
  const transactions =
    charge.model === "percentage" ? await transactionsOf(deps, orgId, charge.meter, period) : undefined;
  const name = meter?.name ?? charge.meter;
  return chargeLines(
    charge,
    { quantity, ...(transactions ? { transactions } : {}) },
    deps.catalog.currency,
  ).map((line) => {
    const { tiers, packages, percentage } = line;
    const details = {
      capped: line.capped,
      ...(tiers ? { tiers } : {}),
      ...(packages ? { packages } : {}),
      ...(percentage ? { percentage } : {}),
    };
    return {
      kind: line.kind,
      description: line.kind === "minimum_spend" ? `${name}: minimum spend` : name,
      meter: line.meter,
      model: line.model,
      quantity: line.quantity,
      unitAmount: charge.model === "standard" ? charge.unit_amount : null,
      amount: line.amount,
      exactAmount: line.exact_amount,
      period,
      details: line.kind === "usage" ? details : null,
    };
  });
}

/**
 * The base fee for `period`, billed in advance; nothing for a free plan. A trial that covers part of
 * the period makes it free until the trial ends (prorated by the catalog's unit), all of it: no line.
 */
export function baseFeeLine(
  deps: Deps,
  plan: Plan,
  interval: Interval,
  period: Period,
  trialEndsMs: number | null,
  /** Bill only up to here (a period cut short by a cancellation), still prorated over the whole period. */
  untilMs: number = period.endMs,
): DraftLine | null {
  const price = plan.price[interval];
  if (price === undefined || new Money(price).isZero()) return null;
  const fromMs = trialEndsMs !== null && trialEndsMs > period.startMs ? trialEndsMs : period.startMs;
  const toMs = Math.min(untilMs, period.endMs);
  if (fromMs >= toMs) return null;
  const unit = deps.catalog.proration_unit;
  const share = periodShare(fromMs, toMs, period, unit);
  const exact = new Money(price).times(share);
  const currency = deps.catalog.currency;
  const prorated = fromMs > period.startMs || toMs < period.endMs;
  return {
    kind: "base_fee",
    description: `${plan.name} (${interval}ly), ${day(fromMs)} to ${day(toMs)}${fromMs > period.startMs ? ", after the trial" : ""}`,
    meter: null,
    model: null,
    quantity: prorated ? text(share) : "1",
    unitAmount: price,
    amount: formatMoney(roundMoney(exact, currency), currency),
    exactAmount: text(exact),
    period: { startMs: fromMs, endMs: toMs },
    details: prorated ? { proration: { unit, from: iso(fromMs), to: iso(toMs), share: text(share) } } : null,
  };
}

/**
 * The base fee the subscription was actually billed for the instant `atMs` (a base fee or proration
 * charge line covering it, on an invoice that was not voided): what an upgrade credits back. None
 * during a trial or a comp, so nothing is credited that was never charged.
 */
export async function billedBaseFee(
  db: Database,
  subscriptionId: string,
  atMs: number,
  options: { paidOnly?: boolean; notBeforeMs?: number } = {},
) {
  const at = new Date(atMs);
  const [row] = await db
    .select({
      unitAmount: invoiceLines.unitAmount,
      start: invoiceLines.periodStart,
      end: invoiceLines.periodEnd,
    })
    .from(invoiceLines)
    .innerJoin(invoices, eq(invoices.id, invoiceLines.invoiceId))
    .where(
      and(
        eq(invoices.subscriptionId, subscriptionId),
        inArray(invoices.status, options.paidOnly ? ["paid"] : ["finalized", "paid"]),
        inArray(invoiceLines.kind, ["base_fee", "proration_charge"]),
        lte(invoiceLines.periodStart, at),
        gt(invoiceLines.periodEnd, at),
        options.notBeforeMs !== undefined
          ? gte(invoiceLines.periodStart, new Date(options.notBeforeMs))
          : undefined,
      ),
    )
    .orderBy(desc(invoices.id), desc(invoiceLines.position))
    .limit(1);
  if (!row?.unitAmount) return undefined;
  return {
    price: new Money(row.unitAmount),
    span: { startMs: row.start.getTime(), endMs: row.end.getTime() },
  };
}

/** What the period after the one being closed is billed for: its plan, interval and span. */
export interface NextPeriod {
  plan: Plan;
  interval: Interval;
  period: Period;
}

/**
 * The lines that close `period` on `plan`:
 * - each charge's usage, in arrears;
 * - the part of the period after a trial that ended in it, when no invoice billed it yet (the first
 *   period has no invoice in advance);
 * - the base fee of the next period in advance (when there is one: a cancellation has none).
 */
export async function cycleLines(
  deps: Deps,
  sub: Pick<SubscriptionRow, "id" | "orgId" | "interval" | "trialEndsAt">,
  plan: Plan,
  period: Period,
  next: NextPeriod | null,
  /** The whole billing period when `period` is cut short (a cancellation now, an interval change). */
  full: Period = period,
): Promise<DraftLine[]> {
  const lines: DraftLine[] = [];
  for (const charge of plan.charges) lines.push(...(await usageLines(deps, sub.orgId, charge, period)));
  const db = deps.database.db;
  const trialEndsMs = sub.trialEndsAt?.getTime() ?? null;
  if (
    trialEndsMs !== null &&
    trialEndsMs > full.startMs &&
    trialEndsMs < period.endMs &&
    !(await billedBaseFee(db, sub.id, trialEndsMs))
  ) {
    const rest = baseFeeLine(deps, plan, sub.interval, full, trialEndsMs, period.endMs);
    if (rest) lines.push(rest);
  }
  if (next) {
    // Billed already (a trial's end invoiced it)? Then not again.
    const from = Math.max(next.period.startMs, trialEndsMs ?? 0);
    const billed = from < next.period.endMs ? await billedBaseFee(db, sub.id, from) : undefined;
    const base = billed ? null : baseFeeLine(deps, next.plan, next.interval, next.period, trialEndsMs);
    if (base) lines.push(base);
  }
  return lines;
}

/** What an invoice adds up to, from its rounded lines. */
export function totalsOf(lines: readonly DraftLine[], currency: string) {
  const subtotal = lines.reduce((sum, line) => sum.plus(line.amount), new Money(0));
  return { subtotal: formatMoney(subtotal, currency), total: formatMoney(Money.max(subtotal, 0), currency) };
}

/**
 * The next number of a document sequence (`INV-000001`, `CN-000001`), under the sequence row's lock:
 * gapless, because a rollback returns it.
 */
export async function nextNumber(tx: Database, name = "invoices", prefix = "INV"): Promise<string> {
  const [row] = await tx
    .insert(invoiceSequences)
    .values({ name, next: 2 })
    .onConflictDoUpdate({ target: invoiceSequences.name, set: { next: sql`${invoiceSequences.next} + 1` } })
    .returning({ next: invoiceSequences.next });
  if (!row) throw new Error(`${name} sequence missing`);
  return `${prefix}-${String(row.next - 1).padStart(6, "0")}`;
}

export interface NewInvoice {
  orgId: string;
  subscriptionId: string | null;
  reason: InvoiceReason;
  period: Period;
  plan: { key: string; version: number; interval: Interval } | null;
  lines: DraftLine[];
  dedupKey: string;
}

/**
 * Writes an invoice and finalizes it in the caller's transaction: a gapless number, then immutable.
 * Nothing due (a zero total) is paid at once, as Stripe does. Returns undefined when an invoice with
 * the same dedup key exists (the work was done before).
 */
export async function writeInvoice(
  tx: Database,
  deps: Deps,
  input: NewInvoice,
): Promise<InvoiceRow | undefined> {
  const now = deps.clock.now();
  const currency = deps.catalog.currency;
  const { subtotal, total } = totalsOf(input.lines, currency);
  const id = newId("invoice");
  const [draft] = await tx
    .insert(invoices)
    .values({
      id,
      orgId: input.orgId,
      subscriptionId: input.subscriptionId,
      status: "draft",
      reason: input.reason,
      currency,
      periodStart: new Date(input.period.startMs),
      periodEnd: new Date(input.period.endMs),
      planKey: input.plan?.key ?? null,
      planVersion: input.plan?.version ?? null,
      interval: input.plan?.interval ?? null,
      subtotal,
      total,
      amountDue: total,
      dedupKey: input.dedupKey,
      createdAt: now,
      updatedAt: now,
    })
    .onConflictDoNothing({ target: invoices.dedupKey })
    .returning();
  if (!draft) return undefined;
  if (input.lines.length > 0) {
    await tx.insert(invoiceLines).values(
      input.lines.map((line, position) => ({
        invoiceId: id,
        position,
        kind: line.kind,
        description: line.description,
        meter: line.meter,
        model: line.model,
        quantity: line.quantity,
        unitAmount: line.unitAmount,
        amount: line.amount,
        exactAmount: line.exactAmount,
        periodStart: new Date(line.period.startMs),
        periodEnd: new Date(line.period.endMs),
        details: line.details,
      })),
    );
  }
  // Coupons and credits, under the org's lock, in the invoice's transaction.
  const adjustments = await planAdjustments(tx, deps, input.orgId, new Money(subtotal), {
    lock: true,
  });
  await recordAdjustments(tx, deps, id, input.orgId, adjustments);
  const paid = adjustments.amountDue.isZero();
  const [finalized] = await tx
    .update(invoices)
    .set({
      status: paid ? "paid" : "finalized",
      number: await nextNumber(tx),
      discount: formatMoney(adjustments.discount, currency),
      creditsApplied: formatMoney(adjustments.creditsApplied, currency),
      total: formatMoney(adjustments.total, currency),
      amountDue: formatMoney(adjustments.amountDue, currency),
      finalizedAt: now,
      dueAt: now,
      ...(paid ? { paidAt: now } : {}),
      updatedAt: now,
    })
    .where(eq(invoices.id, id))
    .returning();
  if (finalized) {
    await emitEvent(deps, tx, {
      orgId: input.orgId,
      type: "invoice.finalized",
      data: invoiceEventData(finalized),
    });
    // Nothing to collect (coupons and credits covered it): paid as it was issued.
    if (paid)
      await emitEvent(deps, tx, {
        orgId: input.orgId,
        type: "invoice.paid",
        data: invoiceEventData(finalized),
      });
  }
  return finalized;
}

// ---------------------------------------------------------------------------------------------
// Reading

/** A line not written yet (the upcoming invoice, a preview), in the API's shape. */
export function draftLineOut(line: DraftLine) {
  return {
    kind: line.kind,
    description: line.description,
    meter: line.meter,
    model: line.model,
    quantity: line.quantity,
    unit_amount: line.unitAmount,
    amount: line.amount,
    exact_amount: line.exactAmount,
    period_start: new Date(line.period.startMs).toISOString(),
    period_end: new Date(line.period.endMs).toISOString(),
    details: line.details,
  };
}

function lineOut(line: LineRow) {
  return {
    kind: line.kind,
    description: line.description,
    meter: line.meter,
    model: line.model,
    quantity: line.quantity,
    unit_amount: line.unitAmount,
    amount: line.amount,
    exact_amount: line.exactAmount,
    period_start: line.periodStart.toISOString(),
    period_end: line.periodEnd.toISOString(),
    details: line.details,
  };
}

/** Numeric columns come back as Postgres writes them ("5.00"); shown in the currency's format. */
const money = (value: string, currency: string) => formatMoney(new Money(value), currency);

export type Credited = { total: string; outstanding: string };

export function invoiceOut(
  row: InvoiceRow,
  lines: LineRow[],
  discounts: DiscountRow[] = [],
  credited: Credited = { total: "0", outstanding: "0" },
) {
  const c = row.currency;
  return {
    id: row.id,
    org_id: row.orgId,
    subscription_id: row.subscriptionId,
    number: row.number,
    status: row.status,
    reason: row.reason,
    currency: c,
    period_start: row.periodStart.toISOString(),
    period_end: row.periodEnd.toISOString(),
    plan: row.planKey,
    plan_version: row.planVersion,
    interval: row.interval,
    lines: lines.map((line) => ({ ...lineOut(line), amount: money(line.amount, c) })),
    subtotal: money(row.subtotal, c),
    discounts: discounts.map((d) => ({ code: d.code, amount: money(d.amount, c) })),
    discount: money(row.discount, c),
    credits_applied: money(row.creditsApplied, c),
    total: money(row.total, c),
    amount_due: money(row.amountDue, c),
    amount_paid: money(row.amountPaid, c),
    amount_credited: money(credited.total, c),
    amount_remaining:
      row.status === "finalized"
        ? money(new Money(row.amountDue).minus(credited.outstanding).toFixed(), c)
        : money("0", c),
    created_at: row.createdAt.toISOString(),
    finalized_at: row.finalizedAt?.toISOString() ?? null,
    due_at: row.dueAt?.toISOString() ?? null,
    paid_at: row.paidAt?.toISOString() ?? null,
    voided_at: row.voidedAt?.toISOString() ?? null,
  };
}

/** What credit notes took off each invoice: in all, and off what was left to pay while it was open. */
async function creditedOf(db: Database, ids: string[]): Promise<Map<string, Credited>> {
  if (ids.length === 0) return new Map();
  const rows = await db
    .select({
      invoiceId: creditNotes.invoiceId,
      total: sql<string>`sum(${creditNotes.amount})::text`,
      outstanding: sql<string>`sum(${creditNotes.outstandingAmount})::text`,
    })
    .from(creditNotes)
    .where(inArray(creditNotes.invoiceId, ids))
    .groupBy(creditNotes.invoiceId);
  return new Map(rows.map((r) => [r.invoiceId, { total: r.total, outstanding: r.outstanding }]));
}

/** Rows of an invoice child table for several invoices at once, grouped per invoice in position order. */
async function byInvoice<T extends typeof invoiceLines | typeof invoiceDiscounts>(
  db: Database,
  table: T,
  ids: string[],
): Promise<Map<string, T["$inferSelect"][]>> {
  const grouped = new Map<string, T["$inferSelect"][]>(ids.map((id) => [id, []]));
  if (ids.length === 0) return grouped;
  const rows = (await db
    .select()
    .from(table as typeof invoiceLines)
    .where(inArray(table.invoiceId, ids))
    .orderBy(table.invoiceId, table.position)) as T["$inferSelect"][];
  for (const row of rows) grouped.get(row.invoiceId)?.push(row);
  return grouped;
}

const linesOf = (db: Database, ids: string[]) => byInvoice(db, invoiceLines, ids);
const discountsOf = (db: Database, ids: string[]) => byInvoice(db, invoiceDiscounts, ids);

/** An org's invoices, newest first, drafts included. */
export async function listInvoices(deps: Deps, orgId: string, limit: number, before?: string) {
  const db = deps.database.db;
  const rows = await db
    .select()
    .from(invoices)
    .where(and(eq(invoices.orgId, orgId), before ? lt(invoices.id, before) : undefined))
    .orderBy(desc(invoices.id))
    .limit(limit);
  const ids = rows.map((r) => r.id);
  const [lines, discounts, credited] = await Promise.all([
    linesOf(db, ids),
    discountsOf(db, ids),
    creditedOf(db, ids),
  ]);
  return rows.map((row) =>
    invoiceOut(row, lines.get(row.id) ?? [], discounts.get(row.id) ?? [], credited.get(row.id)),
  );
}

/** One of the org's invoices; 404 for another org's. */
export async function getInvoice(deps: Deps, orgId: string, id: string) {
  const db = deps.database.db;
  const [row] = await db
    .select()
    .from(invoices)
    .where(and(eq(invoices.orgId, orgId), eq(invoices.id, id)));
  if (!row) throw new AppError("not_found", `No invoice ${id}.`);
  const [lines, discounts, credited] = await Promise.all([
    linesOf(db, [row.id]),
    discountsOf(db, [row.id]),
    creditedOf(db, [row.id]),
  ]);
  return invoiceOut(row, lines.get(row.id) ?? [], discounts.get(row.id) ?? [], credited.get(row.id));
}
