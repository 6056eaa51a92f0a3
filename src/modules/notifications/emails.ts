import { and, eq, inArray } from "drizzle-orm";
import { memberships, orgs, type Role, users } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { type ActionEmail, brandFor, type EmailBrand, renderActionEmail } from "../../lib/email-templates.js";

/**
 * E-mails about an org to the people who run it: a welcome after registration, quota warnings (80%
 * and 100% of a limit), reminders to upgrade, and a webhook endpoint disabled after failing for days.
 * Each is HTML and text in the org's own branding (see brandFor), one message per recipient.
 *
 * Errors propagate: these run inside background jobs that retry them (the welcome e-mail's caller,
 * registration, catches and logs instead). Delivery itself is the mailer's (queued, retried).
 */

/** Who hears about an org's running: its owners and admins. */
export const ADMIN_ROLES: readonly Role[] = ["owner", "admin"];
/** Who hears about what an org pays or may have to pay: owners, admins and billing members. */
export const BILLING_ROLES: readonly Role[] = ["owner", "admin", "billing"];

export interface OrgContact {
  email: string;
  name: string;
}

/** The org's members with one of `roles` (each address once) and the org's name. */
export async function orgContacts(
  deps: Deps,
  orgId: string,
  roles: readonly Role[],
): Promise<{ orgName: string; contacts: OrgContact[] }> {
  const rows = await deps.database.db
    .select({ email: users.email, name: users.name })
    .from(memberships)
    .innerJoin(users, eq(users.id, memberships.userId))
    .where(and(eq(memberships.orgId, orgId), inArray(memberships.role, [...roles])))
    .orderBy(users.email);
  const [org] = await deps.database.db.select({ name: orgs.name }).from(orgs).where(eq(orgs.id, orgId));
  const contacts = [...new Map(rows.map((row) => [row.email, row])).values()];
  return { contacts, orgName: org?.name ?? "your organization" };
}

export const greeting = (name: string) => (name.trim() ? `Hi ${name.trim()},` : "Hi,");

type Words = Omit<ActionEmail, "brand">;

/** Renders and records one e-mail per contact, in the org's branding. */
export async function sendToOrgContacts(
  deps: Deps,
  input: {
    orgId: string;
    template: string;
    roles: readonly Role[];
    build: (context: { orgName: string; brand: EmailBrand; contact: OrgContact }) => Words;
  },
): Promise<number> {
  const { orgId, template } = input;
  const { contacts, orgName } = await orgContacts(deps, orgId, input.roles);
  if (contacts.length === 0) return 0;
  const brand = await brandFor(deps, orgId);
  for (const contact of contacts) {
    const words = input.build({ orgName, brand, contact });
    await deps.mailer.send({ to: contact.email, ...renderActionEmail({ ...words, brand }), template, orgId });
  }
  return contacts.length;
}

/** `2025-03-01 00:00 UTC`: mail is read in every time zone, so the zone is named. */
export const formatInstant = (date: Date) => `${date.toISOString().slice(0, 16).replace("T", " ")} UTC`;

/** A decimal quantity with thousands separators: "1234567.5" → "1,234,567.5". */
export function formatQuantity(value: string): string {
  const match = /^(-?)(\d+)(\.\d+)?$/.exec(value.trim());
  if (!match) return value;
  return `${match[1]}${(match[2] ?? "").replace(/\B(?=(\d{3})+(?!\d))/g, ",")}${match[3] ?? ""}`;
}

function featureLabel(deps: Deps, feature: string, featureName?: string): string {
  if (featureName?.trim()) return featureName.trim();
  return deps.catalog.features.find((f) => f.key === feature)?.name ?? feature;
}

const upgradeLink = (deps: Deps, upgradeUrl: string | null) => upgradeUrl ?? `${deps.env.publicUrl}/billing`;

/** Welcomes a new user, in the branding of the org they got (their personal org at registration). */
export async function sendWelcomeEmail(deps: Deps, input: { userId: string; orgId: string }): Promise<void> {
  const [user] = await deps.database.db
    .select({ email: users.email, name: users.name })
    .from(users)
    .where(eq(users.id, input.userId));
  if (!user) return;
  const [org] = await deps.database.db.select({ name: orgs.name }).from(orgs).where(eq(orgs.id, input.orgId));
  const [membership] = await deps.database.db
    .select({ role: memberships.role })
    .from(memberships)
    .where(and(eq(memberships.orgId, input.orgId), eq(memberships.userId, input.userId)));
  const brand = await brandFor(deps, input.orgId);
  const orgName = org?.name ?? "your organization";
  const role = membership?.role ?? "member";
  await deps.mailer.send({
    to: user.email,
    ...renderActionEmail({
      subject: `Welcome to ${brand.display_name}`,
      brand,
      greeting: greeting(user.name),
      intro: [
        `Your account is ready: you sign in with ${user.email}.`,
        role === "owner"
          ? `You own ${orgName}: its API keys, usage, plan and invoices are in the dashboard, and you can invite your team there.`
          : `You are ${role === "admin" ? "an admin" : `a ${role}`} of ${orgName}.`,
      ],
      action: { label: "Open the dashboard", url: deps.env.publicUrl },
      outro: ["If you did not sign up, you can ignore this e-mail: the address stays unverified."],
    }),
    template: "welcome",
    orgId: input.orgId,
  });
}

