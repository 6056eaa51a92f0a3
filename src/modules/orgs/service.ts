import { and, count, desc, eq, isNull, lt } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import {
  auditLog,
  invitations,
  memberships,
  orgs,
  type Role,
  subscriptions,
  users,
} from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { randomToken, sha256Hex } from "../../lib/crypto.js";
import { AppError } from "../../lib/errors.js";
import { newId } from "../../lib/ids.js";
import { type AuditEntry, recordAudit } from "../audit/service.js";
import type { Caller } from "../auth/caller.js";
import { insertDefaultSubscription, subscriptionChanged } from "../plans/subscriptions.js";
import { emitEvent } from "../webhooks/events.js";
import type { OrgAccess } from "./access.js";
import { invitationEmail } from "./invitation-email.js";

export const INVITATION_DAYS = 7;

type Org = typeof orgs.$inferSelect;

export function orgOut(org: Org) {
  return {
    id: org.id,
    name: org.name,
    personal: org.personal,
    require_two_factor: org.requireTwoFactor,
    created_at: org.createdAt.toISOString(),
  };
}

const actorOf = (caller: Caller) => caller;

export async function getOrg(db: Database, orgId: string): Promise<Org> {
  const [org] = await db
    .select()
    .from(orgs)
    .where(and(eq(orgs.id, orgId), isNull(orgs.deletedAt)));
  if (!org) throw new AppError("not_found", `No organization ${orgId}.`);
  return org;
}

/** A user creates an org and owns it; the operator creates one for a customer, with no members yet. */
export async function createOrg(deps: Deps, caller: Caller, name: string): Promise<Org> {
  const now = deps.clock.now();
  const org: Org = {
    id: newId("org"),
    name,
    personal: false,
    requireTwoFactor: false,
    createdAt: now,
    deletedAt: null,
  };
  await deps.database.db.transaction(async (tx) => {
    await tx.insert(orgs).values(org);
    await insertDefaultSubscription(tx, deps, org.id, now);
    if (caller.kind === "user") {
      await tx
        .insert(memberships)
        .values({ orgId: org.id, userId: caller.userId, role: "owner", createdAt: now });
    }
    await recordAudit(tx, {
      orgId: org.id,
      actor: actorOf(caller),
      action: "org.created",
      metadata: { name },
    });
  });
  return org;
}

export async function updateOrg(
  deps: Deps,
  access: OrgAccess,
  patch: { name?: string | undefined; require_two_factor?: boolean | undefined },
): Promise<Org> {
  const set: Partial<Org> = {};
  if (patch.name !== undefined) set.name = patch.name;
  if (patch.require_two_factor !== undefined) set.requireTwoFactor = patch.require_two_factor;
  await deps.database.db.transaction(async (tx) => {
    if (Object.keys(set).length > 0) await tx.update(orgs).set(set).where(eq(orgs.id, access.orgId));
    await recordAudit(tx, {
      orgId: access.orgId,
      actor: actorOf(access.caller),
      action: "org.updated",
      metadata: patch,
    });
  });
  return getOrg(deps.database.db, access.orgId);
}

/**
 * Deletes an org (kept as a tombstone: invoices and the audit trail must survive). Its members lose
 * access at once, its subscription is canceled, and every process stops answering checks for it.
 */
export async function deleteOrg(deps: Deps, access: OrgAccess): Promise<void> {
  const now = deps.clock.now();
  await deps.database.db.transaction((tx) => deleteOrgInTx(tx, now, access.orgId, actorOf(access.caller)));
  await subscriptionChanged(deps, access.orgId);
}

/**
 * What deleting an org changes, in the caller's transaction: the tombstone, the canceled
 * subscription and the `org.deleted` entry. The caller calls `subscriptionChanged` once it commits.
 */
export async function deleteOrgInTx(
  tx: Database,
  now: Date,
  orgId: string,
  actor: AuditEntry["actor"],
  metadata?: Record<string, unknown>,
): Promise<void> {
  await tx.update(orgs).set({ deletedAt: now }).where(eq(orgs.id, orgId));
  await tx
    .update(subscriptions)
    .set({ status: "canceled", updatedAt: now })
    .where(eq(subscriptions.orgId, orgId));
  await recordAudit(tx, { orgId, actor, action: "org.deleted", ...(metadata ? { metadata } : {}) });
}

