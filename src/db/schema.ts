import { sql } from "drizzle-orm";
import {
  bigint,
  boolean,
  index,
  integer,
  jsonb,
  numeric,
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

/**
 * Jobs waiting for the transaction that caused them to commit (the transactional outbox), used with
 * the BullMQ queue: a row is written in the caller's transaction and a relay moves it to Redis after
 * the commit. (The database queue needs no outbox: its `jobs` rows are written in the transaction.)
 */
export const jobOutbox = pgTable("job_outbox", {
  id: text("id").primaryKey(),
  name: text("name").notNull(),
  payload: jsonb("payload").notNull(),
  delayMs: integer("delay_ms").notNull().default(0),
  dedupKey: text("dedup_key"),
  maxAttempts: integer("max_attempts").notNull(),
  backoffMs: integer("backoff_ms").notNull(),
  ...timestamps,
});

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
    /**
     * Set when the account was erased (DELETE /v1/me): the row stays because ids are referenced
     * everywhere, anonymised (`erased+<id>@erased.invalid`, no password, no second factor), and
     * nothing signs in to it again.
     */
    erasedAt: at("erased_at"),
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
    /** The From header's display name (the sender's brand); null: the configured sender's. */
    fromName: text("from_name"),
    orgId: text("org_id"),
    status: text("status", { enum: ["outbox", "sent", "failed"] }).notNull(),
    error: text("error"),
    sentAt: at("sent_at"),
    ...timestamps,
  },
  (t) => [index("emails_to_idx").on(t.to), index("emails_created_idx").on(t.createdAt)],
);

// ---------------------------------------------------------------------------------------------
// Plans, subscriptions and metering

/**
 * Every plan definition the catalog has ever had. A plan whose definition changes gets a new version
 * at the next boot; subscribers keep the version they bought until migrated (grandfathering).
 */
export const planVersions = pgTable(
  "plan_versions",
  {
    planKey: text("plan_key").notNull(),
    version: integer("version").notNull(),
    /** SHA-256 of the canonical JSON of `definition`: a boot with an unchanged plan adds nothing. */
    hash: text("hash").notNull(),
    /** The parsed plan, as the catalog validator normalised it. */
    definition: jsonb("definition").notNull(),
    ...timestamps,
  },
  (t) => [
    primaryKey({ columns: [t.planKey, t.version] }),
    uniqueIndex("plan_versions_hash_idx").on(t.planKey, t.hash),
  ],
);

export const SUBSCRIPTION_STATUSES = ["trialing", "active", "past_due", "canceled"] as const;
export type SubscriptionStatus = (typeof SUBSCRIPTION_STATUSES)[number];

/** An org's current subscription: every org has exactly one, created with the org. */
export const subscriptions = pgTable(
  "subscriptions",
  {
    id: text("id").primaryKey(),
    orgId: text("org_id")
      .notNull()
      .references(() => orgs.id),
    planKey: text("plan_key").notNull(),
    planVersion: integer("plan_version").notNull(),
    interval: text("interval", { enum: ["month", "year"] }).notNull(),
    status: text("status", { enum: SUBSCRIPTION_STATUSES }).notNull(),
    /** Billing periods run from this instant in steps of the interval (month-end days clamp). */
    anchorAt: at("anchor_at").notNull(),
    trialEndsAt: at("trial_ends_at"),
    /**
     * The billing run has closed every period before this instant (usage invoiced in arrears, the next
     * base fee in advance): the start of the period it will close next. Null on subscriptions older than
     * billing: the first run starts them at their current period without invoicing the past.
     */
    billedThrough: at("billed_through"),
    /** When the period starting at `billed_through` ends: the billing run's due date for this row. */
    nextBillingAt: at("next_billing_at"),
    /**
     * Bumped by a trigger on every update: what optimistic writers (the billing run, plan changes)
     * compare, since two updates within one millisecond (or one frozen test-clock instant) share an
     * `updated_at`.
     */
    revision: integer("revision").notNull().default(0),
    /** When the subscription went past_due (its grace period runs from here). */
    pastDueSince: at("past_due_since"),
    /** Set by a cancellation at period end: the billing run cancels instead of renewing. */
    cancelAtPeriodEnd: boolean("cancel_at_period_end").notNull().default(false),
    canceledAt: at("canceled_at"),
    /** A change that waits for the period end (a downgrade): the billing run applies it. */
    pendingPlanKey: text("pending_plan_key"),
    pendingPlanVersion: integer("pending_plan_version"),
    pendingInterval: text("pending_interval", { enum: ["month", "year"] }),
    ...timestamps,
    updatedAt: at("updated_at").notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex("subscriptions_org_idx").on(t.orgId),
    index("subscriptions_plan_idx").on(t.planKey, t.planVersion),
    index("subscriptions_billing_idx").on(t.nextBillingAt),
  ],
);

