import { asc, eq, gt, sql } from "drizzle-orm";
import { type InvoiceStatus, orgs, type SubscriptionStatus, subscriptions } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import type { Interval, Plan } from "../catalog/schema.js";
import { periodAt, usagePeriodAt } from "../plans/periods.js";
import { defaultInterval } from "../plans/subscriptions.js";
import { textArray } from "./ledger.js";

/**
 * Data retention of raw usage events. A plan's `data_retention_days` says how long an org's rows in
 * `usage_events` are kept; `null` keeps them forever. Only raw events are deleted: the hourly rollups,
 * period totals and unique values are aggregates that every read (quotas, charts, bills) uses, and they
 * stay. An event older than the retention is still kept while anything may read or re-accept it:
 *
 * - **ingestion**: events are deduplicated by (org, id) against `usage_events` only, so an event deleted
 *   while ingestion could still accept its timestamp would count twice when replayed. Ingestion accepts
 *   timestamps from the start of the org's open usage period (monthly from the anchor), so nothing from
 *   that period is deleted — computed as of a day ago (batches in flight, clocks a little behind), and
 *   when the subscription changed within that day (a new anchor other processes' caches may not have
 *   yet) nothing from the last 31 days (+ the day) at all, whatever the anchor.
 * - **billing**: the period the billing run will close next (`billed_through` on), which it prices from
 *   the rollups and, for percentage charges, from the raw events; and the period of every invoice that
 *   can still be recomputed, credited against or voided without being settled: `draft` and
 *   `finalized` (open, unpaid — in dunning or uncollectible). `paid` and `void` invoices are final: no
 *   code reads their events again (credit notes credit amounts of stored lines).
 *
 * The retention is the one of the plan VERSION the org subscribes to (grandfathering: a catalog that
 * shortens `pro`'s retention changes nothing for those who bought the old `pro`), whatever the
 * subscription's status; an org without a subscription row has the default plan's current version.
 */

const DAY_MS = 86_400_000;
/** Rows deleted per statement: each statement is its own short transaction, so locks never pile up. */
export const RETENTION_BATCH_SIZE = 5000;
/**
 * How far behind "now" another process may still be accepting events: a batch validated before a
 * period boundary and committed after it, a clock slightly behind, a cached subscription not yet evicted.
 */
export const INGESTION_SLACK_MS = DAY_MS;
/** The longest usage period (a 31-day month): ingestion never accepts anything older than this. */
const MAX_USAGE_PERIOD_MS = 31 * DAY_MS;
/** Invoices that are not final: their period's raw events are kept whatever their age. */
export const OPEN_INVOICE_STATUSES = ["draft", "finalized"] as const satisfies readonly InvoiceStatus[];

const ORG_PAGE = 500;

export interface RetentionSubject {
  retentionDays: number | null;
  anchorMs: number;
  interval: Interval;
  /** Null: the org has no subscription row (billing will start it at its current period). */
  status: SubscriptionStatus | null;
  billedThroughMs: number | null;
  /** When the subscription last changed (the org's creation without one). */
  changedAtMs: number;
}

/**
 * The instant before which an org's raw events may be deleted (null: never), before the invoice
 * exclusions: the oldest of the retention cutoff, the oldest timestamp ingestion may still accept and
 * the start of the period billing has not invoiced yet.
 */
export function retentionCutoffMs(subject: RetentionSubject, nowMs: number): number | null {
  if (subject.retentionDays === null) return null;
  let cutoff = nowMs - subject.retentionDays * DAY_MS;
  // Ingestion: the open usage period as of a day ago; after a recent change, the longest period back.
  cutoff = Math.min(cutoff, usagePeriodAt(subject.anchorMs, nowMs - INGESTION_SLACK_MS).startMs);
  if (subject.changedAtMs > nowMs - INGESTION_SLACK_MS)
    cutoff = Math.min(cutoff, nowMs - INGESTION_SLACK_MS - MAX_USAGE_PERIOD_MS);
  // Billing: the period the run closes next (a run behind leaves billed_through further back). A
  // canceled subscription invoices nothing more (its last invoice, if any, is protected as an invoice).
  if (subject.status !== "canceled") {
    cutoff = Math.min(cutoff, periodAt(subject.anchorMs, subject.interval, nowMs).startMs);
    if (subject.billedThroughMs !== null) cutoff = Math.min(cutoff, subject.billedThroughMs);
  }
  return cutoff;
}

/**
 * Deletes raw usage events past their org's retention, in batches of `batchSize` rows, one short
 * statement each. Idempotent (a second run deletes nothing), and safe to run in several processes at
 * once: rows another run holds are skipped (SKIP LOCKED) and each row is counted by whoever deleted it.
 * Returns how many orgs lost events and how many events were deleted.
 */
