import type { AddressInfo } from "node:net";
import { createServer } from "node:net";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LogCapture } from "../../../test/support/app.js";
import { startSmtpServer } from "../../../test/support/smtp-server.js";
import { createTestDatabase, databaseModes, type TestDatabase } from "../../../test/support/storage.js";
import { emails } from "../../db/schema.js";
import { ManualClock } from "../../lib/clock.js";
import { createLogger } from "../../lib/logger.js";
import { createMailer, defaultSender, SENT_BODY } from "./mailer.js";

const message = {
  to: "ada@example.com",
  subject: "Verify your e-mail address",
  text: "Open https://app.example.test/verify-email?token=abc123 to verify.\n",
  html: '<p>Open <a href="https://app.example.test/verify-email?token=abc123">this link</a> to verify.</p>',
  template: "verify_email",
};

/** A loopback port with nothing listening on it. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe.each(databaseModes)("mailer (%s)", (mode) => {
  let testDb: TestDatabase;
  const logs = new LogCapture();
  const logger = createLogger("debug", logs);
  const clock = new ManualClock(Date.parse("2026-03-01T12:00:00Z"));

  beforeAll(async () => {
    testDb = await createTestDatabase(mode);
  });
  afterAll(() => testDb.drop());

  const row = async (id: string) => {
    const [found] = await testDb.handle.db.select().from(emails).where(eq(emails.id, id));
    return found;
  };

  it("keeps the message in the outbox when no SMTP server is configured", async () => {
    const mailer = createMailer({
      database: testDb.handle,
      logger,
      from: "Tollgate <no-reply@example.test>",
      clock,
    });
    expect(mailer.kind).toBe("outbox");
    const result = await mailer.send({ ...message, orgId: "org_01jd0000000000000000000000" });
    expect(result.status).toBe("outbox");
    expect(result.id).toMatch(/^eml_[0-9a-z]{26}$/);
    expect(await row(result.id)).toMatchObject({
      to: message.to,
      subject: message.subject,
      text: message.text,
      html: message.html,
      template: "verify_email",
      orgId: "org_01jd0000000000000000000000",
      status: "outbox",
      error: null,
      sentAt: null,
      createdAt: clock.now(),
    });
    await mailer.close();
  });

  it("sends over SMTP and records the message as sent", async () => {
    const smtp = await startSmtpServer();
    const mailer = createMailer({
      database: testDb.handle,
      smtpUrl: smtp.url,
      logger,
      from: defaultSender("https://app.example.test"),
      clock,
    });
    try {
      expect(mailer.kind).toBe("smtp");
      const result = await mailer.send(message);
      expect(result.status).toBe("sent");
      const [mail] = await smtp.waitForMessages(1);
      expect(mail?.rcptTo).toEqual(["ada@example.com"]);
      expect(mail?.mailFrom).toBe("no-reply@app.example.test");
      expect(mail?.headers.from).toBe("Tollgate <no-reply@app.example.test>");
      expect(mail?.headers.to).toBe("ada@example.com");
      expect(mail?.subject).toBe(message.subject);
      expect(mail?.text).toContain("https://app.example.test/verify-email?token=abc123");
      expect(mail?.html).toContain('href="https://app.example.test/verify-email?token=abc123"');
      expect(await row(result.id)).toMatchObject({ status: "sent", sentAt: clock.now(), error: null });
      // Delivered: the stored copy no longer carries the live link.
      expect(await row(result.id)).toMatchObject({ text: SENT_BODY, html: SENT_BODY });
    } finally {
      await mailer.close();
      await smtp.close();
    }
  });

  it("logs in with the credentials in SMTP_URL", async () => {
    const smtp = await startSmtpServer({ auth: { user: "mailer", pass: "s3cret-pass" } });
    const url = new URL(smtp.url);
    url.username = "mailer";
    url.password = "s3cret-pass";
    const mailer = createMailer({
      database: testDb.handle,
      smtpUrl: url.toString(),
      logger,
      from: "t@example.test",
    });
    try {
      expect((await mailer.send(message)).status).toBe("sent");
      const [mail] = await smtp.waitForMessages(1);
      expect(mail?.user).toBe("mailer");
    } finally {
      await mailer.close();
      await smtp.close();
    }
    expect(logs.text).not.toContain("s3cret-pass");
  });

  it("keeps a message the server refuses, as failed with the server's reply", async () => {
    const smtp = await startSmtpServer({ rejectRecipients: "Mailbox unavailable" });
    const mailer = createMailer({
      database: testDb.handle,
      smtpUrl: smtp.url,
      logger,
      from: "t@example.test",
      clock,
    });
    try {
      const result = await mailer.send(message);
      expect(result.status).toBe("failed");
      expect(smtp.messages).toHaveLength(0);
      const stored = await row(result.id);
      expect(stored).toMatchObject({
        status: "failed",
        sentAt: null,
        text: message.text,
        html: message.html,
      });
      expect(stored?.error).toContain("550");
      expect(stored?.error).toContain("Mailbox unavailable");
      expect(logs.text).toContain(result.id);
    } finally {
      await mailer.close();
      await smtp.close();
    }
  });

  it("keeps the message as failed when no server answers, without throwing", async () => {
    const port = await closedPort();
    const mailer = createMailer({
      database: testDb.handle,
      smtpUrl: `smtp://127.0.0.1:${port}`,
      logger,
      from: "t@example.test",
    });
    try {
      const result = await mailer.send(message);
      expect(result.status).toBe("failed");
      const stored = await row(result.id);
      expect(stored).toMatchObject({ status: "failed", subject: message.subject });
      expect(stored?.error).toMatch(/ECONNREFUSED|connect/i);
    } finally {
      await mailer.close();
    }
  });

  it("never logs addresses or bodies", () => {
    expect(logs.text.length).toBeGreaterThan(0);
    expect(logs.text).not.toContain("ada@example.com");
    expect(logs.text).not.toContain("abc123");
  });
});