export const INVOICE_STATUSES = ["draft", "finalized", "paid", "void"] as const;
export type InvoiceStatus = (typeof INVOICE_STATUSES)[number];
export const INVOICE_REASONS = [
  "subscription_cycle",
  "subscription_create",
  "subscription_update",
  "manual",
] as const;
export type InvoiceReason = (typeof INVOICE_REASONS)[number];

/**
 * Invoices. A draft can change; a finalized invoice is immutable (a trigger refuses edits to its
 * amounts and lines) and can only become paid or void. Numbers are gapless and sequential: one is
 * taken from `invoice_sequences` in the transaction that finalizes, so a rollback returns it.
 */
export const invoices = pgTable(
  "invoices",
  {
    id: text("id").primaryKey(),
    orgId: text("org_id")
      .notNull()
      .references(() => orgs.id),
    subscriptionId: text("subscription_id"),
    number: text("number"),
    status: text("status", { enum: INVOICE_STATUSES }).notNull(),
    reason: text("reason", { enum: INVOICE_REASONS }).notNull(),
    currency: text("currency").notNull(),
    /** The billing period the invoice closes (usage in arrears); base fees carry their own line periods. */
    periodStart: at("period_start").notNull(),
    periodEnd: at("period_end").notNull(),
    planKey: text("plan_key"),
    planVersion: integer("plan_version"),
    interval: text("interval", { enum: ["month", "year"] }),
    subtotal: numeric("subtotal").notNull(),
    discount: numeric("discount").notNull().default("0"),
    creditsApplied: numeric("credits_applied").notNull().default("0"),
    total: numeric("total").notNull(),
    amountDue: numeric("amount_due").notNull(),
    amountPaid: numeric("amount_paid").notNull().default("0"),
    /** What makes a second attempt at the same invoice a no-op (`cycle:<subscription>:<period start>`). */
    dedupKey: text("dedup_key").notNull(),
    finalizedAt: at("finalized_at"),
    dueAt: at("due_at"),
    /** Dunning: when the next collection attempt is due (null: none scheduled). */
    nextAttemptAt: at("next_attempt_at"),
    paidAt: at("paid_at"),
    voidedAt: at("voided_at"),
    ...timestamps,
    updatedAt: at("updated_at").notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex("invoices_dedup_idx").on(t.dedupKey),
    uniqueIndex("invoices_number_idx").on(t.number),
    index("invoices_org_idx").on(t.orgId, t.id),
    index("invoices_dunning_idx").on(t.nextAttemptAt),
  ],
);

export const INVOICE_LINE_KINDS = [
  "base_fee",
  "usage",
  "minimum_spend",
  "proration_credit",
  "proration_charge",
] as const;
export type InvoiceLineKind = (typeof INVOICE_LINE_KINDS)[number];

