import { and, asc, eq, inArray, isNull, or, sql } from "drizzle-orm";
import type { AnyPgColumn } from "drizzle-orm/pg-core";
import type { Database } from "../../db/client.js";
import {
  auditLog,
  emails,
  identities,
  invitations,
  memberships,
  oneTimeTokens,
  orgBranding,
  orgs,
  type Role,
  recoveryCodes,
  refreshTokens,
  users,
  webhookEvents,
} from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { RECIPIENT_ERASED } from "../../infra/mailer/mailer.js";
import { AppError } from "../../lib/errors.js";
import { recordAudit } from "../audit/service.js";
import { deleteOrgInTx, lockOrg } from "../orgs/service.js";
import { subscriptionChanged } from "../plans/subscriptions.js";
import { emitEvent } from "../webhooks/events.js";

/**
 * Erasure of an account (DELETE /v1/me): in one transaction, the user's orgs are settled (deleted
 * when the user is their last member, left otherwise; refused when the user is the only owner of an
 * org others still belong to), the user row is anonymised in place (ids are referenced everywhere),
 * every credential is deleted, and the user's e-mail address is taken out of every place it was
 * copied to. Invoices, credit notes and payments are not touched: they keep the org (renamed when it
 * was the user's personal one) and the amounts, as accounting law requires.
 */

export const ERASED_NAME = "Erased user";
/** Personal orgs are called `<name>'s organization`; an erased user's is called this. */
export const ERASED_ORG_NAME = `${ERASED_NAME}'s organization`;
/** Unique per user, and never deliverable (`.invalid` is reserved: RFC 2606). */
export const erasedEmail = (userId: string) => `erased+${userId}@erased.invalid`;

export interface OrgRef {
  id: string;
  name: string;
}

/** What erasure does to each org the user belongs to. */
export interface ErasurePlan {
  /** The user is the last member: the org is deleted. */
  delete: OrgRef[];
  /** Others stay: the user's membership is removed. */
  leave: (OrgRef & { role: Role })[];
  /** The user is the only owner and others stay: erasure is refused until that changes. */
  blocked: OrgRef[];
}

/** Reads the user's live orgs and decides, for each, what erasure does to it. */
export async function planErasure(db: Database, userId: string): Promise<ErasurePlan> {
  const rows = await db
    .select({
      id: orgs.id,
      name: orgs.name,
      role: memberships.role,
      members: sql<number>`(select count(*) from memberships m where m.org_id = ${orgs.id})`.mapWith(Number),
      owners:
        sql<number>`(select count(*) from memberships m where m.org_id = ${orgs.id} and m.role = 'owner')`.mapWith(
          Number,
        ),
    })
    .from(memberships)
    .innerJoin(orgs, eq(orgs.id, memberships.orgId))
    .where(and(eq(memberships.userId, userId), isNull(orgs.deletedAt)))
    .orderBy(asc(orgs.id));
  const plan: ErasurePlan = { delete: [], leave: [], blocked: [] };
  for (const row of rows) {
    const org = { id: row.id, name: row.name };
    if (row.members <= 1) plan.delete.push(org);
    else if (row.role === "owner" && row.owners <= 1) plan.blocked.push(org);
    else plan.leave.push({ ...org, role: row.role });
  }
  return plan;
}

/** 409 naming every org that keeps the account from being erased. */
export function assertErasable(plan: ErasurePlan): void {
  if (plan.blocked.length === 0) return;
  const names = plan.blocked.map((o) => o.name).join(", ");
  throw new AppError(
    "conflict",
    `You are the only owner of ${names}, which other members still belong to: transfer ownership or remove the other members first.`,
    { orgs: plan.blocked },
  );
}

/** A JSON string's text as jsonb::text writes it (quoted, escaped): what is matched and replaced. */
const jsonString = (value: string) => sql`to_jsonb(${value}::text)::text`;

/** Replaces every JSON string equal to `from` in a jsonb column, in rows that contain it. */
function replaceJsonString(column: AnyPgColumn, from: string, to: string) {
  return {
    value: sql`replace(${column}::text, ${jsonString(from)}, ${jsonString(to)})::jsonb`,
    where: sql`strpos(${column}::text, ${jsonString(from)}) > 0`,
  };
}

/**
 * Erases the account. The caller has checked who is asking (password, second factor, the confirmed
 * address). Throws 409 (nothing changed) when an org would be left without an owner, 401 when the
 * account was erased meanwhile.
 */
