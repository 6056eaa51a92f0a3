import { sql } from "drizzle-orm";
import {
  boolean,
  index,
  integer,
  jsonb,
  pgTable,
  primaryKey,
  text,
  timestamp,
  uniqueIndex,
} from "drizzle-orm/pg-core";

/**
 * The one schema, for embedded PGlite and real Postgres alike. Change it here, then run
 * `npm run db:generate` to write the next migration into migrations/.
 */

const timestamps = {
  createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
};

/** Instance-wide settings: generated secrets (hashed where possible), the test clock's time. */
export const instanceSettings = pgTable("instance_settings", {
  key: text("key").primaryKey(),
  value: text("value").notNull(),
  ...timestamps,
  updatedAt: timestamp("updated_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
});

/**
 * The durable job queue used when Redis is not configured (and the dead-letter list in both modes).
 * Rows are claimed with FOR UPDATE SKIP LOCKED, so several processes can share it.
 */
export const jobs = pgTable(
  "jobs",
  {
    id: text("id").primaryKey(),
    name: text("name").notNull(),
    payload: jsonb("payload").notNull(),
    status: text("status", { enum: ["queued", "running", "completed", "dead"] })
      .notNull()
      .default("queued"),
    attempts: integer("attempts").notNull().default(0),
    maxAttempts: integer("max_attempts").notNull(),
    runAt: timestamp("run_at", { withTimezone: true, mode: "date" }).notNull(),
    lockedUntil: timestamp("locked_until", { withTimezone: true, mode: "date" }),
    lastError: text("last_error"),
    dedupKey: text("dedup_key"),
    ...timestamps,
    completedAt: timestamp("completed_at", { withTimezone: true, mode: "date" }),
  },
  (t) => [
    index("jobs_due_idx").on(t.runAt).where(sql`${t.status} = 'queued'`),
    index("jobs_status_idx").on(t.status),
    uniqueIndex("jobs_dedup_key_idx").on(t.dedupKey),
  ],
);

// ---------------------------------------------------------------------------------------------
// Identity and tenancy

export const ROLES = ["owner", "admin", "member", "billing"] as const;
export type Role = (typeof ROLES)[number];

const at = (name: string) => timestamp(name, { withTimezone: true, mode: "date" });

export const users = pgTable(
  "users",
  {
    id: text("id").primaryKey(),
    /** Stored lower-cased; unique. */
    email: text("email").notNull(),
    name: text("name").notNull(),
    /** argon2id; null for accounts that only sign in through SSO. */
    passwordHash: text("password_hash"),
    emailVerifiedAt: at("email_verified_at"),
    /** TOTP secret, encrypted with TOLLGATE_SECRET; set while enrolling, active once confirmed. */
    totpSecret: text("totp_secret"),
    totpEnabledAt: at("totp_enabled_at"),
    ...timestamps,
    updatedAt: at("updated_at").notNull().defaultNow(),
  },
  (t) => [uniqueIndex("users_email_idx").on(t.email)],
);

export const orgs = pgTable("orgs", {
  id: text("id").primaryKey(),
  name: text("name").notNull(),
  /** The org created with an account at registration. */
  personal: boolean("personal").notNull().default(false),
  /** Members must have two-factor authentication on to act in this org. */
  requireTwoFactor: boolean("require_two_factor").notNull().default(false),
  ...timestamps,
  deletedAt: at("deleted_at"),
});

export const memberships = pgTable(
  "memberships",
  {
    orgId: text("org_id")
      .notNull()
      .references(() => orgs.id),
    userId: text("user_id")
      .notNull()
      .references(() => users.id),
    role: text("role", { enum: ROLES }).notNull(),
    ...timestamps,
  },
  (t) => [primaryKey({ columns: [t.orgId, t.userId] }), index("memberships_user_idx").on(t.userId)],
);

export const invitations = pgTable(
  "invitations",
  {
    id: text("id").primaryKey(),
    orgId: text("org_id")
      .notNull()
      .references(() => orgs.id),
    email: text("email").notNull(),
    role: text("role", { enum: ROLES }).notNull(),
    tokenHash: text("token_hash").notNull(),
    invitedBy: text("invited_by").references(() => users.id),
    expiresAt: at("expires_at").notNull(),
    acceptedAt: at("accepted_at"),
    revokedAt: at("revoked_at"),
    ...timestamps,
  },
  (t) => [uniqueIndex("invitations_token_idx").on(t.tokenHash), index("invitations_org_idx").on(t.orgId)],
);

/**
 * Refresh tokens, stored hashed. Each rotation adds a row to the same family; presenting a token
 * that was already rotated (used_at set) revokes the whole family.
 */
export const refreshTokens = pgTable(
  "refresh_tokens",
  {
    id: text("id").primaryKey(),
    familyId: text("family_id").notNull(),
    userId: text("user_id")
      .notNull()
      .references(() => users.id),
    tokenHash: text("token_hash").notNull(),
    expiresAt: at("expires_at").notNull(),
    usedAt: at("used_at"),
    revokedAt: at("revoked_at"),
    /** The sign-in that started this family used a second factor; rotation keeps it, nothing upgrades it. */
    secondFactor: boolean("second_factor").notNull().default(false),
    userAgent: text("user_agent"),
    ...timestamps,
  },
  (t) => [
    uniqueIndex("refresh_tokens_hash_idx").on(t.tokenHash),
    index("refresh_tokens_family_idx").on(t.familyId),
    index("refresh_tokens_user_idx").on(t.userId),
  ],
);

/** Single-use tokens sent by e-mail: verification and password reset. Stored hashed. */
export const oneTimeTokens = pgTable(
  "one_time_tokens",
  {
    id: text("id").primaryKey(),
    userId: text("user_id")
      .notNull()
      .references(() => users.id),
    purpose: text("purpose", { enum: ["verify_email", "reset_password"] }).notNull(),
    tokenHash: text("token_hash").notNull(),
    expiresAt: at("expires_at").notNull(),
    usedAt: at("used_at"),
    ...timestamps,
  },
  (t) => [
    uniqueIndex("one_time_tokens_hash_idx").on(t.tokenHash),
    index("one_time_tokens_user_idx").on(t.userId),
  ],
);

export const recoveryCodes = pgTable(
  "recovery_codes",
  {
    id: text("id").primaryKey(),
    userId: text("user_id")
      .notNull()
      .references(() => users.id),
    codeHash: text("code_hash").notNull(),
    usedAt: at("used_at"),
    ...timestamps,
  },
  (t) => [index("recovery_codes_user_idx").on(t.userId)],
);

/** Accounts at OIDC providers linked to a user. */
export const identities = pgTable(
  "identities",
  {
    provider: text("provider").notNull(),
    subject: text("subject").notNull(),
    userId: text("user_id")
      .notNull()
      .references(() => users.id),
    email: text("email"),
    ...timestamps,
  },
  (t) => [primaryKey({ columns: [t.provider, t.subject] }), index("identities_user_idx").on(t.userId)],
);

export const apiKeys = pgTable(
  "api_keys",
  {
    id: text("id").primaryKey(),
    orgId: text("org_id")
      .notNull()
      .references(() => orgs.id),
    name: text("name").notNull(),
    /** The first characters of the key, shown in lists so a user can tell keys apart. */
    prefix: text("prefix").notNull(),
    /** SHA-256 of the whole key (keys are 256-bit random: a fast hash is right, unlike passwords). */
    keyHash: text("key_hash").notNull(),
    scopes: jsonb("scopes").$type<string[]>().notNull(),
    createdBy: text("created_by"),
    expiresAt: at("expires_at"),
    revokedAt: at("revoked_at"),
    lastUsedAt: at("last_used_at"),
    /** Set on the old key when it is rotated with a grace period. */
    replacedBy: text("replaced_by"),
    ...timestamps,
  },
  (t) => [uniqueIndex("api_keys_hash_idx").on(t.keyHash), index("api_keys_org_idx").on(t.orgId)],
);

export const auditLog = pgTable(
  "audit_log",
  {
    id: text("id").primaryKey(),
    orgId: text("org_id"),
    actorType: text("actor_type", { enum: ["user", "operator", "api_key", "system"] }).notNull(),
    actorId: text("actor_id"),
    action: text("action").notNull(),
    targetType: text("target_type"),
    targetId: text("target_id"),
    metadata: jsonb("metadata").$type<Record<string, unknown>>().notNull().default({}),
    ip: text("ip"),
    ...timestamps,
  },
  (t) => [index("audit_log_org_idx").on(t.orgId, t.createdAt)],
);

/** Mail waiting to be sent, or kept (the outbox) when no SMTP server is configured. */
export const emails = pgTable(
  "emails",
  {
    id: text("id").primaryKey(),
    to: text("to").notNull(),
    subject: text("subject").notNull(),
    text: text("text").notNull(),
    html: text("html").notNull(),
    template: text("template").notNull(),
    orgId: text("org_id"),
    status: text("status", { enum: ["outbox", "sent", "failed"] }).notNull(),
    error: text("error"),
    sentAt: at("sent_at"),
    ...timestamps,
  },
  (t) => [index("emails_to_idx").on(t.to), index("emails_created_idx").on(t.createdAt)],
);