/** An invoice's lines, in order. `amount` is rounded to the currency's minor unit; the total sums them. */
export const invoiceLines = pgTable(
  "invoice_lines",
  {
    invoiceId: text("invoice_id")
      .notNull()
      .references(() => invoices.id),
    position: integer("position").notNull(),
    kind: text("kind", { enum: INVOICE_LINE_KINDS }).notNull(),
    description: text("description").notNull(),
    meter: text("meter"),
    model: text("model"),
    quantity: numeric("quantity"),
    unitAmount: numeric("unit_amount"),
    amount: numeric("amount").notNull(),
    exactAmount: numeric("exact_amount").notNull(),
    periodStart: at("period_start").notNull(),
    periodEnd: at("period_end").notNull(),
    /** How the amount came about: tiers, packages, the percentage walk, proration factors. */
    details: jsonb("details").$type<Record<string, unknown>>(),
  },
  (t) => [primaryKey({ columns: [t.invoiceId, t.position] })],
);

/** Gapless counters for invoice numbers, taken under a row lock in the finalizing transaction. */
export const invoiceSequences = pgTable("invoice_sequences", {
  name: text("name").primaryKey(),
  next: bigint("next", { mode: "number" }).notNull(),
});

/**
 * Raw usage events, deduplicated per org by the caller's event id forever. `period_start` is the
 * billing period the event was counted in.
 */
export const usageEvents = pgTable(
  "usage_events",
  {
    orgId: text("org_id").notNull(),
    eventId: text("event_id").notNull(),
    meter: text("meter").notNull(),
    timestamp: at("timestamp").notNull(),
    value: numeric("value").notNull(),
    properties: jsonb("properties").$type<Record<string, unknown>>().notNull(),
    periodStart: at("period_start").notNull(),
    receivedAt: at("received_at").notNull().defaultNow(),
    /**
     * The event's place in the batch it came in: events of one batch share `received_at`, and at one
     * timestamp the one given last counts as the later (latest, the percentage walk).
     */
    batchPosition: integer("batch_position").notNull().default(0),
  },
  (t) => [
    primaryKey({ columns: [t.orgId, t.eventId] }),
    index("usage_events_meter_idx").on(t.orgId, t.meter, t.timestamp),
  ],
);

/**
 * Hourly rollups per org, meter and billing period: every read of usage (entitlements, series,
 * billing) costs the same whatever the number of events. `bucket` is the hour the events fell in
 * (an hour that straddles a period boundary has one row per period).
 */
export const usageRollups = pgTable(
  "usage_rollups",
  {
    orgId: text("org_id").notNull(),
    meter: text("meter").notNull(),
    periodStart: at("period_start").notNull(),
    bucket: at("bucket").notNull(),
    /** Events (or units consumed by checks, for count meters). */
    count: numeric("count").notNull(),
    sum: numeric("sum").notNull(),
    min: numeric("min"),
    max: numeric("max"),
    latestAt: at("latest_at"),
    latestValue: numeric("latest_value"),
    /** Σ value × epoch seconds of its timestamp: with `sum`, gives weighted_sum for any interval. */
    sumValueTime: numeric("sum_value_time").notNull(),
  },
  (t) => [primaryKey({ columns: [t.orgId, t.meter, t.periodStart, t.bucket] })],
);

/** Period totals of count and sum meters: what quotas are enforced against, one row per period. */
export const usagePeriods = pgTable(
  "usage_periods",
  {
    orgId: text("org_id").notNull(),
    meter: text("meter").notNull(),
    periodStart: at("period_start").notNull(),
    quantity: numeric("quantity").notNull(),
    updatedAt: at("updated_at").notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.orgId, t.meter, t.periodStart] })],
);

/** Distinct values seen by unique_count meters, per period. */
export const usageUniques = pgTable(
  "usage_uniques",
  {
    orgId: text("org_id").notNull(),
    meter: text("meter").notNull(),
    periodStart: at("period_start").notNull(),
    value: text("value").notNull(),
    firstSeenAt: at("first_seen_at").notNull(),
  },
  (t) => [primaryKey({ columns: [t.orgId, t.meter, t.periodStart, t.value] })],
);