export async function listMembers(db: Database, orgId: string) {
  const rows = await db
    .select({
      userId: users.id,
      email: users.email,
      name: users.name,
      role: memberships.role,
      joinedAt: memberships.createdAt,
    })
    .from(memberships)
    .innerJoin(users, eq(users.id, memberships.userId))
    .where(eq(memberships.orgId, orgId))
    .orderBy(memberships.createdAt);
  return rows.map((r) => ({
    user_id: r.userId,
    email: r.email,
    name: r.name,
    role: r.role,
    joined_at: r.joinedAt.toISOString(),
  }));
}

async function membershipOf(db: Database, orgId: string, userId: string) {
  const [row] = await db
    .select()
    .from(memberships)
    .where(and(eq(memberships.orgId, orgId), eq(memberships.userId, userId)));
  if (!row) throw new AppError("not_found", `No member ${userId} in this organization.`);
  return row;
}

/** Serialises membership changes of one org (two owners demoting each other at once leave one). */
export async function lockOrg(db: Database, orgId: string): Promise<void> {
  await db.select({ id: orgs.id }).from(orgs).where(eq(orgs.id, orgId)).for("update");
}

async function ownerCount(db: Database, orgId: string): Promise<number> {
  const [row] = await db
    .select({ n: count() })
    .from(memberships)
    .where(and(eq(memberships.orgId, orgId), eq(memberships.role, "owner")));
  return row?.n ?? 0;
}

/** Only owners hand out or take away ownership; admins manage everyone else. */
function assertMayManageRole(access: OrgAccess, role: Role) {
  if (role === "owner" && access.role !== undefined && access.role !== "owner") {
    throw new AppError("forbidden", "Only an owner can grant, change or remove the owner role.");
  }
}

export async function changeRole(deps: Deps, access: OrgAccess, userId: string, role: Role) {
  await deps.database.db.transaction(async (tx) => {
    await lockOrg(tx, access.orgId);
    const member = await membershipOf(tx, access.orgId, userId);
    assertMayManageRole(access, member.role);
    assertMayManageRole(access, role);
    if (member.role === "owner" && role !== "owner" && (await ownerCount(tx, access.orgId)) <= 1) {
      throw new AppError("conflict", "The last owner cannot be demoted: make someone else an owner first.");
    }
    await tx
      .update(memberships)
      .set({ role })
      .where(and(eq(memberships.orgId, access.orgId), eq(memberships.userId, userId)));
    await recordAudit(tx, {
      orgId: access.orgId,
      actor: actorOf(access.caller),
      action: "member.role_changed",
      target: { type: "user", id: userId },
      metadata: { from: member.role, to: role },
    });
    await emitEvent(deps, tx, {
      orgId: access.orgId,
      type: "member.role_changed",
      data: { org_id: access.orgId, user_id: userId, previous_role: member.role, role },
    });
  });
}

export async function removeMember(deps: Deps, access: OrgAccess, userId: string) {
  await deps.database.db.transaction(async (tx) => {
    await lockOrg(tx, access.orgId);
    const member = await membershipOf(tx, access.orgId, userId);
    const leaving = access.caller.kind === "user" && access.caller.userId === userId;
    if (!leaving) assertMayManageRole(access, member.role);
    if (member.role === "owner" && (await ownerCount(tx, access.orgId)) <= 1) {
      throw new AppError(
        "conflict",
        "The last owner cannot leave or be removed: make someone else an owner first.",
      );
    }
    await tx
      .delete(memberships)
      .where(and(eq(memberships.orgId, access.orgId), eq(memberships.userId, userId)));
    await recordAudit(tx, {
      orgId: access.orgId,
      actor: actorOf(access.caller),
      action: leaving ? "member.left" : "member.removed",
      target: { type: "user", id: userId },
    });
    await emitEvent(deps, tx, {
      orgId: access.orgId,
      type: "member.removed",
      data: { org_id: access.orgId, user_id: userId, role: member.role, left: leaving },
    });
  });
}

