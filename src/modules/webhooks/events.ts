import { and, eq, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { webhookDeliveries, webhookEndpoints, webhookEvents } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { newId } from "../../lib/ids.js";
import { webhookDispatchJob } from "./dispatch.js";

/**
 * The events an org's webhook endpoints may subscribe to. An endpoint lists types, `<group>.*` or
 * `*`. Adding a type is compatible; renaming or removing one is a breaking change.
 */
export const EVENT_TYPES = [
  "subscription.created",
  "subscription.updated",
  "subscription.canceled",
  "subscription.resumed",
  "invoice.finalized",
  "invoice.paid",
  "invoice.payment_failed",
  "invoice.voided",
  "credit_note.created",
  "usage.threshold_reached",
  "member.invited",
  "member.joined",
  "member.role_changed",
  "member.removed",
  "api_key.created",
  "api_key.rotated",
  "api_key.revoked",
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

const GROUPS = new Set(EVENT_TYPES.map((type) => type.slice(0, type.indexOf("."))));

/** Whether an endpoint's subscription entry is a known type, a known `<group>.*` or `*`. */
export function isEventFilter(value: string): boolean {
  if (value === "*") return true;
  if (value.endsWith(".*")) return GROUPS.has(value.slice(0, -2));
  return (EVENT_TYPES as readonly string[]).includes(value);
}

/** The filters that select `type`: itself, its group's wildcard and `*`. */
export function filtersMatching(type: string): string[] {
  return [type, `${type.slice(0, type.indexOf("."))}.*`, "*"];
}

/**
 * Records that something happened to an org, in the transaction that made it happen: the event (its
 * id is the `webhook-id` receivers deduplicate on), one delivery per enabled endpoint subscribed to
 * its type, and a dispatch job per endpoint that runs once the transaction commits. If the change
 * rolls back, no event was sent; if it commits, every subscribed endpoint gets it.
 */
export async function emitEvent(
  deps: Deps,
  tx: Database,
  event: { orgId: string; type: EventType; data: Record<string, unknown> },
): Promise<string> {
  const id = newId("message");
  const now = deps.clock.now();
  const payload = { type: event.type, timestamp: now.toISOString(), data: event.data };
  await tx
    .insert(webhookEvents)
    .values({ id, orgId: event.orgId, type: event.type, payload, createdAt: now });
  const endpoints = await tx
    .select({ id: webhookEndpoints.id })
    .from(webhookEndpoints)
    .where(
      and(
        eq(webhookEndpoints.orgId, event.orgId),
        eq(webhookEndpoints.status, "enabled"),
        sql`${webhookEndpoints.eventTypes} && array[${sql.join(
          filtersMatching(event.type).map((filter) => sql`${filter}`),
          sql`, `,
        )}]::text[]`,
      ),
    )
    .orderBy(webhookEndpoints.id);
  if (endpoints.length === 0) return id;
  await tx.insert(webhookDeliveries).values(
    endpoints.map((endpoint) => ({
      id: newId("delivery"),
      endpointId: endpoint.id,
      eventId: id,
      orgId: event.orgId,
      createdAt: now,
    })),
  );
  for (const endpoint of endpoints) {
    await deps.jobs.enqueueInTx(tx, webhookDispatchJob, { endpoint_id: endpoint.id });
  }
  return id;
}