/** Allocations of limit features (seats, profiles): the current amount in use per org. */
export const allocations = pgTable(
  "allocations",
  {
    orgId: text("org_id").notNull(),
    feature: text("feature").notNull(),
    value: bigint("value", { mode: "number" }).notNull(),
    updatedAt: at("updated_at").notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.orgId, t.feature] })],
);

/**
 * One row per usage journal (a running process's, or a dead one's not yet swept): how far its
 * entries are committed to Postgres. Usage acknowledged by a check is in the journal's Redis stream
 * and in its process's memory until committed here (src/modules/metering/journal.ts).
 */
export const usageJournals = pgTable("usage_journals", {
  journalId: text("journal_id").primaryKey(),
  /** Raised by whoever takes the journal over (a sweeper): the owner's later commits are refused. */
  epoch: integer("epoch").notNull().default(0),
  /** Every entry with seq ≤ this is committed (and none above it is). */
  committedSeq: bigint("committed_seq", { mode: "number" }).notNull().default(0),
  /** Real epoch ms: everything the journal acknowledged before this instant is committed. */
  committedThroughMs: bigint("committed_through_ms", { mode: "number" }).notNull(),
  heartbeatAt: at("heartbeat_at").notNull().defaultNow(),
  ...timestamps,
});

/** The first answer to each idempotent check, returned to every retry for 24 hours. */
export const checkIdempotency = pgTable(
  "check_idempotency",
  {
    orgId: text("org_id").notNull(),
    key: text("key").notNull(),
    fingerprint: text("fingerprint").notNull(),
    response: jsonb("response").notNull(),
    ...timestamps,
  },
  (t) => [primaryKey({ columns: [t.orgId, t.key] }), index("check_idempotency_created_idx").on(t.createdAt)],
);

/** A metered quota crossing one of its thresholds, recorded once per threshold and period. */
export const thresholdEvents = pgTable(
  "threshold_events",
  {
    id: text("id").primaryKey(),
    orgId: text("org_id").notNull(),
    feature: text("feature").notNull(),
    periodStart: at("period_start").notNull(),
    threshold: integer("threshold").notNull(),
    limit: numeric("limit").notNull(),
    quantity: numeric("quantity").notNull(),
    ...timestamps,
    /** When the notifications (e-mail, webhook) went out; null until the notifier has claimed it. */
    notifiedAt: at("notified_at"),
  },
  (t) => [
    uniqueIndex("threshold_events_once_idx").on(t.orgId, t.feature, t.periodStart, t.threshold, t.limit),
    index("threshold_events_created_idx").on(t.createdAt),
    index("threshold_events_unnotified_idx").on(t.createdAt).where(sql`${t.notifiedAt} is null`),
  ],
);

/**
 * Credit notes: corrections and refunds of a finalized or paid invoice, which itself never changes.
 * Numbered gaplessly (`CN-000001`) and append-only, as the invoices they correct. What a note credits
 * is settled as a refund to the card (`refund_amount`), credit for later invoices (`credit_amount`),
 * or, on an open invoice, by lowering what is left to pay.
 */
export const creditNotes = pgTable(
  "credit_notes",
  {
    id: text("id").primaryKey(),
    orgId: text("org_id").notNull(),
    invoiceId: text("invoice_id")
      .notNull()
      .references(() => invoices.id),
    number: text("number").notNull(),
    reason: text("reason", {
      enum: ["duplicate", "fraudulent", "order_change", "product_unsatisfactory", "other"],
    }).notNull(),
    memo: text("memo"),
    currency: text("currency").notNull(),
    amount: numeric("amount").notNull(),
    refundAmount: numeric("refund_amount").notNull(),
    creditAmount: numeric("credit_amount").notNull(),
    /** The part that lowers an open invoice's amount left to pay. */
    outstandingAmount: numeric("outstanding_amount").notNull(),
    /** The caller's key: the same request sent again returns this note instead of issuing another. */
    idempotencyKey: text("idempotency_key"),
    ...timestamps,
  },
  (t) => [
    uniqueIndex("credit_notes_number_idx").on(t.number),
    index("credit_notes_invoice_idx").on(t.invoiceId),
    uniqueIndex("credit_notes_idempotency_idx").on(t.orgId, t.idempotencyKey),
  ],
);

