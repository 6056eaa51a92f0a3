import { and, asc, eq, inArray, isNull, lt, lte, or } from "drizzle-orm";
import { Webhook } from "standardwebhooks";
import { z } from "zod";
import { webhookAttempts, webhookDeliveries, webhookEndpoints, webhookEvents } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { newId } from "../../lib/ids.js";
import { defineJob } from "../jobs/define.js";
import { sendWebhookDisabledEmails } from "../notifications/emails.js";
import { openSecret } from "./secrets.js";
import { postWebhook } from "./transport.js";

/**
 * Delivery of outbound webhooks. Each endpoint is a queue, sent in order: the oldest pending delivery
 * (by `seq`) goes first, and while it fails nothing behind it is sent. The endpoint backs off as a
 * whole — 1 min, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, then every 24 h — and once it answers again
 * its backlog follows at once, oldest first. A delivery still failing 3 days after its event is given
 * up (status `failed`, retryable by hand); an endpoint failing without a single success for 5 days is
 * disabled and its org's owners and admins are e-mailed.
 *
 * One sender per endpoint: a dispatcher claims the endpoint with a lease (real time, so a crashed
 * worker's claim runs out whatever the test clock says) before sending. Business times (backoff,
 * give-up, disable) follow `deps.clock`, so the test clock can move an outage along.
 */

export const BACKOFF_MS = [1, 5, 30, 120, 300, 600, 840, 1200, 1440].map((minutes) => minutes * 60_000);
export const GIVE_UP_AFTER_MS = 3 * 86_400_000;
export const DISABLE_AFTER_MS = 5 * 86_400_000;
/** Deliveries sent per claim (then the endpoint is claimed again, and other work gets a turn). */
const BATCH = 50;
/** A claim lasts one request and a margin; it is renewed before each request. */
const leaseMs = (deps: Deps) => deps.env.webhookTimeoutMs + 15_000;

type Endpoint = typeof webhookEndpoints.$inferSelect;

export const webhookDispatchJob = defineJob({
  name: "webhooks.dispatch",
  schema: z.object({ endpoint_id: z.string() }),
  attempts: 3,
  backoffMs: 5_000,
  run: async (deps, { endpoint_id }) => {
    await dispatchEndpoint(deps, endpoint_id);
  },
});

/** Every endpoint whose queue has something due: the safety net behind the dispatch jobs. */
export const webhookSweepJob = defineJob({
  name: "webhooks.sweep",
  schema: z.object({}).strict(),
  attempts: 1,
  run: async (deps) => {
    await sweepWebhooks(deps);
  },
});

export async function sweepWebhooks(deps: Deps): Promise<number> {
  const now = deps.clock.now();
  const due = await deps.database.db
    .selectDistinct({ id: webhookEndpoints.id })
    .from(webhookEndpoints)
    .innerJoin(
      webhookDeliveries,
      and(eq(webhookDeliveries.endpointId, webhookEndpoints.id), eq(webhookDeliveries.status, "pending")),
    )
    .where(
      and(
        eq(webhookEndpoints.status, "enabled"),
        or(isNull(webhookEndpoints.nextAttemptAt), lte(webhookEndpoints.nextAttemptAt, now)),
      ),
    )
    .limit(1000);
  let sent = 0;
  // A few endpoints at a time: one slow receiver must not hold up the others' queues.
  const ids = due.map((row) => row.id);
  const lanes = Array.from({ length: Math.min(4, ids.length) }, async () => {
    for (let id = ids.shift(); id !== undefined; id = ids.shift()) sent += await dispatchEndpoint(deps, id);
  });
  await Promise.all(lanes);
  return sent;
}

/** Sends what is due on one endpoint's queue, in order; returns how many deliveries succeeded. */
export async function dispatchEndpoint(deps: Deps, endpointId: string): Promise<number> {
  let delivered = 0;
  for (let round = 0; round < 100; round++) {
    let endpoint = await claim(deps, endpointId);
    if (!endpoint) return delivered;
    // The lease we hold, as last written by us: what releasing must match.
    let held = endpoint.leaseUntil;
    try {
      for (let i = 0; i < BATCH && endpoint; i++) {
        const outcome = await sendHead(deps, endpoint);
        if (outcome !== "sent") break;
        delivered++;
        // Renewed only while still ours and enabled; the fresh row carries what changed meanwhile
        // (a new URL, a member turning the endpoint off: then the batch stops here).
        endpoint = await renew(deps, endpoint);
        if (endpoint) held = endpoint.leaseUntil;
      }
    } finally {
      if (held) {
        await deps.database.db
          .update(webhookEndpoints)
          .set({ leaseUntil: null })
          .where(and(eq(webhookEndpoints.id, endpointId), eq(webhookEndpoints.leaseUntil, held)));
      }
    }
    // A delivery added while we held the claim found it taken and left it to us: look once more.
    if (!(await hasDue(deps, endpointId))) return delivered;
  }
  return delivered;
}

