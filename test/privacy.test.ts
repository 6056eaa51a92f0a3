import { eq, sql } from "drizzle-orm";
import { generateSync } from "otplib";
import { PDFParse } from "pdf-parse";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { auditLog, emails, invitations, invoices, orgBranding, orgs, users } from "../src/db/schema.js";
import { createMailer } from "../src/infra/mailer/mailer.js";
import { invoicePdf } from "../src/modules/billing/documents.js";
import { appModes, createTestApp, type TestApp } from "./support/app.js";
import { startSmtpServer } from "./support/smtp-server.js";
import { writeCatalog } from "./support/tollgate-process.js";

/**
 * The privacy endpoints over HTTP: a user's copy of everything held about them (GET /v1/me/export)
 * and erasure (DELETE /v1/me) — what is asked before it, when it is refused (and then changes
 * nothing), and afterwards: no way back in, the address gone from everywhere it was copied, orgs
 * deleted or left, invoices kept without personal data, and the address free for a new account.
 */

const catalogFile = writeCatalog(`
currency: USD
default_plan: free
meters:
  - { key: calls, name: Calls, aggregation: count }
features:
  - { key: calls, type: metered, meter: calls }
plans:
  - { key: free, name: Free, price: { month: "0" }, entitlements: { calls: { limit: 10 } } }
  - { key: pro, name: Pro, price: { month: "20" }, entitlements: { calls: { limit: null } } }
`);

const PASSWORD = "correct horse battery staple";
const SECRETS = ["password_hash", "key_hash", "token_hash", "totp_secret", "code_hash", "$argon2"];