export const creditNoteLines = pgTable(
  "credit_note_lines",
  {
    id: text("id").primaryKey(),
    creditNoteId: text("credit_note_id")
      .notNull()
      .references(() => creditNotes.id),
    /** The invoice line credited (its position); null for an amount against the invoice as a whole. */
    invoiceLine: integer("invoice_line"),
    description: text("description").notNull(),
    amount: numeric("amount").notNull(),
    position: integer("position").notNull(),
  },
  (t) => [index("credit_note_lines_note_idx").on(t.creditNoteId)],
);

/** Money sent back to the card for a credit note; retried by the billing run until the provider answers. */
export const refunds = pgTable(
  "refunds",
  {
    id: text("id").primaryKey(),
    orgId: text("org_id").notNull(),
    creditNoteId: text("credit_note_id")
      .notNull()
      .references(() => creditNotes.id),
    paymentId: text("payment_id")
      .notNull()
      .references(() => payments.id),
    provider: text("provider", { enum: ["local", "stripe"] }).notNull(),
    amount: numeric("amount").notNull(),
    currency: text("currency").notNull(),
    status: text("status", { enum: ["pending", "succeeded", "failed"] }).notNull(),
    failureCode: text("failure_code"),
    reference: text("reference"),
    idempotencyKey: text("idempotency_key").notNull(),
    ...timestamps,
    updatedAt: at("updated_at"),
  },
  (t) => [
    uniqueIndex("refunds_idempotency_idx").on(t.idempotencyKey),
    index("refunds_status_idx").on(t.status),
  ],
);

/**
 * An org's white-label branding: the name, colour and logo its invoices, e-mails and dashboard carry
 * instead of the defaults. One row per org, absent until set.
 */
export const orgBranding = pgTable("org_branding", {
  orgId: text("org_id")
    .primaryKey()
    .references(() => orgs.id),
  displayName: text("display_name"),
  primaryColor: text("primary_color"),
  /** A data: URI of a PNG or JPEG (never fetched from elsewhere). */
  logo: text("logo"),
  supportEmail: text("support_email"),
  footer: text("footer"),
  updatedAt: at("updated_at").notNull(),
});

/** The org's customer at the payment provider (Stripe: `cus_…`), created once and kept. */
export const providerCustomers = pgTable(
  "provider_customers",
  {
    orgId: text("org_id")
      .primaryKey()
      .references(() => orgs.id),
    provider: text("provider", { enum: ["stripe"] }).notNull(),
    customerId: text("customer_id").notNull(),
    ...timestamps,
  },
  (t) => [uniqueIndex("provider_customers_customer_idx").on(t.provider, t.customerId)],
);

/**
 * The payment provider's webhook events, by the provider's event id: an event delivered again (a
 * retry, a replay) is acknowledged without being processed twice.
 */
export const providerEvents = pgTable("provider_events", {
  id: text("id").primaryKey(),
  provider: text("provider", { enum: ["stripe"] }).notNull(),
  type: text("type").notNull(),
  objectId: text("object_id"),
  processedAt: at("processed_at"),
  ...timestamps,
});

/** The local provider's customer portal: a short-lived link to update the card and see invoices. */
export const portalSessions = pgTable(
  "portal_sessions",
  {
    id: text("id").primaryKey(),
    orgId: text("org_id")
      .notNull()
      .references(() => orgs.id),
    returnUrl: text("return_url"),
    expiresAt: at("expires_at").notNull(),
    ...timestamps,
  },
  (t) => [index("portal_sessions_org_idx").on(t.orgId)],
);