export async function purgeExpiredUsage(
  deps: Deps,
  now: Date,
  options: { batchSize?: number } = {},
): Promise<{ orgs: number; deleted: number }> {
  const batchSize = Math.max(1, Math.floor(options.batchSize ?? RETENTION_BATCH_SIZE));
  const nowMs = now.getTime();
  const started = performance.now();
  const fallback = deps.plans.current(deps.catalog.default_plan);
  const result = { orgs: 0, deleted: 0 };
  let after = "";
  for (;;) {
    const page = await deps.database.db
      .select({
        orgId: orgs.id,
        createdAt: orgs.createdAt,
        planKey: subscriptions.planKey,
        planVersion: subscriptions.planVersion,
        interval: subscriptions.interval,
        status: subscriptions.status,
        anchorAt: subscriptions.anchorAt,
        billedThrough: subscriptions.billedThrough,
        updatedAt: subscriptions.updatedAt,
        revision: subscriptions.revision,
      })
      .from(orgs)
      .leftJoin(subscriptions, eq(subscriptions.orgId, orgs.id))
      .where(gt(orgs.id, after))
      .orderBy(asc(orgs.id))
      .limit(ORG_PAGE);
    for (const row of page) {
      let plan: Plan | undefined;
      if (row.planKey !== null && row.planVersion !== null) {
        plan = await deps.plans.load(row.planKey, row.planVersion);
        if (!plan) {
          // Never guess a retention: keep everything of an org whose plan version cannot be read.
          deps.logger.warn(
            { org: row.orgId, plan: row.planKey, version: row.planVersion },
            "usage retention: plan version missing, org skipped",
          );
          continue;
        }
      } else {
        plan = fallback?.plan;
      }
      if (!plan) continue;
      const subscribed = row.status !== null && row.anchorAt !== null && row.interval !== null;
      const cutoff = retentionCutoffMs(
        {
          retentionDays: plan.data_retention_days,
          // Without a subscription row, the one the next boot backfills: anchored at the org's creation.
          anchorMs: subscribed ? (row.anchorAt as Date).getTime() : row.createdAt.getTime(),
          interval: subscribed ? (row.interval as Interval) : defaultInterval(plan),
          status: row.status,
          billedThroughMs: row.billedThrough?.getTime() ?? null,
          changedAtMs: (row.updatedAt ?? row.createdAt).getTime(),
        },
        nowMs,
      );
      if (cutoff === null) continue;
      const deleted = await purgeOrg(deps, row.orgId, cutoff, row.revision, batchSize);
      if (deleted > 0) {
        result.orgs++;
        result.deleted += deleted;
      }
    }
    if (page.length < ORG_PAGE) break;
    after = page[page.length - 1]?.orgId ?? after;
  }
  if (result.deleted > 0)
    deps.logger.info(
      { orgs: result.orgs, deleted: result.deleted, ms: Math.round(performance.now() - started) },
      "usage retention: expired raw events deleted",
    );
  return result;
}

/**
 * One org's expired events, batch by batch. Each statement checks the subscription is still at the
 * revision the cutoff was computed from (a plan change, a new anchor, a closed period): if not, it
 * deletes nothing and the org waits for the next run, which computes its cutoff afresh.
 */
async function purgeOrg(
  deps: Deps,
  orgId: string,
  cutoffMs: number,
  revision: number | null,
  batchSize: number,
): Promise<number> {
  const cutoff = new Date(cutoffMs).toISOString();
  const unchanged =
    revision === null
      ? sql`not exists (select 1 from subscriptions where org_id = ${orgId})`
      : sql`exists (select 1 from subscriptions where org_id = ${orgId} and revision = ${revision})`;
  let total = 0;
  for (;;) {
    // Both the timestamp and the recorded usage period must be before the cutoff: billing selects a
    // period's events by `period_start`, ingestion accepts them by timestamp.
    const [row] = await deps.database.query<{ deleted: number }>(sql`
      with open_invoices as materialized (
        select period_start, period_end from invoices
        where org_id = ${orgId} and status = any(${textArray(OPEN_INVOICE_STATUSES)}::text[])
      ), doomed as (
        select e.org_id, e.event_id from usage_events e
        where e.org_id = ${orgId}
          and e."timestamp" < ${cutoff}::timestamptz
          and e.period_start < ${cutoff}::timestamptz
          and ${unchanged}
          and not exists (
            select 1 from open_invoices i
            where (e."timestamp" >= i.period_start and e."timestamp" < i.period_end)
               or (e.period_start >= i.period_start and e.period_start < i.period_end)
          )
        limit ${batchSize}
        for update of e skip locked
      ), deleted as (
        delete from usage_events u using doomed d
        where u.org_id = d.org_id and u.event_id = d.event_id
        returning 1
      )
      select count(*)::int as deleted from deleted`);
    const deleted = Number(row?.deleted ?? 0);
    total += deleted;
    if (deleted < batchSize) return total;
  }
}