/**
 * Claims the endpoint for one sender. The lease's expiry (real time, so a crashed worker's claim runs
 * out whatever the test clock says) doubles as the claim's token: renewing and releasing match it, so
 * a sender whose lease ran out cannot touch its successor's.
 */
async function claim(deps: Deps, endpointId: string): Promise<Endpoint | undefined> {
  const realNow = Date.now();
  const now = deps.clock.now();
  const [endpoint] = await deps.database.db
    .update(webhookEndpoints)
    .set({ leaseUntil: new Date(realNow + leaseMs(deps)) })
    .where(
      and(
        eq(webhookEndpoints.id, endpointId),
        eq(webhookEndpoints.status, "enabled"),
        or(isNull(webhookEndpoints.leaseUntil), lt(webhookEndpoints.leaseUntil, new Date(realNow))),
        or(isNull(webhookEndpoints.nextAttemptAt), lte(webhookEndpoints.nextAttemptAt, now)),
      ),
    )
    .returning();
  return endpoint;
}

async function renew(deps: Deps, endpoint: Endpoint): Promise<Endpoint | undefined> {
  if (!endpoint.leaseUntil) return undefined;
  const [renewed] = await deps.database.db
    .update(webhookEndpoints)
    .set({ leaseUntil: new Date(Math.max(Date.now(), endpoint.leaseUntil.getTime() + 1) + leaseMs(deps)) })
    .where(
      and(
        eq(webhookEndpoints.id, endpoint.id),
        eq(webhookEndpoints.leaseUntil, endpoint.leaseUntil),
        eq(webhookEndpoints.status, "enabled"),
      ),
    )
    .returning();
  return renewed;
}

async function hasDue(deps: Deps, endpointId: string): Promise<boolean> {
  const now = deps.clock.now();
  const [due] = await deps.database.db
    .select({ id: webhookDeliveries.id })
    .from(webhookDeliveries)
    .innerJoin(webhookEndpoints, eq(webhookEndpoints.id, webhookDeliveries.endpointId))
    .where(
      and(
        eq(webhookDeliveries.endpointId, endpointId),
        eq(webhookDeliveries.status, "pending"),
        eq(webhookEndpoints.status, "enabled"),
        or(isNull(webhookEndpoints.nextAttemptAt), lte(webhookEndpoints.nextAttemptAt, now)),
      ),
    )
    .limit(1);
  return due !== undefined;
}