/** The card (or provider payment method) an org pays with; the local provider keeps test cards only. */
export const paymentMethods = pgTable("payment_methods", {
  orgId: text("org_id")
    .primaryKey()
    .references(() => orgs.id),
  provider: text("provider", { enum: ["local", "stripe"] }).notNull(),
  brand: text("brand").notNull(),
  last4: text("last4").notNull(),
  /** The provider's id for it (Stripe: pm_…; local: the test card's behaviour). */
  reference: text("reference").notNull(),
  ...timestamps,
});

/**
 * Hosted checkouts: an org without a payment method pays for a subscription change here. What the
 * change costs is priced when the page is shown and again when it is paid.
 */
export const checkoutSessions = pgTable(
  "checkout_sessions",
  {
    id: text("id").primaryKey(),
    orgId: text("org_id")
      .notNull()
      .references(() => orgs.id),
    status: text("status", { enum: ["open", "completed", "expired"] }).notNull(),
    planKey: text("plan_key").notNull(),
    planVersion: integer("plan_version").notNull(),
    interval: text("interval", { enum: ["month", "year"] }).notNull(),
    invoiceId: text("invoice_id"),
    /** The provider's session for it (Stripe: `cs_…`); null for the local provider. */
    providerReference: text("provider_reference"),
    expiresAt: at("expires_at").notNull(),
    completedAt: at("completed_at"),
    ...timestamps,
  },
  (t) => [index("checkout_sessions_org_idx").on(t.orgId)],
);

/** Every attempt to collect an invoice, with the provider's answer; one per idempotency key. */
export const payments = pgTable(
  "payments",
  {
    id: text("id").primaryKey(),
    orgId: text("org_id").notNull(),
    invoiceId: text("invoice_id")
      .notNull()
      .references(() => invoices.id),
    provider: text("provider", { enum: ["local", "stripe"] }).notNull(),
    amount: numeric("amount").notNull(),
    currency: text("currency").notNull(),
    status: text("status", { enum: ["pending", "succeeded", "failed"] }).notNull(),
    /** The card charged (the provider's reference): a pending attempt sent again uses the same one. */
    paymentMethod: text("payment_method"),
    failureCode: text("failure_code"),
    reference: text("reference"),
    idempotencyKey: text("idempotency_key").notNull(),
    ...timestamps,
  },
  (t) => [
    uniqueIndex("payments_idempotency_idx").on(t.idempotencyKey),
    index("payments_invoice_idx").on(t.invoiceId),
  ],
);

/**
 * Coupons the operator creates. `percentage` takes `percent_off`; `fixed_amount` takes `amount_off` in
 * the catalog's currency. Codes are matched case-insensitively (stored upper-case).
 */
export const coupons = pgTable("coupons", {
  id: text("id").primaryKey(),
  code: text("code").notNull().unique(),
  name: text("name"),
  type: text("type", { enum: ["percentage", "fixed_amount"] }).notNull(),
  percentOff: numeric("percent_off"),
  amountOff: numeric("amount_off"),
  currency: text("currency"),
  duration: text("duration", { enum: ["once", "repeating", "forever"] }).notNull(),
  /** `repeating`: how many billing periods. */
  durationPeriods: integer("duration_periods"),
  maxRedemptions: integer("max_redemptions"),
  redemptions: integer("redemptions").notNull().default(0),
  /** Redeemable until then; redeemed coupons keep applying per their duration. */
  redeemBy: at("redeem_by"),
  ...timestamps,
});

/** A coupon an org redeemed, with what is left of it. Applied in `applied_at` order. */
export const orgCoupons = pgTable(
  "org_coupons",
  {
    id: text("id").primaryKey(),
    orgId: text("org_id")
      .notNull()
      .references(() => orgs.id),
    couponId: text("coupon_id")
      .notNull()
      .references(() => coupons.id),
    appliedAt: at("applied_at").notNull(),
    /** Invoices it has discounted. */
    periodsUsed: integer("periods_used").notNull().default(0),
    /** `repeating`: invoices written from then on are not discounted (n periods after the redemption). */
    endsAt: at("ends_at"),
    /** A `once` fixed-amount coupon's unused remainder, kept for later invoices. */
    remainingAmount: numeric("remaining_amount"),
    status: text("status", { enum: ["active", "exhausted"] }).notNull(),
  },
  (t) => [
    uniqueIndex("org_coupons_once_idx").on(t.orgId, t.couponId),
    index("org_coupons_org_idx").on(t.orgId, t.appliedAt),
  ],
);