/** 80% (`quota_80`) or all (`quota_100`, any threshold of 100 or more) of a limit used. */
export async function sendQuotaEmails(
  deps: Deps,
  input: {
    orgId: string;
    feature: string;
    featureName?: string;
    threshold: number;
    limit: string;
    used: string;
    resetsAt: Date | null;
    upgradeUrl: string | null;
  },
): Promise<void> {
  const name = featureLabel(deps, input.feature, input.featureName);
  const reached = input.threshold >= 100;
  const limit = formatQuantity(input.limit);
  const used = formatQuantity(input.used);
  await sendToOrgContacts(deps, {
    orgId: input.orgId,
    template: reached ? "quota_100" : `quota_${input.threshold}`,
    roles: BILLING_ROLES,
    build: ({ orgName, contact }) => ({
      subject: reached
        ? `You have reached your limit of ${name} for ${orgName}`
        : `You have used ${input.threshold}% of ${name} for ${orgName}`,
      greeting: greeting(contact.name),
      intro: reached
        ? [
            `${orgName} has reached its limit of ${limit} ${name} (used: ${used}).`,
            input.resetsAt
              ? `Further use may be refused until the limit resets on ${formatInstant(input.resetsAt)}. Upgrading the plan raises the limit at once.`
              : "Further use may be refused until the plan changes: this limit does not reset by itself. Upgrading the plan raises it at once.",
          ]
        : [
            `${orgName} has used ${used} of its ${limit} ${name} (${input.threshold}%).`,
            input.resetsAt
              ? `The limit resets on ${formatInstant(input.resetsAt)}. To keep going if it is reached before then, upgrade the plan.`
              : "This limit does not reset by itself. To keep going once it is reached, upgrade the plan.",
          ],
      action: { label: "Upgrade the plan", url: upgradeLink(deps, input.upgradeUrl) },
      outro: ["You receive this as an owner, admin or billing member of the organization."],
    }),
  });
}

/** A reminder that an org is still held at a limit its plan sets (`upgrade_reminder`). */
export async function sendUpgradeReminderEmails(
  deps: Deps,
  input: {
    orgId: string;
    feature: string;
    featureName?: string;
    limit: string;
    resetsAt: Date | null;
    upgradeUrl: string | null;
  },
): Promise<void> {
  const name = featureLabel(deps, input.feature, input.featureName);
  const limit = formatQuantity(input.limit);
  await sendToOrgContacts(deps, {
    orgId: input.orgId,
    template: "upgrade_reminder",
    roles: BILLING_ROLES,
    build: ({ orgName, contact }) => ({
      subject: `Reminder: ${orgName} is at its limit of ${name}`,
      greeting: greeting(contact.name),
      intro: [
        `${orgName} is still at its limit of ${limit} ${name}, so further use may be refused.`,
        input.resetsAt
          ? `The limit resets on ${formatInstant(input.resetsAt)}; upgrading the plan raises it at once.`
          : "This limit does not reset by itself; upgrading the plan raises it at once.",
      ],
      action: { label: "Upgrade the plan", url: upgradeLink(deps, input.upgradeUrl) },
      outro: ["You receive this as an owner, admin or billing member of the organization."],
    }),
  });
}

/** A webhook endpoint disabled after failing for days (`webhook_disabled`), to owners and admins. */
export async function sendWebhookDisabledEmails(
  deps: Deps,
  input: { orgId: string; endpointId: string; url: string; reason: string; failingSince: Date },
): Promise<void> {
  await sendToOrgContacts(deps, {
    orgId: input.orgId,
    template: "webhook_disabled",
    roles: ADMIN_ROLES,
    build: ({ orgName, contact }) => ({
      subject: `A webhook endpoint of ${orgName} was disabled`,
      greeting: greeting(contact.name),
      intro: [
        `We disabled the webhook endpoint ${input.url} (${input.endpointId}) of ${orgName}: deliveries to it have failed since ${formatInstant(input.failingSince)}.`,
        `Reason: ${input.reason}`,
        "Deliveries to it are paused while it is disabled. Once the endpoint answers again, enable it on the webhooks page.",
      ],
      action: { label: "Review the webhooks", url: `${deps.env.publicUrl}/webhooks` },
      outro: ["You receive this as an owner or admin of the organization."],
    }),
  });
}
