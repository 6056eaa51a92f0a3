import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { appModes, createTestApp, type TestApp } from "./support/app.js";
import { startSmtpServer, type TestSmtpServer } from "./support/smtp-server.js";
import { freePort } from "./support/tollgate-process.js";

/**
 * Background jobs as an admin sees them: an e-mail whose SMTP server is down is retried with backoff
 * until its attempts run out, then waits in the dead-letter list and is marked failed in the outbox;
 * once the server is back, a retry from the list delivers it. Platform admins see what the operator
 * sees; nobody else does.
 */

const PASSWORD = "correct horse battery staple";
const iso = (ms: number) => new Date(ms).toISOString();

describe.each(appModes.filter((mode) => mode.database === "pglite"))(
  "jobs, as admins see them ($name)",
  (mode) => {
    let t: TestApp;
    let port: number;
    let smtp: TestSmtpServer | undefined;
    beforeAll(async () => {
      port = await freePort();
      t = await createTestApp({
        ...mode,
        env: {
          TOLLGATE_TEST_CLOCK: "1",
          SMTP_URL: `smtp://127.0.0.1:${port}`,
          TOLLGATE_PLATFORM_ADMINS: "root@example.com",
        },
      });
    });
    afterAll(async () => {
      await t.close();
      await smtp?.close();
    });

    const advanceBy = async (ms: number) => {
      const now = Date.parse((await t.call("GET", "/v1/test-clock", { auth: "operator" })).body.now);
      expect(
        (await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: { to: iso(now + ms) } }))
          .status,
      ).toBe(200);
    };

    it("dead-letters an undeliverable e-mail, and a retry delivers it once the server is back", async () => {
      const res = await t.call("POST", "/v1/auth/forgot-password", {
        body: { email: "nobody-here@example.com" },
      });
      expect(res.status).toBe(202);
      const register = await t.call("POST", "/v1/auth/register", {
        body: { email: "ada@example.com", password: PASSWORD, name: "Ada" },
      });
      expect(register.status).toBe(201);
      // Eight attempts with backoff from 30 s, doubling: each advance runs the one that came due.
      for (let step = 0; step < 10; step++) await advanceBy(60 * 60_000);
      const dead = (await t.call("GET", "/v1/admin/jobs/dead", { auth: "operator" })).body.data as {
        id: string;
        name: string;
        attempts: number;
        error: string;
        payload: { email_id: string };
      }[];
      const deliveries = dead.filter((job) => job.name === "email.deliver");
      expect(deliveries.length).toBeGreaterThanOrEqual(2); // verification and welcome
      expect(deliveries[0]).toMatchObject({ attempts: 8 });
      expect(deliveries[0]?.error).toMatch(/ECONNREFUSED|connect/i);
      const outbox = (await t.call("GET", "/v1/admin/emails?to=ada@example.com", { auth: "operator" })).body
        .data;
      expect(outbox.map((m: { status: string }) => m.status)).toEqual(outbox.map(() => "failed"));

      // The server comes back. Failed messages stay failed, but an admin's retry of a dead job sends it.
      smtp = await startSmtpServer({ port });
      const verification = outbox.find((m: { template: string }) => m.template === "verify_email");
      const job = deliveries.find((d) => d.payload.email_id === verification.id);
      if (!job) throw new Error("no dead job for the verification e-mail");
      const retried = await t.call("POST", `/v1/admin/jobs/dead/${encodeURIComponent(job.id)}/retry`, {
        auth: "operator",
      });
      expect(retried.status, retried.text).toBe(202);
      await advanceBy(1000);
      const [mail] = await smtp.waitForMessages(1);
      expect(mail?.subject).toBe("Verify your e-mail address");
      expect(mail?.rcptTo).toEqual(["ada@example.com"]);
      const after = (await t.call("GET", "/v1/admin/emails?to=ada@example.com", { auth: "operator" })).body
        .data;
      expect(after.find((m: { id: string }) => m.id === verification.id)).toMatchObject({
        status: "sent",
        error: null,
      });
      const stillDead = (await t.call("GET", "/v1/admin/jobs/dead", { auth: "operator" })).body.data;
      expect(stillDead.map((d: { id: string }) => d.id)).not.toContain(job.id);
      // Not dead any more: nothing to retry.
      expect(
        (
          await t.call("POST", `/v1/admin/jobs/dead/${encodeURIComponent(job.id)}/retry`, {
            auth: "operator",
          })
        ).status,
      ).toBe(404);
      // Run again (a duplicate delivery of the job), a sent message is not sent twice.
      await t.deps.mailer.deliver(verification.id, { final: true });
      expect(smtp.messages).toHaveLength(1);
    });

    it("shows the outbox and the dead-letter list to platform admins only", async () => {
      const root = await t.call("POST", "/v1/auth/register", {
        body: { email: "root@example.com", password: PASSWORD, name: "Root" },
      });
      const user = await t.call("POST", "/v1/auth/register", {
        body: { email: "user@example.com", password: PASSWORD, name: "User" },
      });
      // Not verified yet: not an admin.
      expect((await t.call("GET", "/v1/admin/emails", { auth: root.body.access_token })).status).toBe(403);
      expect((await t.call("GET", "/v1/admin/emails", { auth: user.body.access_token })).status).toBe(403);
      expect((await t.call("GET", "/v1/admin/jobs/dead", { auth: user.body.access_token })).status).toBe(403);
      expect((await t.call("GET", "/v1/admin/jobs/dead")).status).toBe(401);
      expect(
        (await t.call("POST", "/v1/admin/jobs/dead/job_x/retry", { auth: user.body.access_token })).status,
      ).toBe(403);
      expect((await t.call("POST", "/v1/admin/jobs/dead/job_x/retry", { auth: "operator" })).status).toBe(
        404,
      );
    });
  },
);