/** What each coupon took off an invoice, in the order applied. */
export const invoiceDiscounts = pgTable(
  "invoice_discounts",
  {
    invoiceId: text("invoice_id")
      .notNull()
      .references(() => invoices.id),
    position: integer("position").notNull(),
    orgCouponId: text("org_coupon_id").notNull(),
    code: text("code").notNull(),
    amount: numeric("amount").notNull(),
  },
  (t) => [primaryKey({ columns: [t.invoiceId, t.position] })],
);

/** Prepaid balance and rewards: each grant's balance is the sum of its ledger entries. */
export const creditGrants = pgTable(
  "credit_grants",
  {
    id: text("id").primaryKey(),
    orgId: text("org_id")
      .notNull()
      .references(() => orgs.id),
    amount: numeric("amount").notNull(),
    currency: text("currency").notNull(),
    source: text("source", {
      enum: ["manual", "proration", "referral", "purchase", "credit_note", "overpayment"],
    }).notNull(),
    reason: text("reason"),
    expiresAt: at("expires_at"),
    ...timestamps,
  },
  (t) => [index("credit_grants_org_idx").on(t.orgId)],
);

/**
 * The credit ledger, append-only: a grant (+), what invoices used (−), what expired (−). History is
 * never edited; a balance is a sum.
 */
export const creditLedger = pgTable(
  "credit_ledger",
  {
    id: text("id").primaryKey(),
    orgId: text("org_id").notNull(),
    grantId: text("grant_id")
      .notNull()
      .references(() => creditGrants.id),
    invoiceId: text("invoice_id"),
    /** `restore`: credits given back when the invoice they were applied to is voided. */
    kind: text("kind", { enum: ["grant", "apply", "expire", "restore"] }).notNull(),
    amount: numeric("amount").notNull(),
    ...timestamps,
  },
  (t) => [index("credit_ledger_grant_idx").on(t.grantId), index("credit_ledger_org_idx").on(t.orgId, t.id)],
);

// ---------------------------------------------------------------------------------------------
// Outbound webhooks

export const WEBHOOK_DELIVERY_STATUSES = ["pending", "succeeded", "failed"] as const;

/** An org's endpoint: where events of the types it subscribed to are POSTed, signed with its secret. */
export const webhookEndpoints = pgTable(
  "webhook_endpoints",
  {
    id: text("id").primaryKey(),
    orgId: text("org_id")
      .notNull()
      .references(() => orgs.id, { onDelete: "cascade" }),
    url: text("url").notNull(),
    description: text("description").notNull().default(""),
    /** Event types or wildcards (`invoice.*`, `*`). */
    eventTypes: text("event_types").array().notNull(),
    /** The signing secret (`whsec_…`), encrypted with a key derived from TOLLGATE_SECRET. */
    secretEncrypted: text("secret_encrypted").notNull(),
    status: text("status", { enum: ["enabled", "disabled"] })
      .notNull()
      .default("enabled"),
    disabledReason: text("disabled_reason"),
    /** Failed attempts in a row; the backoff of the endpoint's queue follows it. */
    consecutiveFailures: integer("consecutive_failures").notNull().default(0),
    /** The first failure of the current run of failures (null while healthy). */
    failingSince: at("failing_since"),
    /** When the head of the endpoint's queue may be attempted again (null: at once). */
    nextAttemptAt: at("next_attempt_at"),
    /** A dispatcher's claim on the endpoint (real time): one sender per endpoint keeps the order. */
    leaseUntil: at("lease_until"),
    ...timestamps,
    updatedAt: at("updated_at").notNull().defaultNow(),
  },
  (t) => [index("webhook_endpoints_org_idx").on(t.orgId)],
);