describe.each(appModes)("privacy: export and erasure ($name)", (mode) => {
  let t: TestApp;
  let seq = 0;

  beforeAll(async () => {
    t = await createTestApp({ ...mode, env: { TOLLGATE_CATALOG: catalogFile } });
  });
  afterAll(() => t?.close());

  const op = (method: string, path: string, body?: unknown) =>
    t.call(method, path, { auth: "operator", ...(body !== undefined ? { body } : {}) });

  interface Account {
    email: string;
    name: string;
    token: string;
    refresh: string;
    userId: string;
    orgId: string;
  }

  const signUp = async (first: string, last = "Tester"): Promise<Account> => {
    seq += 1;
    const email = `${first.toLowerCase()}.${seq}.${Date.now()}@example.com`;
    const name = `${first} ${last}`;
    const res = await t.call("POST", "/v1/auth/register", { body: { email, password: PASSWORD, name } });
    expect(res.status, res.text).toBe(201);
    return {
      email,
      name,
      token: res.body.access_token,
      refresh: res.body.refresh_token,
      userId: res.body.user.id,
      orgId: res.body.org.id,
    };
  };

  /** The newest outbox message of a template to an address. */
  const lastMail = async (to: string, template: string) => {
    const res = await op("GET", `/v1/admin/emails?to=${encodeURIComponent(to)}`);
    expect(res.status, res.text).toBe(200);
    const mail = res.body.data.find((m: any) => m.template === template);
    expect(mail, `no ${template} mail to ${to}`).toBeDefined();
    return mail as { text: string };
  };

  const verify = async (account: Account) => {
    const { text } = await lastMail(account.email, "verify_email");
    const token = decodeURIComponent(/verify-email\?token=([^\s)>\]"]+)/.exec(text)?.[1] ?? "");
    const res = await t.call("POST", "/v1/auth/verify-email", { body: { token } });
    expect(res.status, res.text).toBeLessThan(300);
  };

  /** `inviter` invites `invitee` to `orgId` with `role`, and the invitee (verified) accepts. */
  const join = async (inviter: Account, orgId: string, invitee: Account, role: string) => {
    const sent = await t.call("POST", `/v1/orgs/${orgId}/invitations`, {
      auth: inviter.token,
      body: { email: invitee.email, role },
    });
    expect(sent.status, sent.text).toBe(201);
    const { text } = await lastMail(invitee.email, "invitation");
    const token = decodeURIComponent(/\/invitations\/([^\s)>\]"]+)/.exec(text)?.[1] ?? "");
    const accepted = await t.call("POST", `/v1/invitations/${encodeURIComponent(token)}/accept`, {
      auth: invitee.token,
    });
    expect(accepted.status, accepted.text).toBe(200);
  };

  const login = (email: string, password = PASSWORD) =>
    t.call("POST", "/v1/auth/login", { body: { email, password } });

  const erase = (account: Account, body: Record<string, unknown>) =>
    t.call("DELETE", "/v1/me", { auth: account.token, body });

  const me = (account: Account) => t.call("GET", "/v1/auth/me", { auth: account.token });

  const memberIds = async (token: string, orgId: string) => {
    const res = await t.call("GET", `/v1/orgs/${orgId}/members`, { auth: token });
    expect(res.status, res.text).toBe(200);
    return res.body.data.map((m: any) => m.user_id);
  };

  /** Every text, JSON and array column of every table, searched for a string. */
  const whereFound = async (needle: string) => {
    const columns = await t.database.query<{ table_name: string; column_name: string }>(sql`
      select table_name, column_name from information_schema.columns
      where table_schema = 'public' and data_type in ('text', 'jsonb', 'json', 'ARRAY', 'character varying')`);
    const found: string[] = [];
    for (const { table_name, column_name } of columns) {
      const [row] = await t.database.query<{ n: number }>(
        sql`select count(*)::int as n from ${sql.identifier(table_name)} where strpos(lower(${sql.identifier(column_name)}::text), ${needle.toLowerCase()}) > 0`,
      );
      if ((row?.n ?? 0) > 0) found.push(`${table_name}.${column_name}`);
    }
    return found;
  };

  describe("GET /v1/me/export", () => {
    let ada: Account;
    let grace: Account;
    let adaKey: { id: string; key: string; prefix: string };
    let graceKey: { key: string; prefix: string };

    beforeAll(async () => {
      ada = await signUp("Ada", "Lovelace");
      grace = await signUp("Grace", "Hopper");
      await verify(ada);
      // Grace invites Ada into her org; Ada invites someone into hers; each has an API key.
      await join(grace, grace.orgId, ada, "admin");
      const invited = await t.call("POST", `/v1/orgs/${ada.orgId}/invitations`, {
        auth: ada.token,
        body: { email: "bob@example.net", role: "member" },
      });
      expect(invited.status, invited.text).toBe(201);
      const key = await t.call("POST", `/v1/orgs/${ada.orgId}/api-keys`, {
        auth: ada.token,
        body: { name: "Ada's backend", scopes: ["org:read"] },
      });
      expect(key.status, key.text).toBe(201);
      adaKey = key.body;
      const other = await t.call("POST", `/v1/orgs/${grace.orgId}/api-keys`, {
        auth: grace.token,
        body: { name: "Grace's backend", scopes: ["org:read"] },
      });
      expect(other.status, other.text).toBe(201);
      graceKey = other.body;
    });

    it("is a JSON attachment, never cached, with everything held about the caller", async () => {
      const res = await t.call("GET", "/v1/me/export", { auth: ada.token });
      expect(res.status, res.text).toBe(200);
      expect(res.headers.get("content-type")).toMatch(/^application\/json/);
      expect(res.headers.get("content-disposition")).toMatch(
        /^attachment; filename="tollgate-export-\d{4}-\d{2}-\d{2}\.json"$/,
      );
      expect(res.headers.get("content-disposition")).toContain(
        new Date(t.deps.clock.nowMs()).toISOString().slice(0, 10),
      );
      expect(res.headers.get("cache-control")).toBe("no-store");
      const data = res.body;
      expect(data).toMatchObject({
        format: "tollgate.personal-data.v1",
        generated_at: expect.any(String),
        truncated: [],
        user: {
          id: ada.userId,
          email: ada.email,
          name: "Ada Lovelace",
          email_verified_at: expect.any(String),
          two_factor_enabled: false,
          has_password: true,
        },
        identities: [],
      });
      expect(data.memberships).toEqual(
        expect.arrayContaining([
          expect.objectContaining({
            org_id: ada.orgId,
            org_name: "Ada Lovelace's organization",
            role: "owner",
          }),
          expect.objectContaining({ org_id: grace.orgId, role: "admin" }),
        ]),
      );
      expect(data.memberships).toHaveLength(2);
      expect(data.sessions.length).toBeGreaterThanOrEqual(1);
      expect(data.sessions.filter((s: any) => s.current)).toHaveLength(1);
      expect(data.sessions[0]).toMatchObject({ started_at: expect.any(String), revoked_at: null });
      expect(data.api_keys_created).toEqual([
        expect.objectContaining({
          id: adaKey.id,
          org_id: ada.orgId,
          name: "Ada's backend",
          prefix: adaKey.prefix,
          scopes: ["org:read"],
          revoked_at: null,
        }),
      ]);
      expect(data.invitations.sent).toEqual([
        expect.objectContaining({ org_id: ada.orgId, email: "bob@example.net", role: "member" }),
      ]);
      expect(data.invitations.received).toEqual([
        expect.objectContaining({ org_id: grace.orgId, email: ada.email, accepted_at: expect.any(String) }),
      ]);
      const actions = data.audit_log.map((e: any) => e.action);
      expect(actions).toEqual(expect.arrayContaining(["user.registered", "member.joined", "member.invited"]));
      expect(data.audit_log.every((e: any) => typeof e.created_at === "string")).toBe(true);
      const templates = data.emails.map((m: any) => m.template);
      expect(templates).toEqual(expect.arrayContaining(["verify_email", "invitation"]));
      expect(data.emails.every((m: any) => m.to === ada.email)).toBe(true);
      expect(data.emails[0]).toMatchObject({
        subject: expect.any(String),
        status: "outbox",
        text: expect.any(String),
      });
    });

    it("never contains a hash, a secret or a key, and nothing of another user", async () => {
      const res = await t.call("GET", "/v1/me/export", { auth: ada.token });
      expect(res.status).toBe(200);
      for (const word of SECRETS) expect(res.text).not.toContain(word);
      expect(res.text).not.toContain(PASSWORD);
      expect(res.text).not.toContain(adaKey.key);
      expect(res.text).not.toContain(ada.refresh);
      // Grace's account, her key and her mail are hers.
      expect(res.text).not.toContain(grace.email);
      expect(res.text).not.toContain(grace.userId);
      expect(res.text).not.toContain(graceKey.prefix);
      expect(res.text).not.toContain("Grace's backend");

      const hers = await t.call("GET", "/v1/me/export", { auth: grace.token });
      expect(hers.status).toBe(200);
      expect(hers.body.user.id).toBe(grace.userId);
      expect(hers.text).not.toContain(ada.userId);
      expect(hers.text).not.toContain("Ada's backend");
      // The invitation Grace sent names Ada's address: it is Grace's own action, in her export.
      expect(hers.body.invitations.sent).toEqual([expect.objectContaining({ email: ada.email })]);
    });

    it("is recorded in the audit log", async () => {
      const res = await t.call("GET", `/v1/orgs/${ada.orgId}/audit-log`, { auth: ada.token });
      expect(res.status, res.text).toBe(200);
      expect(res.body.data.map((e: any) => e.action)).toContain("user.data_exported");
    });

    it("is for a signed-in user only", async () => {
      expect((await t.call("GET", "/v1/me/export")).status).toBe(401);
      expect((await t.call("GET", "/v1/me/export", { auth: "not-a-token" })).status).toBe(401);
      expect((await op("GET", "/v1/me/export")).status).toBe(403);
      expect((await t.call("GET", "/v1/me/export", { auth: adaKey.key })).status).toBe(403);
    });
  });

  describe("DELETE /v1/me: what it asks first", () => {
    it("wants the account's own address, then the password; a wrong one changes nothing", async () => {
      const eve = await signUp("Eve");
      const wrongEmail = await erase(eve, { confirm_email: "someone@example.com", password: PASSWORD });
      expect(wrongEmail.status).toBe(400);
      expect(wrongEmail.body.code).toBe("validation_failed");
      expect(wrongEmail.body.errors).toEqual([expect.objectContaining({ field: "confirm_email" })]);

      const noPassword = await erase(eve, { confirm_email: eve.email });
      expect(noPassword.status).toBe(400);
      expect(noPassword.body.errors[0].field).toBe("password");

      const wrongPassword = await erase(eve, { confirm_email: eve.email, password: "not the password" });
      expect(wrongPassword.status).toBe(403);

      const unknown = await erase(eve, { confirm_email: eve.email, password: PASSWORD, really: true });
      expect(unknown.status).toBe(400);
      expect(unknown.body.errors[0].field).toBe("really");

      // Nothing changed: the session, the sign-in and the org are all still there.
      const still = await me(eve);
      expect(still.status).toBe(200);
      expect(still.body.user).toMatchObject({ id: eve.userId, email: eve.email });
      expect(still.body.orgs.map((o: any) => o.id)).toEqual([eve.orgId]);
      expect((await login(eve.email)).status).toBe(200);
    });

    it("is for a signed-in user only", async () => {
      const body = { confirm_email: "x@example.com", password: PASSWORD };
      expect((await t.call("DELETE", "/v1/me", { body })).status).toBe(401);
      expect((await op("DELETE", "/v1/me", body)).status).toBe(403);
    });

    it("wants a second factor when two-factor authentication is on, and takes a recovery code", async () => {
      const sam = await signUp("Sam");
      const setup = await t.call("POST", "/v1/auth/2fa/setup", {
        auth: sam.token,
        body: { password: PASSWORD },
      });
      expect(setup.status, setup.text).toBe(200);
      const totp = () =>
        generateSync({ secret: setup.body.secret, epoch: Math.floor(t.deps.clock.nowMs() / 1000) });
      const on = await t.call("POST", "/v1/auth/2fa/enable", { auth: sam.token, body: { code: totp() } });
      expect(on.status, on.text).toBe(200);

      const missing = await erase(sam, { confirm_email: sam.email, password: PASSWORD });
      expect(missing.status).toBe(400);
      expect(missing.body.errors).toEqual([expect.objectContaining({ field: "code", code: "required" })]);
      const wrong = await erase(sam, { confirm_email: sam.email, password: PASSWORD, code: "000000" });
      expect(wrong.status).toBe(400);
      expect(wrong.body.errors).toEqual([expect.objectContaining({ field: "code", code: "invalid_code" })]);
      const wrongRecovery = await erase(sam, {
        confirm_email: sam.email,
        password: PASSWORD,
        code: "aaaaa-bbbbb",
      });
      expect(wrongRecovery.status).toBe(400);
      expect((await me(sam)).status).toBe(200);

      const done = await erase(sam, {
        confirm_email: sam.email,
        password: PASSWORD,
        code: on.body.recovery_codes[0],
      });
      expect(done.status, done.text).toBe(204);
      expect((await me(sam)).status).toBe(401);
      // Two-factor is gone with the rest: nothing of it is left on the row.
      const [row] = await t.deps.database.db.select().from(users).where(eq(users.id, sam.userId));
      expect(row).toMatchObject({ totpSecret: null, totpEnabledAt: null, passwordHash: null });
    });

    it("is refused, changing nothing, while the user is the only owner of an org others belong to", async () => {
      const olga = await signUp("Olga");
      const mia = await signUp("Mia");
      await verify(mia);
      const team = await t.call("POST", "/v1/orgs", { auth: olga.token, body: { name: "Olga's team" } });
      expect(team.status, team.text).toBe(201);
      await join(olga, team.body.id, mia, "admin");
      // Mia being an owner too would make it fine: she is only an admin.
      const refused = await erase(olga, { confirm_email: olga.email, password: PASSWORD });
      expect(refused.status, refused.text).toBe(409);
      expect(refused.body.code).toBe("conflict");
      expect(refused.body.orgs).toEqual([{ id: team.body.id, name: "Olga's team" }]);
      expect(refused.body.detail).toContain("transfer ownership");

      // Nothing changed: not the personal org either (which alone would have been deleted).
      expect((await me(olga)).status).toBe(200);
      expect((await login(olga.email)).status).toBe(200);
      expect(await memberIds(olga.token, team.body.id)).toEqual([olga.userId, mia.userId]);
      expect((await me(olga)).body.orgs.map((o: any) => o.id).sort()).toEqual(
        [olga.orgId, team.body.id].sort(),
      );

      // Once Mia is an owner too, Olga can go; the team stays with Mia.
      const promoted = await t.call("PATCH", `/v1/orgs/${team.body.id}/members/${mia.userId}`, {
        auth: olga.token,
        body: { role: "owner" },
      });
      expect(promoted.status, promoted.text).toBe(200);
      expect((await erase(olga, { confirm_email: olga.email, password: PASSWORD })).status).toBe(204);
      expect(await memberIds(mia.token, team.body.id)).toEqual([mia.userId]);
    });
  });

  describe("DELETE /v1/me: erasure", () => {
    let ada: Account;
    let grace: Account;
    let invoiceId: string;
    let invoiceTotal: string;
    let oldSession: Account;

    beforeAll(async () => {
      ada = await signUp("Ada", "Byron");
      grace = await signUp("Grace", "Murray");
      await verify(ada);
      // Ada's personal org pays for Pro: an invoice, and a receipt to Ada as its billing contact.
      expect(
        (await op("PUT", `/v1/orgs/${ada.orgId}/payment-method`, { card_number: "4242424242424242" })).status,
      ).toBe(200);
      const pro = await op("POST", `/v1/orgs/${ada.orgId}/subscription`, { plan: "pro" });
      expect(pro.status, pro.text).toBe(200);
      const [invoice] = (await op("GET", `/v1/orgs/${ada.orgId}/invoices`)).body.data;
      expect(invoice).toBeDefined();
      invoiceId = invoice.id;
      invoiceTotal = invoice.total;
      // Ada co-owns Grace's org; Grace's org names Ada as its support address.
      await join(grace, grace.orgId, ada, "owner");
      const branded = await t.call("PUT", `/v1/orgs/${grace.orgId}/branding`, {
        auth: grace.token,
        body: { support_email: ada.email, display_name: "Murray Co" },
      });
      expect(branded.status, branded.text).toBe(200);
      // A second session of Ada's, signed in elsewhere.
      const other = await login(ada.email);
      expect(other.status).toBe(200);
      oldSession = { ...ada, token: other.body.access_token, refresh: other.body.refresh_token };

      expect(await whereFound(ada.email)).not.toEqual([]);
      const done = await erase(ada, { confirm_email: ` ${ada.email.toUpperCase()} `, password: PASSWORD });
      expect(done.status, done.text).toBe(204);
      expect(done.text).toBe("");
    });

    it("ends every session at once, and a second attempt is unauthenticated", async () => {
      expect((await me(ada)).status).toBe(401);
      expect((await me(oldSession)).status).toBe(401);
      for (const refresh of [ada.refresh, oldSession.refresh]) {
        expect((await t.call("POST", "/v1/auth/refresh", { body: { refresh_token: refresh } })).status).toBe(
          401,
        );
      }
      const again = await erase(ada, { confirm_email: ada.email, password: PASSWORD });
      expect(again.status).toBe(401);
      expect((await t.call("GET", "/v1/me/export", { auth: ada.token })).status).toBe(401);
    });

    it("leaves no way to sign in: not the old address, not the anonymised one, not a password reset", async () => {
      const old = await login(ada.email);
      expect(old.status).toBe(401);
      const anonymised = `erased+${ada.userId}@erased.invalid`;
      expect((await login(anonymised)).status).toBe(401);
      expect((await login(anonymised, "")).status).toBe(400);
      for (const email of [ada.email, anonymised]) {
        const reset = await t.call("POST", "/v1/auth/forgot-password", { body: { email } });
        expect(reset.status).toBe(202);
      }
      // The reset runs after the answer: give it a moment, then look for any mail it wrote.
      await new Promise((resolve) => setTimeout(resolve, 200));
      const [row] = await t.deps.database.db.select().from(users).where(eq(users.id, ada.userId));
      const resetMail = await t.deps.database.db
        .select({ id: emails.id })
        .from(emails)
        .where(sql`${emails.template} = 'reset_password' and ${emails.to} in (${ada.email}, ${anonymised})`);
      expect(resetMail).toEqual([]);
      expect(row).toMatchObject({
        email: anonymised,
        name: "Erased user",
        passwordHash: null,
        totpSecret: null,
        totpEnabledAt: null,
        emailVerifiedAt: null,
        erasedAt: expect.any(Date),
      });
    });

    it("is gone from the operator's user directory", async () => {
      const byEmail = await op("GET", `/v1/admin/users?q=${encodeURIComponent(ada.email)}`);
      expect(byEmail.status).toBe(200);
      expect(byEmail.body.data).toEqual([]);
      expect((await op("GET", "/v1/admin/users?q=Byron")).body.data).toEqual([]);
      const byId = await op("GET", `/v1/admin/users?q=${ada.userId}`);
      expect(byId.body.data).toEqual([
        expect.objectContaining({
          email: `erased+${ada.userId}@erased.invalid`,
          name: "Erased user",
          orgs: 0,
        }),
      ]);
    });

    it("deletes the org Ada was alone in, renamed, and keeps its invoice without her data", async () => {
      expect((await op("GET", `/v1/orgs/${ada.orgId}`)).status).toBe(404);
      const [org] = await t.deps.database.db.select().from(orgs).where(eq(orgs.id, ada.orgId));
      expect(org).toMatchObject({ name: "Erased user's organization", deletedAt: expect.any(Date) });
      const [invoice] = await t.deps.database.db.select().from(invoices).where(eq(invoices.id, invoiceId));
      expect(invoice).toMatchObject({ orgId: ada.orgId, status: "paid", total: invoiceTotal });
      // The PDF the accountant keeps: the org's (new) name and the amounts, no name, no address.
      const { pdf } = await invoicePdf(t.deps, ada.orgId, invoiceId);
      const parser = new PDFParse({ data: new Uint8Array(pdf) });
      const text = (await parser.getText()).text;
      await parser.destroy();
      expect(text).toContain("Erased user's organization");
      expect(text).not.toContain("Byron");
      expect(text).not.toContain(ada.email);
      expect(text).not.toContain("erased+");
      // Its subscription was canceled, as deleting an org does, and the deletion is audited.
      expect((await op("GET", `/v1/admin/orgs?q=${ada.orgId}`)).body.data).toEqual([]);
      const audit = await t.deps.database.db.select().from(auditLog).where(eq(auditLog.orgId, ada.orgId));
      expect(audit.map((e) => e.action)).toContain("org.deleted");
    });

    it("leaves the shared org with its other owner, without Ada", async () => {
      expect(await memberIds(grace.token, grace.orgId)).toEqual([grace.userId]);
      const members = await t.call("GET", `/v1/orgs/${grace.orgId}/members`, { auth: grace.token });
      expect(members.body.data[0]).toMatchObject({ user_id: grace.userId, role: "owner" });
      const log = await t.call("GET", `/v1/orgs/${grace.orgId}/audit-log`, { auth: grace.token });
      expect(log.body.data[0]).toMatchObject({
        action: "member.left",
        target: { type: "user", id: ada.userId },
      });
      const [branding] = await t.deps.database.db
        .select()
        .from(orgBranding)
        .where(eq(orgBranding.orgId, grace.orgId));
      expect(branding).toMatchObject({ supportEmail: null, displayName: "Murray Co" });
    });

    it("takes the address out of mail, invitations, audit details and webhook payloads", async () => {
      const anonymised = `erased+${ada.userId}@erased.invalid`;
      expect(await whereFound(ada.email)).toEqual([]);
      const mail = await t.deps.database.db.select().from(emails).where(eq(emails.to, anonymised));
      expect(mail.length).toBeGreaterThanOrEqual(3); // verification, invitation, receipt…
      for (const message of mail) {
        expect(message).toMatchObject({ subject: "[erased]", text: "", html: "" });
        // Kept in the outbox (no SMTP here), so never sent: now failed for good.
        expect(message).toMatchObject({ status: "failed", error: "recipient erased" });
      }
      const [invitation] = await t.deps.database.db
        .select()
        .from(invitations)
        .where(eq(invitations.email, anonymised));
      expect(invitation).toMatchObject({ orgId: grace.orgId, acceptedAt: expect.any(Date) });
      // What Ada did is still in the trail, without where she did it from.
      const hers = await t.deps.database.db.select().from(auditLog).where(eq(auditLog.actorId, ada.userId));
      expect(hers.map((e) => e.action)).toEqual(expect.arrayContaining(["user.registered", "user.erased"]));
      expect(hers.every((e) => e.ip === null)).toBe(true);
      const erased = hers.find((e) => e.action === "user.erased");
      expect(JSON.stringify(erased?.metadata)).not.toContain("@");
      // Grace's record of inviting her now names the anonymised address.
      const invited = await t.deps.database.db
        .select()
        .from(auditLog)
        .where(sql`${auditLog.orgId} = ${grace.orgId} and ${auditLog.action} = 'member.invited'`);
      expect(invited.map((e) => e.metadata.email)).toEqual([anonymised]);
      const events = await t.database.query<{ payload: any }>(
        sql`select payload from webhook_events where org_id = ${grace.orgId} and type = 'member.invited'`,
      );
      expect(
        events.map((e) => (typeof e.payload === "string" ? JSON.parse(e.payload) : e.payload).data.email),
      ).toEqual([anonymised]);
    });

    it("frees the address: registering with it again gives a new, empty account", async () => {
      const res = await t.call("POST", "/v1/auth/register", {
        body: { email: ada.email, password: PASSWORD, name: "Ada Again" },
      });
      expect(res.status, res.text).toBe(201);
      expect(res.body.user.id).not.toBe(ada.userId);
      const data = (await t.call("GET", "/v1/me/export", { auth: res.body.access_token })).body;
      expect(data.user).toMatchObject({ email: ada.email, name: "Ada Again", email_verified_at: null });
      expect(data.memberships).toEqual([expect.objectContaining({ org_id: res.body.org.id, role: "owner" })]);
      expect(data.invitations).toEqual({ sent: [], received: [] });
      expect(data.api_keys_created).toEqual([]);
      expect(data.audit_log.map((e: any) => e.action).sort()).toEqual(["user.registered"]);
      expect(data.emails.map((m: any) => m.template).sort()).toEqual(["verify_email", "welcome"]);
      expect(data.sessions).toHaveLength(1);
    });
  });

  it("never sends mail whose recipient was erased before it left", async () => {
    const smtp = await startSmtpServer();
    const mailer = createMailer({
      database: t.database,
      smtpUrl: smtp.url,
      logger: t.deps.logger,
      from: "t@example.test",
    });
    try {
      const zoe = await signUp("Zoe");
      const pending = await t.deps.mailer.send({
        to: zoe.email,
        subject: "Your usage report",
        text: "Hello Zoe",
        html: "<p>Hello Zoe</p>",
        template: "usage_report",
      });
      expect(pending.status).toBe("outbox");
      expect((await erase(zoe, { confirm_email: zoe.email, password: PASSWORD })).status).toBe(204);
      // The delivery job's work, now, and again as an admin's retry of a dead job would: skipped.
      expect(await mailer.deliver(pending.id)).toBe("skipped");
      expect(await mailer.deliver(pending.id, { final: true, throwOnFinal: true })).toBe("skipped");
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(smtp.messages).toHaveLength(0);
      const [row] = await t.deps.database.db.select().from(emails).where(eq(emails.id, pending.id));
      expect(row).toMatchObject({
        status: "failed",
        error: "recipient erased",
        text: "",
        subject: "[erased]",
      });
    } finally {
      await mailer.close();
      await smtp.close();
    }
  });
});
