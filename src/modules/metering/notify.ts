import { and, asc, eq, inArray, isNull } from "drizzle-orm";
import { z } from "zod";
import { thresholdEvents } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { defineJob } from "../jobs/define.js";
import { sendQuotaEmails, sendUpgradeReminderEmails } from "../notifications/emails.js";
import { periodAt } from "../plans/periods.js";
import { orgPlan } from "../plans/subscriptions.js";
import { emitEvent } from "../webhooks/events.js";
import { catalogIndex, grantOf } from "./features.js";
import { upgradeFor } from "./upgrades.js";

/**
 * Threshold notifications. The metering writer records each crossing of a metered quota's thresholds
 * (80% and 100% by default) once per threshold and period (`threshold_events`, unique). This job
 * claims the crossings not yet announced and, in the same transaction that marks them announced,
 * emits one `usage.threshold_reached` webhook event and queues one e-mail job for each: exactly one
 * of each per crossing, whichever process claims it. Reaching 100% also queues an upgrade reminder
 * three days later, sent only if the org is still on that plan and the period has not reset.
 */

const BATCH = 100;
export const UPGRADE_REMINDER_DELAY_MS = 3 * 86_400_000;

export const thresholdNotifyJob = defineJob({
  name: "usage.notify_thresholds",
  schema: z.object({}).strict(),
  attempts: 1,
  run: async (deps) => {
    await notifyThresholds(deps);
  },
});

const CrossingPayload = z.object({ threshold_event_id: z.string() });

export const quotaEmailJob = defineJob({
  name: "usage.quota_email",
  schema: CrossingPayload,
  attempts: 5,
  backoffMs: 30_000,
  run: async (deps, { threshold_event_id }) => {
    const crossing = await crossingDetails(deps, threshold_event_id);
    if (!crossing) return;
    await sendQuotaEmails(deps, {
      orgId: crossing.orgId,
      feature: crossing.feature,
      featureName: crossing.featureName,
      threshold: crossing.threshold,
      limit: crossing.limit,
      used: crossing.used,
      resetsAt: crossing.resetsAt,
      upgradeUrl: crossing.upgradeUrl,
    });
  },
});

export const upgradeReminderJob = defineJob({
  name: "usage.upgrade_reminder",
  schema: CrossingPayload.extend({ plan: z.string() }),
  attempts: 5,
  backoffMs: 60_000,
  run: async (deps, { threshold_event_id, plan }) => {
    const crossing = await crossingDetails(deps, threshold_event_id);
    if (!crossing || crossing.planKey !== plan) return; // upgraded (or changed plan) since
    if (crossing.resetsAt && crossing.resetsAt.getTime() <= deps.clock.nowMs()) return; // reset already
    await sendUpgradeReminderEmails(deps, {
      orgId: crossing.orgId,
      feature: crossing.feature,
      featureName: crossing.featureName,
      limit: crossing.limit,
      resetsAt: crossing.resetsAt,
      upgradeUrl: crossing.upgradeUrl,
    });
  },
});

/** Announces every crossing not announced yet; returns how many. Safe to run in several processes. */
export async function notifyThresholds(deps: Deps): Promise<number> {
  let total = 0;
  for (;;) {
    const candidates = await deps.database.db
      .select()
      .from(thresholdEvents)
      .where(isNull(thresholdEvents.notifiedAt))
      .orderBy(asc(thresholdEvents.createdAt), asc(thresholdEvents.id))
      .limit(BATCH);
    if (candidates.length === 0) return total;
    // Looked up before the transaction: it holds the connection (PGlite has only one).
    const details = new Map<string, Awaited<ReturnType<typeof crossingDetails>>>();
    for (const row of candidates) details.set(row.id, await crossingDetails(deps, row.id, row));
    const claimed = await deps.database.db.transaction(async (tx) => {
      // Another process may have announced some meanwhile: only rows still unannounced, and not
      // being announced right now, are ours.
      const rows = await tx
        .select()
        .from(thresholdEvents)
        .where(
          and(
            inArray(
              thresholdEvents.id,
              candidates.map((row) => row.id),
            ),
            isNull(thresholdEvents.notifiedAt),
          ),
        )
        .orderBy(asc(thresholdEvents.createdAt), asc(thresholdEvents.id))
        .for("update", { skipLocked: true });
      for (const row of rows) {
        const crossing = details.get(row.id);
        await emitEvent(deps, tx, {
          orgId: row.orgId,
          type: "usage.threshold_reached",
          data: {
            id: row.id,
            org_id: row.orgId,
            feature: row.feature,
            threshold: row.threshold,
            limit: row.limit,
            used: row.quantity,
            period_start: row.periodStart.toISOString(),
            resets_at: crossing?.resetsAt?.toISOString() ?? null,
            upgrade_url: crossing?.upgradeUrl ?? null,
            reached_at: row.createdAt.toISOString(),
          },
        });
        await deps.jobs.enqueueInTx(tx, quotaEmailJob, { threshold_event_id: row.id });
        if (row.threshold >= 100 && crossing) {
          await deps.jobs.enqueueInTx(
            tx,
            upgradeReminderJob,
            { threshold_event_id: row.id, plan: crossing.planKey },
            { delayMs: UPGRADE_REMINDER_DELAY_MS, dedupKey: `upgrade-reminder:${row.id}` },
          );
        }
      }
      if (rows.length > 0) {
        await tx
          .update(thresholdEvents)
          .set({ notifiedAt: deps.clock.now() })
          .where(
            inArray(
              thresholdEvents.id,
              rows.map((row) => row.id),
            ),
          );
      }
      return rows.length;
    });
    total += claimed;
    // Nothing claimable (another process holds them) or the last page: done for this run.
    if (claimed === 0 || candidates.length < BATCH) return total;
  }
}

/** What the messages say about a crossing: the feature's name, when the quota resets, where to upgrade. */
async function crossingDetails(deps: Deps, id: string, known?: typeof thresholdEvents.$inferSelect) {
  let row = known;
  if (!row) {
    [row] = await deps.database.db.select().from(thresholdEvents).where(eq(thresholdEvents.id, id));
  }
  if (!row) return undefined;
  const org = await orgPlan(deps, row.orgId, deps.clock.nowMs());
  const feature = catalogIndex(deps.catalog).features.get(row.feature);
  // Usage periods are monthly from the anchor; the crossing's period ends a month after it started.
  const resetsAt = org
    ? new Date(periodAt(row.periodStart.getTime(), "month", row.periodStart.getTime()).endMs)
    : null;
  const upgradeUrl =
    org && feature ? upgradeFor(deps, org, grantOf(deps.catalog, org.plan, feature)).url : null;
  return {
    orgId: row.orgId,
    feature: row.feature,
    featureName: feature?.name ?? row.feature,
    threshold: row.threshold,
    limit: row.limit,
    used: row.quantity,
    resetsAt,
    upgradeUrl,
    planKey: org?.planKey ?? "",
  };
}