/** Attempts the oldest pending delivery of the endpoint. */
async function sendHead(deps: Deps, endpoint: Endpoint): Promise<"sent" | "failed" | "empty"> {
  const db = deps.database.db;
  const [head] = await db
    .select({ delivery: webhookDeliveries, payload: webhookEvents.payload })
    .from(webhookDeliveries)
    .innerJoin(webhookEvents, eq(webhookEvents.id, webhookDeliveries.eventId))
    .where(and(eq(webhookDeliveries.endpointId, endpoint.id), eq(webhookDeliveries.status, "pending")))
    .orderBy(asc(webhookDeliveries.seq))
    .limit(1);
  if (!head) return "empty";
  const { delivery } = head;
  const body = JSON.stringify(head.payload);
  // Signed at the real time of sending: receivers check the timestamp against their own clocks.
  const sentAt = new Date();
  const signature = new Webhook(openSecret(deps, endpoint.secretEncrypted)).sign(
    delivery.eventId,
    sentAt,
    body,
  );
  const result = await postWebhook({
    url: endpoint.url,
    headers: {
      "webhook-id": delivery.eventId,
      "webhook-timestamp": String(Math.floor(sentAt.getTime() / 1000)),
      "webhook-signature": signature,
    },
    body,
    timeoutMs: deps.env.webhookTimeoutMs,
    policy: { allowedTargets: deps.env.webhookAllowedTargets },
  });
  deps.metrics.webhooks.inc({ outcome: result.ok ? "succeeded" : "failed", code: result.code ?? "none" });
  const now = deps.clock.now();
  const attempt = delivery.attempts + 1;
  await db.transaction(async (tx) => {
    await tx.insert(webhookAttempts).values({
      id: newId("attempt"),
      deliveryId: delivery.id,
      attempt,
      at: now,
      status: result.status,
      error: result.error,
      responseBody: result.body,
      durationMs: Math.round(result.durationMs),
    });
    await tx
      .update(webhookDeliveries)
      .set({
        attempts: attempt,
        lastAttemptAt: now,
        lastStatus: result.status,
        lastError: result.error,
        ...(result.ok ? { status: "succeeded" as const, deliveredAt: now } : {}),
      })
      .where(eq(webhookDeliveries.id, delivery.id));
    if (result.ok) {
      await tx
        .update(webhookEndpoints)
        .set({ consecutiveFailures: 0, failingSince: null, nextAttemptAt: null })
        .where(eq(webhookEndpoints.id, endpoint.id));
      return;
    }
    // Counted from the row as it is now (a success or a member's change may have come in between).
    const [current] = await tx
      .select()
      .from(webhookEndpoints)
      .where(eq(webhookEndpoints.id, endpoint.id))
      .for("update");
    if (!current) return; // deleted meanwhile
    const failures = current.consecutiveFailures + 1;
    const failingSince = current.failingSince ?? now;
    const backoff = BACKOFF_MS[Math.min(failures, BACKOFF_MS.length) - 1] ?? GIVE_UP_AFTER_MS;
    // Given up: whatever has waited longer than the retry window (the head included).
    await tx
      .update(webhookDeliveries)
      .set({ status: "failed" })
      .where(
        and(
          eq(webhookDeliveries.endpointId, endpoint.id),
          eq(webhookDeliveries.status, "pending"),
          lte(webhookDeliveries.createdAt, new Date(now.getTime() - GIVE_UP_AFTER_MS)),
        ),
      );
    const [left] = await tx
      .select({ id: webhookDeliveries.id })
      .from(webhookDeliveries)
      .where(and(eq(webhookDeliveries.endpointId, endpoint.id), eq(webhookDeliveries.status, "pending")))
      .limit(1);
    if (!left) {
      // Nothing left to deliver: the endpoint is not failing any more, only idle. The next event
      // starts afresh rather than inheriting days of failures it had no part in.
      await tx
        .update(webhookEndpoints)
        .set({ consecutiveFailures: 0, failingSince: null, nextAttemptAt: null })
        .where(eq(webhookEndpoints.id, endpoint.id));
      return;
    }
    const disable =
      current.status === "enabled" && now.getTime() - failingSince.getTime() >= DISABLE_AFTER_MS;
    await tx
      .update(webhookEndpoints)
      .set({
        consecutiveFailures: failures,
        failingSince,
        nextAttemptAt: new Date(now.getTime() + backoff),
        ...(disable
          ? {
              status: "disabled" as const,
              disabledReason: `Every delivery failed for ${Math.floor(DISABLE_AFTER_MS / 86_400_000)} days (last: ${result.error ?? "no answer"}).`,
              updatedAt: now,
            }
          : {}),
      })
      .where(eq(webhookEndpoints.id, endpoint.id));
    if (disable) {
      await deps.jobs.enqueueInTx(tx, webhookDisabledEmailJob, {
        endpoint_id: endpoint.id,
        failing_since: failingSince.toISOString(),
      });
    }
  });
  if (!result.ok) {
    deps.logger.info(
      { endpoint: endpoint.id, delivery: delivery.id, attempt, err: result.error },
      "webhook delivery failed; the endpoint backs off",
    );
  }
  return result.ok ? "sent" : "failed";
}

export const webhookDisabledEmailJob = defineJob({
  name: "webhooks.disabled_email",
  schema: z.object({ endpoint_id: z.string(), failing_since: z.iso.datetime() }),
  attempts: 5,
  backoffMs: 60_000,
  run: async (deps, { endpoint_id, failing_since }) => {
    const [endpoint] = await deps.database.db
      .select()
      .from(webhookEndpoints)
      .where(eq(webhookEndpoints.id, endpoint_id));
    // Deleted or turned back on meanwhile: nothing to tell.
    if (endpoint?.status !== "disabled") return;
    await sendWebhookDisabledEmails(deps, {
      orgId: endpoint.orgId,
      endpointId: endpoint.id,
      url: endpoint.url,
      reason: endpoint.disabledReason ?? "repeated failures",
      failingSince: new Date(failing_since),
    });
  },
});

/** Puts deliveries back in their endpoint's queue to be sent now (a manual retry). */
export async function requeueDeliveries(
  deps: Deps,
  endpointId: string,
  deliveryIds: string[],
): Promise<void> {
  await deps.database.db.transaction(async (tx) => {
    await tx
      .update(webhookDeliveries)
      .set({ status: "pending" })
      .where(and(eq(webhookDeliveries.endpointId, endpointId), inArray(webhookDeliveries.id, deliveryIds)));
    await tx.update(webhookEndpoints).set({ nextAttemptAt: null }).where(eq(webhookEndpoints.id, endpointId));
    await deps.jobs.enqueueInTx(tx, webhookDispatchJob, { endpoint_id: endpointId });
  });
}