/** Every event that happened to an org, as sent: the webhook id, type and payload never change. */
export const webhookEvents = pgTable(
  "webhook_events",
  {
    id: text("id").primaryKey(),
    orgId: text("org_id").notNull(),
    type: text("type").notNull(),
    /** The whole body sent: `{type, timestamp, data}`. */
    payload: jsonb("payload").notNull(),
    ...timestamps,
  },
  (t) => [index("webhook_events_org_idx").on(t.orgId, t.createdAt)],
);

/** One event to one endpoint; sent in `seq` order per endpoint. */
export const webhookDeliveries = pgTable(
  "webhook_deliveries",
  {
    id: text("id").primaryKey(),
    seq: bigint("seq", { mode: "number" }).generatedAlwaysAsIdentity(),
    endpointId: text("endpoint_id")
      .notNull()
      .references(() => webhookEndpoints.id, { onDelete: "cascade" }),
    eventId: text("event_id")
      .notNull()
      .references(() => webhookEvents.id),
    orgId: text("org_id").notNull(),
    status: text("status", { enum: WEBHOOK_DELIVERY_STATUSES }).notNull().default("pending"),
    /** `event`: fanned out when the event happened; `replay`: a copy asked for later (replay, resend). */
    origin: text("origin", { enum: ["event", "replay"] })
      .notNull()
      .default("event"),
    attempts: integer("attempts").notNull().default(0),
    lastAttemptAt: at("last_attempt_at"),
    lastStatus: integer("last_status"),
    lastError: text("last_error"),
    deliveredAt: at("delivered_at"),
    ...timestamps,
  },
  (t) => [
    index("webhook_deliveries_queue_idx").on(t.endpointId, t.seq).where(sql`${t.status} = 'pending'`),
    index("webhook_deliveries_endpoint_idx").on(t.endpointId, t.createdAt),
  ],
);

/** Each HTTP attempt of a delivery: the delivery log. */
export const webhookAttempts = pgTable(
  "webhook_attempts",
  {
    id: text("id").primaryKey(),
    deliveryId: text("delivery_id")
      .notNull()
      .references(() => webhookDeliveries.id, { onDelete: "cascade" }),
    attempt: integer("attempt").notNull(),
    at: at("at").notNull(),
    status: integer("status"),
    error: text("error"),
    responseBody: text("response_body").notNull().default(""),
    durationMs: integer("duration_ms").notNull(),
  },
  (t) => [index("webhook_attempts_delivery_idx").on(t.deliveryId, t.attempt)],
);

// ---------------------------------------------------------------------------------------------
// Revenue metrics

/**
 * Every state a subscription has been in, from the moment it took it (its `updated_at`, which every
 * change sets from the app's clock): written by a trigger on `subscriptions` (migration 0017), so no
 * change — a plan change, a trial ending, dunning, an org deleted — can forget it, and MRR, churn
 * and conversion can be computed for any past date. `mrr` is the plan version's base price per month
 * (annual prices divided by 12), 0 on free plans.
 */
export const subscriptionHistory = pgTable(
  "subscription_history",
  {
    id: text("id").primaryKey(),
    /** Write order: of several states at one instant (one transaction), the last written wins. */
    seq: bigint("seq", { mode: "number" }).generatedAlwaysAsIdentity(),
    subscriptionId: text("subscription_id").notNull(),
    orgId: text("org_id").notNull(),
    at: at("at").notNull(),
    planKey: text("plan_key").notNull(),
    planVersion: integer("plan_version").notNull(),
    interval: text("interval", { enum: ["month", "year"] }).notNull(),
    status: text("status").notNull(),
    mrr: numeric("mrr").notNull(),
    /** Unused since the trigger writes the history (amounts are in the catalog's currency). */
    currency: text("currency"),
  },
  (t) => [
    index("subscription_history_org_idx").on(t.orgId, t.at),
    index("subscription_history_at_idx").on(t.at),
  ],
);