export async function eraseAccount(
  deps: Deps,
  userId: string,
): Promise<{ deleted: string[]; left: string[] }> {
  const now = deps.clock.now();
  const actor = { kind: "user" as const, userId };
  const outcome = await deps.database.db.transaction(async (tx) => {
    // The user row first, then the orgs (in id order): two erasures of one account serialise here.
    const [user] = await tx.select().from(users).where(eq(users.id, userId)).for("update");
    if (!user || user.erasedAt) throw new AppError("unauthenticated", "This account no longer exists.");
    const oldEmail = user.email;
    const newEmail = erasedEmail(userId);

    // Lock every live org the user belongs to, so no role change or removal can race the decision
    // below (as changeRole and removeMember lock it); read again until no new org turns up.
    const locked = new Set<string>();
    let plan = await planErasure(tx, userId);
    for (;;) {
      const ids = [...plan.delete, ...plan.leave, ...plan.blocked].map((o) => o.id);
      const missing = ids.filter((id) => !locked.has(id)).sort();
      if (missing.length === 0) break;
      for (const id of missing) {
        await lockOrg(tx, id);
        locked.add(id);
      }
      plan = await planErasure(tx, userId);
    }
    assertErasable(plan);

    // The personal org: created with the account (its `user.registered` entry, and a membership as
    // old as the org), whether still live, deleted before, or deleted now.
    const personal = await tx
      .select({ id: orgs.id })
      .from(orgs)
      .where(
        and(
          eq(orgs.personal, true),
          eq(orgs.name, `${user.name}'s organization`),
          or(
            inArray(
              orgs.id,
              tx
                .select({ id: auditLog.orgId })
                .from(auditLog)
                .where(
                  and(
                    eq(auditLog.action, "user.registered"),
                    eq(auditLog.actorType, "user"),
                    eq(auditLog.actorId, userId),
                  ),
                ),
            ),
            inArray(
              orgs.id,
              tx
                .select({ id: memberships.orgId })
                .from(memberships)
                .where(and(eq(memberships.userId, userId), eq(memberships.createdAt, orgs.createdAt))),
            ),
          ),
        ),
      );

    for (const org of plan.delete) {
      await deleteOrgInTx(tx, now, org.id, actor, { reason: "last_member_erased" });
    }
    for (const org of plan.leave) {
      await tx.delete(memberships).where(and(eq(memberships.orgId, org.id), eq(memberships.userId, userId)));
      await recordAudit(tx, {
        orgId: org.id,
        actor,
        action: "member.left",
        target: { type: "user", id: userId },
        metadata: { reason: "account_erased" },
      });
      await emitEvent(deps, tx, {
        orgId: org.id,
        type: "member.removed",
        data: { org_id: org.id, user_id: userId, role: org.role, left: true },
      });
    }
    if (personal.length > 0) {
      await tx
        .update(orgs)
        .set({ name: ERASED_ORG_NAME })
        .where(
          inArray(
            orgs.id,
            personal.map((o) => o.id),
          ),
        );
    }
    // Every membership goes, deleted orgs' included: a document of theirs (an invoice PDF) looks
    // its billing contact up among the members.
    await tx.delete(memberships).where(eq(memberships.userId, userId));

    await tx
      .update(users)
      .set({
        email: newEmail,
        name: ERASED_NAME,
        passwordHash: null,
        totpSecret: null,
        totpEnabledAt: null,
        emailVerifiedAt: null,
        erasedAt: now,
        updatedAt: now,
      })
      .where(eq(users.id, userId));
    // Every session ends, this one included; nothing is left to sign in with.
    await tx.delete(refreshTokens).where(eq(refreshTokens.userId, userId));
    await tx.delete(oneTimeTokens).where(eq(oneTimeTokens.userId, userId));
    await tx.delete(recoveryCodes).where(eq(recoveryCodes.userId, userId));
    await tx.delete(identities).where(eq(identities.userId, userId));

    // Invitations to the address: anonymised, and those still open revoked (nobody can accept them).
    await tx
      .update(invitations)
      .set({
        email: newEmail,
        revokedAt: sql`case when ${invitations.acceptedAt} is null then coalesce(${invitations.revokedAt}, ${now.toISOString()}::timestamptz) else ${invitations.revokedAt} end`,
      })
      .where(eq(invitations.email, oldEmail));

    // Mail to the address: emptied; what was not sent yet never will be (the delivery job skips it).
    await tx
      .update(emails)
      .set({
        to: newEmail,
        subject: "[erased]",
        text: "",
        html: "",
        status: sql`case when ${emails.status} = 'sent' then 'sent' else 'failed' end`,
        error: sql`case when ${emails.status} = 'sent' then ${emails.error} else ${RECIPIENT_ERASED} end`,
      })
      .where(eq(emails.to, oldEmail));

    // What the user did stays in the audit trail, without the addresses it was done from.
    await tx
      .update(auditLog)
      .set({ ip: null })
      .where(and(eq(auditLog.actorType, "user"), eq(auditLog.actorId, userId)));
    // The address copied into audit details and webhook payloads (an invitation's `email`).
    const inAudit = replaceJsonString(auditLog.metadata, oldEmail, newEmail);
    await tx.update(auditLog).set({ metadata: inAudit.value }).where(inAudit.where);
    const inEvents = replaceJsonString(webhookEvents.payload, oldEmail, newEmail);
    await tx.update(webhookEvents).set({ payload: inEvents.value }).where(inEvents.where);
    await tx
      .update(orgBranding)
      .set({ supportEmail: null, updatedAt: now })
      .where(eq(sql`lower(${orgBranding.supportEmail})`, oldEmail));

    const deleted = plan.delete.map((o) => o.id);
    const left = plan.leave.map((o) => o.id);
    await recordAudit(tx, {
      orgId: null,
      actor,
      action: "user.erased",
      target: { type: "user", id: userId },
      metadata: { orgs_deleted: deleted, orgs_left: left },
    });
    return { deleted, left };
  });

  for (const orgId of outcome.deleted) await subscriptionChanged(deps, orgId);
  // Again after commit: a refresh that held its session's lock may have added a token meanwhile.
  await deps.database.db.delete(refreshTokens).where(eq(refreshTokens.userId, userId));
  return outcome;
}
