import { and, desc, eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { appModes, createTestApp, type TestApp } from "../../../test/support/app.js";
import { startSmtpServer, type TestSmtpServer } from "../../../test/support/smtp-server.js";
import { auditLog, emails, refreshTokens, users } from "../../db/schema.js";
import { randomToken, sha256Hex } from "../../lib/crypto.js";
import { newId } from "../../lib/ids.js";
import { sendVerificationEmail } from "./email-flows.js";
import { hashPassword, MIN_PASSWORD_LENGTH, verifyPassword } from "./passwords.js";
import { startSession } from "./sessions.js";

const hour = 3_600_000;
const OLD_PASSWORD = "old-password-0123";
/** Markup in a name must reach the HTML escaped. */
const NAME = "Ada <b>Lovelace</b>";

let seq = 0;

/** Registration is another module's: users are created directly, as it would. */
async function createUser(t: TestApp, label: string) {
  const now = t.deps.clock.now();
  const user = { id: newId("user"), email: `${label}-${++seq}@example.com`, name: NAME };
  await t.deps.database.db
    .insert(users)
    .values({ ...user, passwordHash: await hashPassword(OLD_PASSWORD), createdAt: now, updatedAt: now });
  return user;
}

async function loadUser(t: TestApp, id: string) {
  const [user] = await t.deps.database.db.select().from(users).where(eq(users.id, id));
  if (!user) throw new Error(`no user ${id}`);
  return user;
}

async function latestEmail(t: TestApp, to: string, template: string) {
  const [mail] = await t.deps.database.db
    .select()
    .from(emails)
    .where(and(eq(emails.to, to), eq(emails.template, template)))
    .orderBy(desc(emails.id))
    .limit(1);
  return mail;
}

/** The newest e-mail of a template to an address, waiting for it (forgot-password mails after answering). */
async function waitForEmail(t: TestApp, to: string, template: string, previous?: string) {
  const deadline = Date.now() + 5000;
  for (;;) {
    const mail = await latestEmail(t, to, template);
    if (mail && mail.id !== previous) return mail;
    if (Date.now() > deadline) throw new Error(`no ${template} e-mail to ${to}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const countEmails = async (t: TestApp, to: string) =>
  (await t.deps.database.db.select({ id: emails.id }).from(emails).where(eq(emails.to, to))).length;

/** What a user does: open the mail and follow the link. */
function tokenFromEmail(t: TestApp, mail: { text: string; html: string }, page: string): string {
  const prefix = `${t.deps.env.publicUrl}/${page}?token=`;
  const match = new RegExp(`${prefix.replace(/[.?/]/g, "\\$&")}([A-Za-z0-9_-]{43})`).exec(mail.text);
  if (!match?.[1]) throw new Error(`no ${page} link in:\n${mail.text}`);
  expect(mail.html).toContain(`href="${prefix}${match[1]}"`);
  return match[1];
}

describe.each(appModes)("e-mail verification and password reset ($name)", (mode) => {
  let t: TestApp;
  /** Every token handed out, checked against the logs at the end. */
  const tokens: string[] = [];

  beforeAll(async () => {
    t = await createTestApp({ ...mode, env: { TOLLGATE_TEST_CLOCK: "1" } });
  });
  afterAll(() => t.close());

  const advance = async (ms: number) => {
    const to = new Date(t.deps.clock.nowMs() + ms).toISOString();
    expect((await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: { to } })).status).toBe(
      200,
    );
  };

  const verificationToken = async (user: { id: string; email: string; name: string }) => {
    await sendVerificationEmail(t.deps, user);
    const token = tokenFromEmail(t, await waitForEmail(t, user.email, "verify_email"), "verify-email");
    tokens.push(token);
    return token;
  };

  const resetToken = async (email: string) => {
    const previous = (await latestEmail(t, email, "reset_password"))?.id;
    const res = await t.call("POST", "/v1/auth/forgot-password", { body: { email } });
    expect(res.status).toBe(202);
    const token = tokenFromEmail(
      t,
      await waitForEmail(t, email, "reset_password", previous),
      "reset-password",
    );
    tokens.push(token);
    return token;
  };

  describe("verify-email", () => {
    it("sends a verification e-mail whose link verifies the address, once", async () => {
      const user = await createUser(t, "verify");
      const token = await verificationToken(user);
      const mail = await waitForEmail(t, user.email, "verify_email");
      expect(mail).toMatchObject({ subject: "Verify your e-mail address", status: "outbox" });
      expect(mail.text).toContain(`Hi ${NAME},`);
      expect(mail.html).toContain("Hi Ada &lt;b&gt;Lovelace&lt;/b&gt;,");
      expect(mail.html).not.toContain("<b>Lovelace");
      expect((await loadUser(t, user.id)).emailVerifiedAt).toBeNull();

      const res = await t.call("POST", "/v1/auth/verify-email", { body: { token } });
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ verified: true });
      expect((await loadUser(t, user.id)).emailVerifiedAt).toEqual(t.deps.clock.now());

      const again = await t.call("POST", "/v1/auth/verify-email", { body: { token } });
      expect(again.status).toBe(400);
      expect(again.body.code).toBe("validation_failed");
      expect(again.body.errors).toEqual([expect.objectContaining({ field: "token", code: "invalid_token" })]);
    });

    it("answers a wrong, a used and an expired token alike", async () => {
      const wrong = await t.call("POST", "/v1/auth/verify-email", { body: { token: randomToken(32) } });

      const usedToken = await verificationToken(await createUser(t, "used"));
      expect((await t.call("POST", "/v1/auth/verify-email", { body: { token: usedToken } })).status).toBe(
        200,
      );
      const used = await t.call("POST", "/v1/auth/verify-email", { body: { token: usedToken } });

      const lateUser = await createUser(t, "late");
      const lateToken = await verificationToken(lateUser);
      await advance(25 * hour);
      const expired = await t.call("POST", "/v1/auth/verify-email", { body: { token: lateToken } });
      expect((await loadUser(t, lateUser.id)).emailVerifiedAt).toBeNull();

      for (const res of [wrong, used, expired]) {
        expect(res.status).toBe(400);
        expect(res.headers.get("content-type")).toBe("application/problem+json");
      }
      expect(used.body.detail).toBe(wrong.body.detail);
      expect(expired.body.detail).toBe(wrong.body.detail);
      expect(wrong.body.detail).toMatch(/invalid, already used or expired/);
    });

    it("does not take a verification token as a reset token", async () => {
      const user = await createUser(t, "purpose");
      const token = await verificationToken(user);
      const res = await t.call("POST", "/v1/auth/reset-password", {
        body: { token, password: "hijacked-password" },
      });
      expect(res.status).toBe(400);
      expect(await verifyPassword((await loadUser(t, user.id)).passwordHash ?? "", OLD_PASSWORD)).toBe(true);
      expect((await t.call("POST", "/v1/auth/verify-email", { body: { token } })).status).toBe(200);
    });

    it("lets a signed-in user ask for a new verification e-mail until verified", async () => {
      const user = await createUser(t, "resend");
      const session = await startSession(t.deps, { id: user.id, email: user.email });
      const auth = session.access_token;

      const first = await t.call("POST", "/v1/auth/verify-email/resend", { auth });
      expect(first.status).toBe(200);
      expect(first.body).toEqual({ sent: true });
      const token = tokenFromEmail(t, await waitForEmail(t, user.email, "verify_email"), "verify-email");
      tokens.push(token);
      expect((await t.call("POST", "/v1/auth/verify-email", { body: { token } })).status).toBe(200);

      const second = await t.call("POST", "/v1/auth/verify-email/resend", { auth });
      expect(second.body).toEqual({ sent: false });
      expect(await countEmails(t, user.email)).toBe(1);
    });
  });

  describe("forgot-password and reset-password", () => {
    it("answers the same for an unknown and a known address, and mails only the known one", async () => {
      const user = await createUser(t, "known");
      const unknownEmail = `nobody-${++seq}@example.com`;
      const unknown = await t.call("POST", "/v1/auth/forgot-password", { body: { email: unknownEmail } });
      const known = await t.call("POST", "/v1/auth/forgot-password", {
        body: { email: user.email.toUpperCase() },
      });
      expect(known.status).toBe(202);
      expect(unknown.status).toBe(known.status);
      expect(unknown.text).toBe(known.text);
      expect(known.body).toEqual({ accepted: true });
      expect(unknown.headers.get("content-type")).toBe(known.headers.get("content-type"));

      const mail = await waitForEmail(t, user.email, "reset_password");
      expect(mail.subject).toBe("Reset your password");
      tokens.push(tokenFromEmail(t, mail, "reset-password"));
      expect(await countEmails(t, unknownEmail)).toBe(0);
    });

    it("sets the new password, ends every session, verifies the address and audits it", async () => {
      const user = await createUser(t, "reset");
      const now = t.deps.clock.nowMs();
      const sessions = [newId("session"), newId("session")].map((familyId) => ({
        id: newId("session"),
        familyId,
        userId: user.id,
        tokenHash: sha256Hex(randomToken(32)),
        expiresAt: new Date(now + 30 * 24 * hour),
      }));
      await t.deps.database.db.insert(refreshTokens).values(sessions);

      const token = await resetToken(user.email);
      const newPassword = "a-brand-new-password";
      const res = await t.call("POST", "/v1/auth/reset-password", { body: { token, password: newPassword } });
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ reset: true });
      expect(res.text).not.toContain(token);

      const after = await loadUser(t, user.id);
      expect(await verifyPassword(after.passwordHash ?? "", newPassword)).toBe(true);
      expect(await verifyPassword(after.passwordHash ?? "", OLD_PASSWORD)).toBe(false);
      expect(after.passwordHash).toMatch(/^\$argon2id\$/);
      expect(after.emailVerifiedAt).toEqual(t.deps.clock.now());
      const rows = await t.deps.database.db
        .select()
        .from(refreshTokens)
        .where(eq(refreshTokens.userId, user.id));
      expect(rows).toHaveLength(2);
      for (const row of rows) expect(row.revokedAt).toEqual(t.deps.clock.now());
      const audits = await t.deps.database.db.select().from(auditLog).where(eq(auditLog.actorId, user.id));
      expect(audits.map((a) => a.action)).toContain("user.password_reset");

      const reuse = await t.call("POST", "/v1/auth/reset-password", {
        body: { token, password: "yet-another-password" },
      });
      expect(reuse.status).toBe(400);
      expect(reuse.body.errors).toEqual([expect.objectContaining({ field: "token" })]);
      expect(await verifyPassword((await loadUser(t, user.id)).passwordHash ?? "", newPassword)).toBe(true);
    });

    it("refuses a password that is too short, naming the field, and keeps the token usable", async () => {
      const user = await createUser(t, "short");
      const token = await resetToken(user.email);
      const res = await t.call("POST", "/v1/auth/reset-password", {
        body: { token, password: "x".repeat(MIN_PASSWORD_LENGTH - 1) },
      });
      expect(res.status).toBe(400);
      expect(res.body.code).toBe("validation_failed");
      expect(res.body.errors).toEqual([expect.objectContaining({ field: "password", location: "body" })]);
      expect(res.text).not.toContain(token);
      const ok = await t.call("POST", "/v1/auth/reset-password", {
        body: { token, password: "long-enough-now" },
      });
      expect(ok.status).toBe(200);
    });

    it("refuses an expired reset link (one hour)", async () => {
      const user = await createUser(t, "slow");
      const token = await resetToken(user.email);
      await advance(61 * 60_000);
      const res = await t.call("POST", "/v1/auth/reset-password", {
        body: { token, password: "too-late-password" },
      });
      expect(res.status).toBe(400);
      expect(res.body.detail).toMatch(/invalid, already used or expired/);
      expect(await verifyPassword((await loadUser(t, user.id)).passwordHash ?? "", OLD_PASSWORD)).toBe(true);
    });

    it("limits reset requests per address: the 6th within the hour is 429 with Retry-After", async () => {
      const email = `target-${++seq}@example.com`;
      for (let i = 0; i < 5; i++) {
        expect((await t.call("POST", "/v1/auth/forgot-password", { body: { email } })).status).toBe(202);
      }
      const sixth = await t.call("POST", "/v1/auth/forgot-password", { body: { email } });
      expect(sixth.status).toBe(429);
      expect(sixth.body.code).toBe("rate_limited");
      expect(Number(sixth.headers.get("retry-after"))).toBeGreaterThan(0);
      // Another address still gets through: the budget is per account (and a looser one per client).
      const other = await t.call("POST", "/v1/auth/forgot-password", {
        body: { email: `other-${++seq}@example.com` },
      });
      expect(other.status).toBe(202);
    });
  });

  it("never logs a token", () => {
    expect(tokens.length).toBeGreaterThanOrEqual(8);
    for (const token of tokens) expect(t.logs.text).not.toContain(token);
  });
});

describe("verification e-mail over SMTP", () => {
  let smtp: TestSmtpServer;
  let t: TestApp;

  beforeAll(async () => {
    smtp = await startSmtpServer();
    t = await createTestApp({
      database: "pglite",
      redis: false,
      env: { SMTP_URL: smtp.url, TOLLGATE_PUBLIC_URL: "https://app.example.test/" },
    });
  });
  afterAll(async () => {
    await t.close();
    await smtp.close();
  });

  it("delivers the link, and the link verifies the address", async () => {
    expect(t.deps.mailer.kind).toBe("smtp");
    const user = await createUser(t, "smtp");
    await sendVerificationEmail(t.deps, user);

    const [mail] = await smtp.waitForMessages(1);
    if (!mail) throw new Error("no mail");
    expect(mail.rcptTo).toEqual([user.email]);
    // The instance's brand (unset: the public URL's host) at the configured address; never "Tollgate".
    expect(mail.headers.from).toBe('"app.example.test" <no-reply@app.example.test>');
    expect(mail.subject).toBe("Verify your e-mail address");
    const token = tokenFromEmail(t, mail, "verify-email");
    expect(mail.text).toContain(`https://app.example.test/verify-email?token=${token}`);
    expect(mail.html).toContain("Hi Ada &lt;b&gt;Lovelace&lt;/b&gt;,");
    expect((await waitForEmail(t, user.email, "verify_email")).status).toBe("sent");

    const res = await t.call("POST", "/v1/auth/verify-email", { body: { token } });
    expect(res.status).toBe(200);
    expect((await loadUser(t, user.id)).emailVerifiedAt).not.toBeNull();
    expect(t.logs.text).not.toContain(token);
  });
});
