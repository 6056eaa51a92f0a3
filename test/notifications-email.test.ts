import { and, eq, isNull, sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { auditLog, emails, memberships, type Role, subscriptions } from "../src/db/schema.js";
import {
  sendQuotaEmails,
  sendUpgradeReminderEmails,
  sendWebhookDisabledEmails,
} from "../src/modules/notifications/emails.js";
import { createTestApp, type TestApp } from "./support/app.js";
import { type ReceivedMail, startSmtpServer, type TestSmtpServer } from "./support/smtp-server.js";

/**
 * Branded e-mails end to end: each is recorded, delivered by the background job to a real SMTP
 * server on loopback, and asserted as it arrives — subject, the org's (or the instance's) branding
 * in HTML and text, escaping, and the action link in the plain-text part.
 */

const PUBLIC_URL = "https://app.example.test";
const PASSWORD = "correct horse battery staple";
const HOSTILE = "<script>alert(1)</script>";
const LOGO = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==";
const BRANDING = {
  display_name: "Acme Cloud",
  primary_color: "#AA3300",
  logo: LOGO,
  support_email: "help@acme.test",
  footer: "Acme Cloud Ltd, 1 Main Street",
};

let seq = 0;
const unique = (label: string) => `${label}.${Date.now()}.${++seq}@example.com`;

describe("branded e-mails (pglite, SMTP)", () => {
  let smtp: TestSmtpServer;
  let t: TestApp;

  beforeAll(async () => {
    smtp = await startSmtpServer();
    t = await createTestApp({
      database: "pglite",
      redis: false,
      env: { SMTP_URL: smtp.url, TOLLGATE_PUBLIC_URL: PUBLIC_URL },
    });
  });
  afterAll(async () => {
    await t?.close();
    await smtp?.close();
  });

  /** The delivered message to `to` whose subject matches, waiting for the delivery job. */
  async function mailTo(
    to: string,
    subject: RegExp | string = /.*/,
    timeoutMs = 10_000,
  ): Promise<ReceivedMail> {
    const deadline = Date.now() + timeoutMs;
    const matches = (m: ReceivedMail) =>
      m.rcptTo.includes(to) &&
      (typeof subject === "string" ? m.subject === subject : subject.test(m.subject));
    for (;;) {
      const found = smtp.messages.find(matches);
      if (found) return found;
      if (Date.now() > deadline) {
        const rows = await t.database.db.select().from(emails).where(eq(emails.to, to));
        throw new Error(
          `no e-mail to ${to} matching ${subject}; delivered: ${JSON.stringify(smtp.messages.map((m) => [m.rcptTo, m.subject]))}; recorded: ${JSON.stringify(rows.map((r) => [r.template, r.status, r.subject, r.error]))}`,
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  const recipientsOf = (template: string, orgId: string) =>
    t.database.db
      .select({ to: emails.to })
      .from(emails)
      .where(and(eq(emails.template, template), eq(emails.orgId, orgId)))
      .then((rows) => rows.map((r) => r.to).sort());

  async function signUp(label: string, name = "Ada") {
    const email = unique(label);
    const res = await t.call("POST", "/v1/auth/register", { body: { email, password: PASSWORD, name } });
    expect(res.status, res.text).toBe(201);
    return {
      email,
      userId: res.body.user.id as string,
      orgId: res.body.org.id as string,
      access: res.body.access_token as string,
    };
  }

  /** An org named `name` owned by a new user, with an admin, a billing member and a plain member. */
  async function team(name: string, branding?: Record<string, unknown>) {
    const owner = await signUp("owner", "Olga");
    const created = await t.call("POST", "/v1/orgs", { auth: owner.access, body: { name } });
    expect(created.status, created.text).toBe(201);
    const orgId = created.body.id as string;
    if (branding) {
      const res = await t.call("PUT", `/v1/orgs/${orgId}/branding`, { auth: owner.access, body: branding });
      expect(res.status, res.text).toBe(200);
    }
    const member = async (role: Role) => {
      const user = await signUp(role, role);
      await t.database.db
        .insert(memberships)
        .values({ orgId, userId: user.userId, role, createdAt: new Date() });
      return user;
    };
    return {
      orgId,
      owner,
      admin: await member("admin"),
      billing: await member("billing"),
      member: await member("member"),
    };
  }

  /** Branding shown in both parts, and Tollgate's own name nowhere. */
  function expectBranded(mail: ReceivedMail) {
    expect(mail.html).toContain("border-bottom:3px solid #aa3300");
    expect(mail.html).toContain("background:#aa3300");
    expect(mail.html).toContain(`<img src="${LOGO}" alt="Acme Cloud"`);
    // The name as text too (clients that block data: images still show who it is from).
    expect(mail.html).toMatch(/<span[^>]*>Acme Cloud<\/span>/);
    expect(mail.html).toContain("Acme Cloud Ltd, 1 Main Street");
    expect(mail.html).toContain('<a href="mailto:help@acme.test"');
    expect(mail.text).toContain("Acme Cloud");
    expect(mail.text).toContain("Acme Cloud Ltd, 1 Main Street");
    expect(mail.text).toContain("help@acme.test");
    for (const part of [mail.subject, mail.text, mail.html]) expect(part).not.toMatch(/tollgate/i);
    // From the brand, at the configured address.
    expect(mail.headers.from).toMatch(/^"?Acme Cloud"? <no-reply@app\.example\.test>$/);
  }

  it("welcomes a new user after registration, in their org's branding", async () => {
    const user = await signUp("welcome", "Grace");
    const mail = await mailTo(user.email, /^Welcome/);
    expect(mail.subject).toBe("Welcome to Grace's organization");
    expect(mail.text).toContain("Hi Grace,");
    expect(mail.text).toContain(`Open the dashboard: ${PUBLIC_URL}`);
    expect(mail.html).toContain(`href="${PUBLIC_URL}"`);
    expect(mail.html).toContain("Grace&#39;s organization");
    expect(mail.html).toContain("#1a56db");
    for (const part of [mail.subject, mail.text, mail.html]) expect(part).not.toMatch(/tollgate/i);
    // The verification e-mail still goes out, in the instance's branding (the public URL's host).
    const verify = await mailTo(user.email, "Verify your e-mail address");
    expect(verify.text).toMatch(/^app\.example\.test\n/);
    expect(verify.text).toContain(`${PUBLIC_URL}/verify-email?token=`);
    expect(verify.html).not.toMatch(/tollgate/i);
    const [row] = await t.database.db
      .select()
      .from(emails)
      .where(and(eq(emails.to, user.email), eq(emails.template, "welcome")));
    expect(row).toMatchObject({ orgId: user.orgId });
  });

  it("sends an invitation in the inviting org's branding", async () => {
    const { orgId, owner } = await team("Rocket Science", BRANDING);
    const invitee = unique("invitee");
    const res = await t.call("POST", `/v1/orgs/${orgId}/invitations`, {
      auth: owner.access,
      body: { email: invitee, role: "admin" },
    });
    expect(res.status, res.text).toBe(201);
    const mail = await mailTo(invitee, /invited/);
    expect(mail.subject).toBe("You are invited to Rocket Science on Acme Cloud");
    expectBranded(mail);
    expect(mail.text).toContain("You have been invited to join Rocket Science on Acme Cloud as admin.");
    expect(mail.text).toMatch(new RegExp(`Accept the invitation: ${PUBLIC_URL}/invitations/[\\w-]{43}`));
  });

  it("escapes a hostile org name everywhere in the HTML", async () => {
    const { orgId, owner } = await team(HOSTILE);
    const invitee = unique("hostile");
    const res = await t.call("POST", `/v1/orgs/${orgId}/invitations`, {
      auth: owner.access,
      body: { email: invitee, role: "member" },
    });
    expect(res.status, res.text).toBe(201);
    const mail = await mailTo(invitee, /invited/);
    // The org's own name is its brand: said once, not "… on <the same name>".
    expect(mail.subject).toBe(`You are invited to ${HOSTILE}`);
    expect(mail.html).not.toContain("<script");
    expect(mail.html).toContain("&lt;script&gt;alert(1)&lt;/script&gt;");
    expect(mail.text).toContain(HOSTILE);
    expect(mail.text).toContain(`${PUBLIC_URL}/invitations/`);

    await sendWebhookDisabledEmails(t.deps, {
      orgId,
      endpointId: "whe_hostile",
      url: `https://hooks.example.test/"><script>x</script>`,
      reason: "<b>boom</b>",
      failingSince: new Date("2030-01-01T00:00:00Z"),
    });
    const disabled = await mailTo(owner.email, /webhook endpoint/);
    expect(disabled.html).not.toMatch(/<script|<b>/);
    expect(disabled.html).toContain("&lt;b&gt;boom&lt;/b&gt;");
  });

  it("warns at 80% and 100% of a quota, to owners, admins and billing members", async () => {
    const org = await team("Quota Co", BRANDING);
    await sendQuotaEmails(t.deps, {
      orgId: org.orgId,
      feature: "calls",
      featureName: "API calls",
      threshold: 80,
      limit: "10000",
      used: "8000",
      resetsAt: new Date("2030-02-01T00:00:00Z"),
      upgradeUrl: null,
    });
    const expected = [org.owner.email, org.admin.email, org.billing.email].sort();
    expect(await recipientsOf("quota_80", org.orgId)).toEqual(expected);
    const warning = await mailTo(org.admin.email, /80%/);
    expect(warning.subject).toBe("You have used 80% of API calls for Quota Co");
    expectBranded(warning);
    expect(warning.text).toContain("Hi admin,");
    expect(warning.text).toContain("Quota Co has used 8,000 of its 10,000 API calls (80%).");
    expect(warning.text).toContain("resets on 2030-02-01 00:00 UTC");
    expect(warning.text).toContain(`Upgrade the plan: ${PUBLIC_URL}/billing`);
    expect(warning.html).toContain(`href="${PUBLIC_URL}/billing"`);
    await mailTo(org.owner.email, /80%/);
    await mailTo(org.billing.email, /80%/);

    const upgradeUrl = "https://shop.example.test/upgrade?plan=pro&from=calls";
    await sendQuotaEmails(t.deps, {
      orgId: org.orgId,
      feature: "calls",
      threshold: 100,
      limit: "10000",
      used: "10000",
      resetsAt: null,
      upgradeUrl,
    });
    expect(await recipientsOf("quota_100", org.orgId)).toEqual(expected);
    const reached = await mailTo(org.billing.email, /reached your limit/);
    // No featureName: the catalog's name for the key, or the key itself.
    expect(reached.subject).toMatch(/^You have reached your limit of .+ for Quota Co$/);
    expectBranded(reached);
    expect(reached.text).toContain(`Upgrade the plan: ${upgradeUrl}`);
    expect(reached.text).toContain("does not reset by itself");
    expect(reached.html).toContain('href="https://shop.example.test/upgrade?plan=pro&amp;from=calls"');

    await sendUpgradeReminderEmails(t.deps, {
      orgId: org.orgId,
      feature: "calls",
      featureName: "API calls",
      limit: "10000",
      resetsAt: new Date("2030-02-01T00:00:00Z"),
      upgradeUrl,
    });
    expect(await recipientsOf("upgrade_reminder", org.orgId)).toEqual(expected);
    const reminder = await mailTo(org.owner.email, /^Reminder/);
    expect(reminder.subject).toBe("Reminder: Quota Co is at its limit of API calls");
    expectBranded(reminder);
    expect(reminder.text).toContain(upgradeUrl);
    // Plain members are not told.
    expect(
      smtp.messages.some((m) => m.rcptTo.includes(org.member.email) && /API calls/.test(m.subject)),
    ).toBe(false);
  });

  it("tells owners and admins (only) that a webhook endpoint was disabled", async () => {
    const org = await team("Hooks Inc", BRANDING);
    await sendWebhookDisabledEmails(t.deps, {
      orgId: org.orgId,
      endpointId: "whe_01test",
      url: "https://hooks.example.test/in",
      reason: "Every delivery failed for 5 days (last: HTTP 500).",
      failingSince: new Date("2030-01-01T12:30:00Z"),
    });
    expect(await recipientsOf("webhook_disabled", org.orgId)).toEqual(
      [org.owner.email, org.admin.email].sort(),
    );
    const mail = await mailTo(org.owner.email, /webhook endpoint/);
    expect(mail.subject).toBe("A webhook endpoint of Hooks Inc was disabled");
    expectBranded(mail);
    expect(mail.text).toContain("https://hooks.example.test/in (whe_01test)");
    expect(mail.text).toContain("since 2030-01-01 12:30 UTC");
    expect(mail.text).toContain("Reason: Every delivery failed for 5 days (last: HTTP 500).");
    expect(mail.text).toContain(`Review the webhooks: ${PUBLIC_URL}/webhooks`);
  });

  describe("admin broadcasts", () => {
    const broadcast = (body: unknown, auth?: string) =>
      t.call("POST", "/v1/admin/broadcast", { body, ...(auth ? { auth } : {}) });
    const message = {
      subject: "Scheduled maintenance",
      body: "We upgrade on Sunday.\n\nExpect <b>5 minutes</b>.",
    };

    it("is for the operator only", async () => {
      expect((await broadcast({ ...message, audience: "all" })).status).toBe(401);
      const user = await signUp("nosy");
      const res = await broadcast({ ...message, audience: "all" }, user.access);
      expect(res.status).toBe(403);
      expect(res.body.code).toBe("forbidden");
    });

    it("rejects an unknown plan and invalid input", async () => {
      const res = await broadcast({ ...message, audience: { plan: "no-such-plan" } }, "operator");
      expect(res.status).toBe(400);
      expect(res.body.code).toBe("validation_failed");
      expect(res.body.errors).toEqual([expect.objectContaining({ field: "audience.plan" })]);
      const empty = await broadcast({ subject: "", body: message.body, audience: "all" }, "operator");
      expect(empty.status).toBe(400);
      const wrong = await broadcast({ ...message, audience: "everyone" }, "operator");
      expect(wrong.status).toBe(400);
    });

    it("sends one message per user, in the instance's branding, and audits it", async () => {
      const users = await t.database.query<{ n: string }>(sql`select count(*)::text as n from users`);
      const res = await broadcast({ ...message, audience: "all" }, "operator");
      expect(res.status, res.text).toBe(202);
      expect(res.body.id).toMatch(/^bct_/);
      expect(res.body.recipients).toBe(Number(users[0]?.n));
      const anyone = await signUp("late"); // registered after: not included
      const recorded = await t.database.db
        .select({ to: emails.to })
        .from(emails)
        .where(and(eq(emails.template, "broadcast"), isNull(emails.orgId)));
      expect(recorded).toHaveLength(res.body.recipients);
      expect(recorded.map((r) => r.to)).not.toContain(anyone.email);

      const [someone] = await t.database.db
        .select({ to: emails.to })
        .from(emails)
        .where(eq(emails.template, "broadcast"))
        .limit(1);
      const mail = await mailTo(someone?.to ?? "", "Scheduled maintenance");
      expect(mail.text).toContain("We upgrade on Sunday.\n\nExpect <b>5 minutes</b>.");
      expect(mail.text).toContain("You receive this because you have an account at app.example.test.");
      expect(mail.html).toContain('<p style="margin:0 0 16px">We upgrade on Sunday.</p>');
      expect(mail.html).toContain("Expect &lt;b&gt;5 minutes&lt;/b&gt;.");
      expect(mail.html).toContain("You receive this because you have an account at app.example.test.");
      expect(mail.html).not.toContain("<a href"); // no action, no support address set
      expect(mail.html).not.toMatch(/tollgate/i);

      const [audit] = await t.database.db
        .select()
        .from(auditLog)
        .where(eq(auditLog.action, "admin.broadcast_sent"));
      expect(audit).toMatchObject({ orgId: null, actorType: "operator" });
      expect(audit?.metadata).toMatchObject({
        id: res.body.id,
        audience: "all",
        recipients: res.body.recipients,
      });
    });

    it("counts owners, and the owners and admins of orgs on a plan", async () => {
      const owners = await t.database.query<{ n: string }>(
        sql`select count(distinct m.user_id)::text as n from memberships m join orgs o on o.id = m.org_id
            where m.role = 'owner' and o.deleted_at is null`,
      );
      const res = await broadcast({ ...message, subject: "To owners", audience: "owners" }, "operator");
      expect(res.status, res.text).toBe(202);
      expect(res.body.recipients).toBe(Number(owners[0]?.n));
      expect(res.body.recipients).toBeGreaterThan(0);

      // Only one org is on Pro: its owner and admin hear, its billing and plain members do not.
      const org = await team("Pro Shop");
      await t.database.db
        .update(subscriptions)
        .set({ planKey: "pro" })
        .where(eq(subscriptions.orgId, org.orgId));
      const byPlan = await broadcast(
        { ...message, subject: "To Pro", audience: { plan: "pro" } },
        "operator",
      );
      expect(byPlan.status, byPlan.text).toBe(202);
      expect(byPlan.body.recipients).toBe(2);
      const recorded = await t.database.db
        .select({ to: emails.to })
        .from(emails)
        .where(and(eq(emails.template, "broadcast"), eq(emails.subject, "To Pro")));
      expect(recorded.map((r) => r.to).sort()).toEqual([org.owner.email, org.admin.email].sort());
      await mailTo(org.admin.email, "To Pro");
    });
  });
});
