import { eq } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { auditLog, memberships } from "../../db/schema.js";
import { newId } from "../../lib/ids.js";
import type { Caller } from "../auth/caller.js";

export interface AuditEntry {
  orgId: string | null;
  actor: Caller | { kind: "system" } | { kind: "user"; userId: string };
  action: string;
  target?: { type: string; id: string };
  metadata?: Record<string, unknown>;
  ip?: string | undefined;
}

/**
 * Appends to the audit log, in the caller's transaction when given one so the entry commits (or
 * not) with the change it describes. Never put secrets in metadata.
 */
export async function recordAudit(db: Database, entry: AuditEntry): Promise<void> {
  const actor = entry.actor;
  await db.insert(auditLog).values({
    id: newId("audit"),
    orgId: entry.orgId,
    actorType: actor.kind === "api_key" ? "api_key" : actor.kind,
    actorId: actor.kind === "user" ? actor.userId : actor.kind === "api_key" ? actor.keyId : null,
    action: entry.action,
    targetType: entry.target?.type ?? null,
    targetId: entry.target?.id ?? null,
    metadata: entry.metadata ?? {},
    ip: entry.ip ?? null,
  });
}

/**
 * An account-level event (a sign-in, two-factor turned on, a session revoked), recorded in every
 * org the user belongs to — where those orgs' admins read it — or without an org if they have none.
 */
export async function recordUserAudit(
  db: Database,
  userId: string,
  entry: Omit<AuditEntry, "orgId" | "actor">,
): Promise<void> {
  const rows = await db
    .select({ orgId: memberships.orgId })
    .from(memberships)
    .where(eq(memberships.userId, userId));
  for (const { orgId } of rows.length > 0 ? rows : [{ orgId: null }]) {
    await recordAudit(db, { ...entry, orgId, actor: { kind: "user", userId } });
  }
}