/** Invites by e-mail: a single-use token (stored hashed) that expires in seven days. */
export async function invite(deps: Deps, access: OrgAccess, email: string, role: Role) {
  assertMayManageRole(access, role);
  const org = await getOrg(deps.database.db, access.orgId);
  const token = randomToken(32);
  const invitation = {
    id: newId("invitation"),
    orgId: access.orgId,
    email,
    role,
    tokenHash: sha256Hex(token),
    invitedBy: access.caller.kind === "user" ? access.caller.userId : null,
    expiresAt: new Date(deps.clock.nowMs() + INVITATION_DAYS * 86_400_000),
  };
  await deps.database.db.transaction(async (tx) => {
    await tx.insert(invitations).values(invitation);
    await recordAudit(tx, {
      orgId: access.orgId,
      actor: actorOf(access.caller),
      action: "member.invited",
      target: { type: "invitation", id: invitation.id },
      metadata: { email, role },
    });
    await emitEvent(deps, tx, {
      orgId: access.orgId,
      type: "member.invited",
      data: {
        org_id: access.orgId,
        invitation_id: invitation.id,
        email,
        role,
        expires_at: invitation.expiresAt.toISOString(),
      },
    });
  });
  await deps.mailer.send({ ...(await invitationEmail(deps, org, role, token)), to: email, orgId: org.id });
  return invitation;
}

/** Accepts an invitation: the signed-in user's e-mail must be the one invited. */
export async function acceptInvitation(deps: Deps, userId: string, token: string) {
  const { db } = deps.database;
  const [user] = await db.select().from(users).where(eq(users.id, userId));
  const [invitation] = await db
    .select()
    .from(invitations)
    .where(eq(invitations.tokenHash, sha256Hex(token)));
  const unusable =
    !invitation ||
    invitation.acceptedAt ||
    invitation.revokedAt ||
    invitation.expiresAt.getTime() <= deps.clock.nowMs();
  if (!user || unusable)
    throw new AppError("not_found", "This invitation does not exist, was used, or has expired.");
  if (invitation.email !== user.email) {
    throw new AppError("forbidden", "This invitation was sent to another e-mail address.");
  }
  // Holding the link is not enough: the account must have proved it owns the invited address.
  if (!user.emailVerifiedAt) {
    throw new AppError("forbidden", "Verify your e-mail address first, then accept the invitation.");
  }
  const [existing] = await db
    .select({ role: memberships.role })
    .from(memberships)
    .where(and(eq(memberships.orgId, invitation.orgId), eq(memberships.userId, userId)));
  if (existing)
    throw new AppError("conflict", `You are already a member of this organization (${existing.role}).`);
  await getOrg(db, invitation.orgId);
  await db.transaction(async (tx) => {
    const claimed = await tx
      .update(invitations)
      .set({ acceptedAt: deps.clock.now() })
      .where(and(eq(invitations.id, invitation.id), isNull(invitations.acceptedAt)))
      .returning({ id: invitations.id });
    if (claimed.length === 0)
      throw new AppError("not_found", "This invitation does not exist, was used, or has expired.");
    await tx
      .insert(memberships)
      .values({ orgId: invitation.orgId, userId, role: invitation.role, createdAt: deps.clock.now() })
      .onConflictDoNothing();
    await recordAudit(tx, {
      orgId: invitation.orgId,
      actor: { kind: "user", userId },
      action: "member.joined",
      target: { type: "user", id: userId },
      metadata: { role: invitation.role },
    });
    await emitEvent(deps, tx, {
      orgId: invitation.orgId,
      type: "member.joined",
      data: {
        org_id: invitation.orgId,
        user_id: userId,
        role: invitation.role,
        invitation_id: invitation.id,
      },
    });
  });
  return { orgId: invitation.orgId, role: invitation.role };
}

export async function readAuditLog(db: Database, orgId: string, limit: number, before?: string) {
  const rows = await db
    .select()
    .from(auditLog)
    .where(before ? and(eq(auditLog.orgId, orgId), lt(auditLog.id, before)) : eq(auditLog.orgId, orgId))
    .orderBy(desc(auditLog.id))
    .limit(limit);
  return rows.map((r) => ({
    id: r.id,
    action: r.action,
    actor: { type: r.actorType, id: r.actorId },
    target: r.targetType ? { type: r.targetType, id: r.targetId } : null,
    metadata: r.metadata,
    ip: r.ip,
    created_at: r.createdAt.toISOString(),
  }));
}
