import { z } from "@hono/zod-openapi";
import { and, count, desc, eq, max, min, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import {
  apiKeys,
  auditLog,
  emails,
  identities,
  invitations,
  memberships,
  orgs,
  refreshTokens,
  users,
} from "../../db/schema.js";
import type { Deps } from "../../deps.js";

/**
 * Everything Tollgate holds about a user, as one JSON document (GET /v1/me/export): the account,
 * memberships, linked sign-in providers, sessions, the API keys they created, invitations they sent
 * or received, what they did (the audit log) and the mail sent to them. Never a hash or a secret.
 *
 * Nothing is paged: each list keeps its newest entries up to a cap, and `truncated` names the
 * lists that reached it.
 */

export const EXPORT_FORMAT = "tollgate.personal-data.v1";

/** How many entries each list keeps at most (the newest). */
export const EXPORT_LIMITS = {
  memberships: 10_000,
  identities: 1_000,
  sessions: 1_000,
  api_keys_created: 10_000,
  invitations_sent: 10_000,
  invitations_received: 10_000,
  audit_log: 10_000,
  emails: 1_000,
} as const;

type ListName = keyof typeof EXPORT_LIMITS;

const Time = z.string().openapi({ format: "date-time", example: "2026-11-24T13:00:00.000Z" });
const TimeOrNull = Time.nullable();

const ExportedInvitation = z.object({
  id: z.string(),
  org_id: z.string(),
  email: z.string(),
  role: z.string(),
  created_at: Time,
  expires_at: Time,
  accepted_at: TimeOrNull,
  revoked_at: TimeOrNull,
});

export const PersonalDataExport = z
  .object({
    format: z.literal(EXPORT_FORMAT),
    generated_at: Time,
    truncated: z.array(z.string()).openapi({
      description:
        "Lists that reached their cap (audit_log 10 000, emails 1 000, sessions 1 000, …): only the newest entries are in this file.",
    }),
    user: z.object({
      id: z.string(),
      email: z.string(),
      name: z.string(),
      email_verified_at: TimeOrNull,
      two_factor_enabled: z.boolean(),
      has_password: z.boolean(),
      created_at: Time,
      updated_at: Time,
    }),
    memberships: z.array(
      z.object({
        org_id: z.string(),
        org_name: z.string(),
        org_personal: z.boolean(),
        org_deleted_at: TimeOrNull,
        role: z.string(),
        joined_at: Time,
      }),
    ),
    identities: z
      .array(
        z.object({
          provider: z.string(),
          subject: z.string(),
          email: z.string().nullable(),
          linked_at: Time,
        }),
      )
      .openapi({ description: "Accounts at single sign-on providers linked to this user" }),
    sessions: z
      .array(
        z.object({
          id: z.string(),
          current: z.boolean().openapi({ description: "The session this export was asked from" }),
          started_at: Time,
          last_refreshed_at: TimeOrNull,
          expires_at: Time,
          revoked_at: TimeOrNull,
          second_factor: z.boolean(),
          user_agent: z.string().nullable(),
        }),
      )
      .openapi({ description: "Sign-in sessions (refresh-token families), newest first" }),
    api_keys_created: z.array(
      z.object({
        id: z.string(),
        org_id: z.string(),
        name: z.string(),
        prefix: z.string(),
        scopes: z.array(z.string()),
        created_at: Time,
        expires_at: TimeOrNull,
        last_used_at: TimeOrNull,
        revoked_at: TimeOrNull,
      }),
    ),
    invitations: z.object({
      sent: z.array(ExportedInvitation).openapi({ description: "Invitations this user sent" }),
      received: z
        .array(ExportedInvitation)
        .openapi({ description: "Invitations addressed to this user's e-mail address" }),
    }),
    audit_log: z
      .array(
        z.object({
          id: z.string(),
          org_id: z.string().nullable(),
          action: z.string(),
          target: z.object({ type: z.string(), id: z.string().nullable() }).nullable(),
          metadata: z.record(z.string(), z.unknown()),
          ip: z.string().nullable(),
          created_at: Time,
        }),
      )
      .openapi({ description: "What this user did, newest first" }),
    emails: z
      .array(
        z.object({
          id: z.string(),
          to: z.string(),
          subject: z.string(),
          template: z.string(),
          status: z.string(),
          org_id: z.string().nullable(),
          created_at: Time,
          sent_at: TimeOrNull,
          text: z.string().openapi({
            description: "The plain-text body (a placeholder once delivered over SMTP: bodies are not kept)",
          }),
        }),
      )
      .openapi({ description: "Messages addressed to this user, newest first" }),
  })
  .openapi("PersonalDataExport");

export type PersonalDataExport = z.infer<typeof PersonalDataExport>;

const iso = (d: Date) => d.toISOString();
const isoOrNull = (d: Date | null) => (d ? d.toISOString() : null);

/**
 * Builds the export for one user, in one read-only snapshot (every list agrees with every other).
 * `sessionId` marks the session asking.
 */
export async function buildExport(
  deps: Deps,
  userId: string,
  sessionId: string,
): Promise<PersonalDataExport> {
  const truncated: ListName[] = [];
  /** Reads one more row than the cap, to know whether the list was cut. */
  const capped = async <T>(name: ListName, read: (limit: number) => Promise<T[]>): Promise<T[]> => {
    const rows = await read(EXPORT_LIMITS[name] + 1);
    if (rows.length <= EXPORT_LIMITS[name]) return rows;
    truncated.push(name);
    return rows.slice(0, EXPORT_LIMITS[name]);
  };

  return deps.database.db.transaction(
    async (tx: Database) => {
      const [user] = await tx.select().from(users).where(eq(users.id, userId));
      if (!user) throw new Error(`user ${userId} vanished during its export`);

      const memberRows = await capped("memberships", (limit) =>
        tx
          .select({ membership: memberships, org: orgs })
          .from(memberships)
          .innerJoin(orgs, eq(orgs.id, memberships.orgId))
          .where(eq(memberships.userId, userId))
          .orderBy(desc(memberships.createdAt))
          .limit(limit),
      );

      const identityRows = await capped("identities", (limit) =>
        tx
          .select()
          .from(identities)
          .where(eq(identities.userId, userId))
          .orderBy(desc(identities.createdAt))
          .limit(limit),
      );

      const sessionRows = await capped("sessions", (limit) =>
        tx
          .select({
            id: refreshTokens.familyId,
            startedAt: min(refreshTokens.createdAt),
            lastIssuedAt: max(refreshTokens.createdAt),
            tokens: count(),
            expiresAt: max(refreshTokens.expiresAt),
            revokedAt: max(refreshTokens.revokedAt),
            secondFactor: sql<boolean>`bool_or(${refreshTokens.secondFactor})`,
            userAgent: sql<
              string | null
            >`(array_agg(${refreshTokens.userAgent} order by ${refreshTokens.createdAt} desc))[1]`,
          })
          .from(refreshTokens)
          .where(eq(refreshTokens.userId, userId))
          .groupBy(refreshTokens.familyId)
          .orderBy(desc(min(refreshTokens.createdAt)))
          .limit(limit),
      );

      const keyRows = await capped("api_keys_created", (limit) =>
        tx
          .select()
          .from(apiKeys)
          .where(eq(apiKeys.createdBy, userId))
          .orderBy(desc(apiKeys.createdAt))
          .limit(limit),
      );

      const sent = await capped("invitations_sent", (limit) =>
        tx
          .select()
          .from(invitations)
          .where(eq(invitations.invitedBy, userId))
          .orderBy(desc(invitations.createdAt))
          .limit(limit),
      );
      const received = await capped("invitations_received", (limit) =>
        tx
          .select()
          .from(invitations)
          .where(eq(invitations.email, user.email))
          .orderBy(desc(invitations.createdAt))
          .limit(limit),
      );

      const auditRows = await capped("audit_log", (limit) =>
        tx
          .select()
          .from(auditLog)
          .where(and(eq(auditLog.actorType, "user"), eq(auditLog.actorId, userId)))
          .orderBy(desc(auditLog.id))
          .limit(limit),
      );

      const emailRows = await capped("emails", (limit) =>
        tx.select().from(emails).where(eq(emails.to, user.email)).orderBy(desc(emails.id)).limit(limit),
      );

      const invitationOut = (row: typeof invitations.$inferSelect) => ({
        id: row.id,
        org_id: row.orgId,
        email: row.email,
        role: row.role,
        created_at: iso(row.createdAt),
        expires_at: iso(row.expiresAt),
        accepted_at: isoOrNull(row.acceptedAt),
        revoked_at: isoOrNull(row.revokedAt),
      });

      return {
        format: EXPORT_FORMAT,
        generated_at: iso(deps.clock.now()),
        truncated,
        user: {
          id: user.id,
          email: user.email,
          name: user.name,
          email_verified_at: isoOrNull(user.emailVerifiedAt),
          two_factor_enabled: user.totpEnabledAt !== null,
          has_password: user.passwordHash !== null,
          created_at: iso(user.createdAt),
          updated_at: iso(user.updatedAt),
        },
        memberships: memberRows.map(({ membership, org }) => ({
          org_id: org.id,
          org_name: org.name,
          org_personal: org.personal,
          org_deleted_at: isoOrNull(org.deletedAt),
          role: membership.role,
          joined_at: iso(membership.createdAt),
        })),
        identities: identityRows.map((row) => ({
          provider: row.provider,
          subject: row.subject,
          email: row.email,
          linked_at: iso(row.createdAt),
        })),
        sessions: sessionRows.map((row) => ({
          id: row.id,
          current: row.id === sessionId,
          // Never null: a family has at least one token.
          started_at: isoOrNull(row.startedAt) ?? "",
          last_refreshed_at: row.tokens > 1 ? isoOrNull(row.lastIssuedAt) : null,
          expires_at: isoOrNull(row.expiresAt) ?? "",
          revoked_at: isoOrNull(row.revokedAt),
          second_factor: Boolean(row.secondFactor),
          user_agent: row.userAgent ?? null,
        })),
        api_keys_created: keyRows.map((row) => ({
          id: row.id,
          org_id: row.orgId,
          name: row.name,
          prefix: row.prefix,
          scopes: row.scopes,
          created_at: iso(row.createdAt),
          expires_at: isoOrNull(row.expiresAt),
          last_used_at: isoOrNull(row.lastUsedAt),
          revoked_at: isoOrNull(row.revokedAt),
        })),
        invitations: { sent: sent.map(invitationOut), received: received.map(invitationOut) },
        audit_log: auditRows.map((row) => ({
          id: row.id,
          org_id: row.orgId,
          action: row.action,
          target: row.targetType ? { type: row.targetType, id: row.targetId } : null,
          metadata: row.metadata,
          ip: row.ip,
          created_at: iso(row.createdAt),
        })),
        emails: emailRows.map((row) => ({
          id: row.id,
          to: row.to,
          subject: row.subject,
          template: row.template,
          status: row.status,
          org_id: row.orgId,
          created_at: iso(row.createdAt),
          sent_at: isoOrNull(row.sentAt),
          text: row.text,
        })),
      };
    },
    { isolationLevel: "repeatable read", accessMode: "read only" },
  );
}
