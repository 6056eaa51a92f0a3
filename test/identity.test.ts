import { and, desc, eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { emails } from "../src/db/schema.js";
import { appModes, createTestApp, type TestApp } from "./support/app.js";

let counter = 0;
const uniqueEmail = (name: string) => `${name}.${Date.now()}.${counter++}@example.com`;
const PASSWORD = "correct horse battery staple";

/** Registers a user over HTTP and returns what a client would keep. */
async function signUp(t: TestApp, name = "ada") {
  const email = uniqueEmail(name);
  const res = await t.call("POST", "/v1/auth/register", { body: { email, password: PASSWORD, name } });
  expect(res.status, res.text).toBe(201);
  return {
    email,
    userId: res.body.user.id as string,
    orgId: res.body.org.id as string,
    access: res.body.access_token as string,
    refresh: res.body.refresh_token as string,
  };
}

/** Follows the verification link of the newest e-mail to the user, as they would. */
async function verifyEmail(t: TestApp, email: string) {
  const token = new URL(await linkInLatestEmail(t, email, "verify_email")).searchParams.get("token");
  const res = await t.call("POST", "/v1/auth/verify-email", { body: { token } });
  expect(res.status, res.text).toBe(200);
}

/** The link in the newest e-mail to `to`, as the recipient would click it. */
async function linkInLatestEmail(t: TestApp, to: string, template?: string): Promise<string> {
  const [mail] = await t.database.db
    .select()
    .from(emails)
    .where(template ? and(eq(emails.to, to), eq(emails.template, template)) : eq(emails.to, to))
    .orderBy(desc(emails.id))
    .limit(1);
  const link = /https?:\/\/\S+/.exec(mail?.text ?? "")?.[0];
  if (!link) throw new Error(`no link in the e-mail to ${to}`);
  return link;
}

describe.each(appModes)("accounts and sessions ($name)", (mode) => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp(mode);
  });
  afterAll(() => t.close());

  it("registers a user with a personal org they own, and signs them in", async () => {
    const u = await signUp(t);
    const me = await t.call("GET", "/v1/auth/me", { auth: u.access });
    expect(me.status).toBe(200);
    expect(me.body.user).toMatchObject({
      id: u.userId,
      email: u.email,
      email_verified: false,
      two_factor_enabled: false,
    });
    expect(me.body.orgs).toEqual([expect.objectContaining({ id: u.orgId, role: "owner", personal: true })]);
    // Whether a password is set is shown (has_password); the password or its hash never is.
    expect(JSON.stringify(me.body)).not.toMatch(/hash|argon2|correct horse/i);
    expect(me.body.user.has_password).toBe(true);
  });

  it("rejects short passwords, bad e-mails and a second account for one e-mail", async () => {
    const short = await t.call("POST", "/v1/auth/register", {
      body: { email: uniqueEmail("x"), password: "short", name: "X" },
    });
    expect(short.status).toBe(400);
    expect(short.body.errors.map((e: { field: string }) => e.field)).toContain("password");
    const badEmail = await t.call("POST", "/v1/auth/register", {
      body: { email: "nope", password: PASSWORD, name: "X" },
    });
    expect(badEmail.body.errors.map((e: { field: string }) => e.field)).toContain("email");
    const u = await signUp(t);
    const again = await t.call("POST", "/v1/auth/register", {
      body: { email: u.email.toUpperCase(), password: PASSWORD, name: "Y" },
    });
    expect(again.status).toBe(409);
  });

  it("logs in with the password, and gives the same answer for a wrong password and an unknown e-mail", async () => {
    const u = await signUp(t);
    const ok = await t.call("POST", "/v1/auth/login", { body: { email: u.email, password: PASSWORD } });
    expect(ok.status).toBe(200);
    expect(ok.body.access_token).toBeTruthy();
    const wrong = await t.call("POST", "/v1/auth/login", {
      body: { email: u.email, password: "not the password!" },
    });
    const unknown = await t.call("POST", "/v1/auth/login", {
      body: { email: uniqueEmail("ghost"), password: "not the password!" },
    });
    expect(wrong.status).toBe(401);
    expect(unknown.status).toBe(401);
    expect(wrong.body.detail).toBe(unknown.body.detail);
  });

  it("rotates refresh tokens, and a reused one revokes the whole session", async () => {
    const u = await signUp(t);
    const first = await t.call("POST", "/v1/auth/refresh", { body: { refresh_token: u.refresh } });
    expect(first.status).toBe(200);
    expect(first.body.refresh_token).not.toBe(u.refresh);
    const second = await t.call("POST", "/v1/auth/refresh", {
      body: { refresh_token: first.body.refresh_token },
    });
    expect(second.status).toBe(200);

    // The first token again: someone copied it. The family dies, including the newest tokens.
    const reuse = await t.call("POST", "/v1/auth/refresh", { body: { refresh_token: u.refresh } });
    expect(reuse.status).toBe(401);
    expect(
      (await t.call("POST", "/v1/auth/refresh", { body: { refresh_token: second.body.refresh_token } }))
        .status,
    ).toBe(401);
    expect((await t.call("GET", "/v1/auth/me", { auth: second.body.access_token })).status).toBe(401);
    // Another session of the same user is untouched.
    const other = await t.call("POST", "/v1/auth/login", { body: { email: u.email, password: PASSWORD } });
    expect((await t.call("GET", "/v1/auth/me", { auth: other.body.access_token })).status).toBe(200);
  });

  it("logs out: the session's access and refresh tokens stop working at once", async () => {
    const u = await signUp(t);
    expect((await t.call("POST", "/v1/auth/logout", { auth: u.access })).status).toBe(204);
    expect((await t.call("GET", "/v1/auth/me", { auth: u.access })).status).toBe(401);
    expect((await t.call("POST", "/v1/auth/refresh", { body: { refresh_token: u.refresh } })).status).toBe(
      401,
    );
  });

  it("never lets a refresh racing with a logout bring the session back", async () => {
    for (let i = 0; i < 10; i++) {
      const u = await signUp(t, `race${i}`);
      const [refreshed] = await Promise.all([
        t.call("POST", "/v1/auth/refresh", { body: { refresh_token: u.refresh } }),
        t.call("POST", "/v1/auth/logout", { auth: u.access }),
      ]);
      if (refreshed.status === 200) {
        expect((await t.call("GET", "/v1/auth/me", { auth: refreshed.body.access_token })).status).toBe(401);
        const next = await t.call("POST", "/v1/auth/refresh", {
          body: { refresh_token: refreshed.body.refresh_token },
        });
        expect(next.status).toBe(401);
      }
    }
  });

  it("refuses forged and tampered access tokens", async () => {
    const u = await signUp(t);
    const [h, p, s] = u.access.split(".");
    const payload = JSON.parse(Buffer.from(p ?? "", "base64url").toString());
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...payload, sub: "usr_00000000000000000000000000" })).toString("base64url")}.${s}`;
    expect((await t.call("GET", "/v1/auth/me", { auth: forged })).status).toBe(401);
    const none = `${Buffer.from('{"alg":"none","typ":"JWT"}').toString("base64url")}.${p}.`;
    expect((await t.call("GET", "/v1/auth/me", { auth: none })).status).toBe(401);
  });

  it("locks out repeated failed logins per account, answering 429 with Retry-After", async () => {
    const u = await signUp(t);
    const statuses: number[] = [];
    for (let i = 0; i < 12; i++) {
      statuses.push(
        (
          await t.call("POST", "/v1/auth/login", {
            body: { email: u.email, password: `wrong-${i}-password` },
          })
        ).status,
      );
    }
    expect(statuses.slice(0, 10).every((s) => s === 401)).toBe(true);
    const locked = await t.call("POST", "/v1/auth/login", { body: { email: u.email, password: PASSWORD } });
    expect(locked.status).toBe(429);
    expect(Number(locked.headers.get("retry-after"))).toBeGreaterThan(0);
    // The same lockout for an address that has no account: nothing is revealed.
    const ghost = uniqueEmail("ghost");
    for (let i = 0; i < 10; i++)
      await t.call("POST", "/v1/auth/login", { body: { email: ghost, password: `wrong-${i}-password` } });
    expect(
      (await t.call("POST", "/v1/auth/login", { body: { email: ghost, password: "whatever-password" } }))
        .status,
    ).toBe(429);
  });

  it("never logs passwords or tokens", async () => {
    const u = await signUp(t);
    await t.call("POST", "/v1/auth/login", { body: { email: u.email, password: PASSWORD } });
    expect(t.logs.text).not.toContain(PASSWORD);
    expect(t.logs.text).not.toContain(u.refresh);
    expect(t.logs.text).not.toContain(u.access);
  });
});

describe.each(appModes)("organizations, roles and invitations ($name)", (mode) => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp(mode);
  });
  afterAll(() => t.close());

  /** An org owned by a fresh user, with a member of each other role who joined by invitation. */
  async function team() {
    const owner = await signUp(t, "owner");
    const created = await t.call("POST", "/v1/orgs", { auth: owner.access, body: { name: "Acme" } });
    expect(created.status).toBe(201);
    const orgId = created.body.id as string;
    const people: Record<string, Awaited<ReturnType<typeof signUp>>> = {};
    for (const role of ["admin", "member", "billing"] as const) {
      const person = await signUp(t, role);
      await verifyEmail(t, person.email);
      const sent = await t.call("POST", `/v1/orgs/${orgId}/invitations`, {
        auth: owner.access,
        body: { email: person.email, role },
      });
      expect(sent.status, sent.text).toBe(201);
      expect(JSON.stringify(sent.body)).not.toMatch(/token/);
      const token = decodeURIComponent(
        (await linkInLatestEmail(t, person.email)).split("/invitations/")[1] ?? "",
      );
      const accepted = await t.call("POST", `/v1/invitations/${encodeURIComponent(token)}/accept`, {
        auth: person.access,
      });
      expect(accepted.status, accepted.text).toBe(200);
      expect(accepted.body).toEqual({ org_id: orgId, role });
      people[role] = person;
    }
    const { admin, member, billing } = people;
    if (!admin || !member || !billing) throw new Error("team incomplete");
    return { orgId, owner, admin, member, billing };
  }

  it("invites by e-mail; the link works once, only for the invited, verified address", async () => {
    const { orgId, owner } = await team();
    const invitee = await signUp(t, "invitee");
    const stranger = await signUp(t, "stranger");
    await verifyEmail(t, stranger.email);
    const invite = (email: string, role: string) =>
      t.call("POST", `/v1/orgs/${orgId}/invitations`, { auth: owner.access, body: { email, role } });
    const accept = async (token: string, auth: string) =>
      (await t.call("POST", `/v1/invitations/${token}/accept`, { auth })).status;
    await invite(invitee.email, "member");
    const token = (await linkInLatestEmail(t, invitee.email)).split("/invitations/")[1] ?? "";
    expect(await accept(token, stranger.access)).toBe(403);
    // The invited address must be proven before the invitation counts.
    expect(await accept(token, invitee.access)).toBe(403);
    await verifyEmail(t, invitee.email);
    expect(await accept(token, invitee.access)).toBe(200);
    expect(await accept(token, invitee.access)).toBe(404);
    const members = await t.call("GET", `/v1/orgs/${orgId}/members`, { auth: invitee.access });
    expect(members.body.data.map((m: { email: string }) => m.email)).toContain(invitee.email);
    // An invitation for someone already a member cannot silently change nothing.
    await invite(invitee.email, "admin");
    expect(
      await accept(
        (await linkInLatestEmail(t, invitee.email)).split("/invitations/")[1] ?? "",
        invitee.access,
      ),
    ).toBe(409);
  });

  it("enforces the permission matrix by role", async () => {
    const { orgId, admin, member, billing } = await team();
    // Everyone reads the org and its members.
    for (const who of [admin, member, billing]) {
      expect((await t.call("GET", `/v1/orgs/${orgId}`, { auth: who.access })).status).toBe(200);
      expect((await t.call("GET", `/v1/orgs/${orgId}/members`, { auth: who.access })).status).toBe(200);
    }
    // Only owners and admins rename, invite, and read the audit log.
    expect(
      (await t.call("PATCH", `/v1/orgs/${orgId}`, { auth: admin.access, body: { name: "Acme Inc" } })).status,
    ).toBe(200);
    for (const who of [member, billing]) {
      expect(
        (await t.call("PATCH", `/v1/orgs/${orgId}`, { auth: who.access, body: { name: "Nope" } })).status,
      ).toBe(403);
      const invite = await t.call("POST", `/v1/orgs/${orgId}/invitations`, {
        auth: who.access,
        body: { email: uniqueEmail("z"), role: "member" },
      });
      expect(invite.status).toBe(403);
      expect(invite.body.code).toBe("forbidden");
      expect((await t.call("GET", `/v1/orgs/${orgId}/audit-log`, { auth: who.access })).status).toBe(403);
    }
    // Only owners delete the org.
    expect((await t.call("DELETE", `/v1/orgs/${orgId}`, { auth: admin.access })).status).toBe(403);
  });

  it("lets only owners grant or take away ownership, and never demotes the last owner", async () => {
    const { orgId, owner, admin, member } = await team();
    const promoteByAdmin = await t.call("PATCH", `/v1/orgs/${orgId}/members/${member.userId}`, {
      auth: admin.access,
      body: { role: "owner" },
    });
    expect(promoteByAdmin.status).toBe(403);
    const demoteOwnerByAdmin = await t.call("PATCH", `/v1/orgs/${orgId}/members/${owner.userId}`, {
      auth: admin.access,
      body: { role: "member" },
    });
    expect(demoteOwnerByAdmin.status).toBe(403);
    // The only owner can neither step down nor leave.
    const stepDown = await t.call("PATCH", `/v1/orgs/${orgId}/members/${owner.userId}`, {
      auth: owner.access,
      body: { role: "admin" },
    });
    expect(stepDown.status).toBe(409);
    expect(
      (await t.call("DELETE", `/v1/orgs/${orgId}/members/${owner.userId}`, { auth: owner.access })).status,
    ).toBe(409);
    // With a second owner, both become possible.
    expect(
      (
        await t.call("PATCH", `/v1/orgs/${orgId}/members/${admin.userId}`, {
          auth: owner.access,
          body: { role: "owner" },
        })
      ).status,
    ).toBe(200);
    expect(
      (await t.call("DELETE", `/v1/orgs/${orgId}/members/${owner.userId}`, { auth: owner.access })).status,
    ).toBe(204);
    expect((await t.call("GET", `/v1/orgs/${orgId}`, { auth: owner.access })).status).toBe(404);
  });

  it("lets a member leave, and an admin remove a member", async () => {
    const { orgId, admin, member, billing } = await team();
    expect(
      (await t.call("DELETE", `/v1/orgs/${orgId}/members/${member.userId}`, { auth: member.access })).status,
    ).toBe(204);
    expect(
      (await t.call("DELETE", `/v1/orgs/${orgId}/members/${billing.userId}`, { auth: admin.access })).status,
    ).toBe(204);
    const members = await t.call("GET", `/v1/orgs/${orgId}/members`, { auth: admin.access });
    expect(members.body.data.map((m: { role: string }) => m.role).sort()).toEqual(["admin", "owner"]);
  });

  it("deletes an org for its owner: members lose access at once", async () => {
    const { orgId, owner, member } = await team();
    expect((await t.call("DELETE", `/v1/orgs/${orgId}`, { auth: owner.access })).status).toBe(204);
    expect((await t.call("GET", `/v1/orgs/${orgId}`, { auth: member.access })).status).toBe(404);
    const mine = await t.call("GET", "/v1/orgs", { auth: owner.access });
    expect(mine.body.data.map((o: { id: string }) => o.id)).not.toContain(orgId);
  });

  it("records sign-ins, member and role changes in the audit log, newest first", async () => {
    const { orgId, owner, member } = await team();
    await t.call("PATCH", `/v1/orgs/${orgId}/members/${member.userId}`, {
      auth: owner.access,
      body: { role: "billing" },
    });
    await t.call("POST", "/v1/auth/login", { body: { email: owner.email, password: PASSWORD } });
    const log = await t.call("GET", `/v1/orgs/${orgId}/audit-log?limit=50`, { auth: owner.access });
    expect(log.status).toBe(200);
    const actions = log.body.data.map((e: { action: string }) => e.action);
    expect(actions).toEqual(
      expect.arrayContaining([
        "org.created",
        "member.invited",
        "member.joined",
        "member.role_changed",
        "user.signed_in",
      ]),
    );
    expect(actions[0]).toBe("user.signed_in");
    const change = log.body.data.find((e: { action: string }) => e.action === "member.role_changed");
    expect(change).toMatchObject({
      actor: { type: "user", id: owner.userId },
      metadata: { from: "member", to: "billing" },
    });
    const page = await t.call("GET", `/v1/orgs/${orgId}/audit-log?limit=2&before=${log.body.data[1].id}`, {
      auth: owner.access,
    });
    expect(page.body.data[0].id).toBe(log.body.data[2].id);
    expect(
      (await t.call("GET", `/v1/orgs/${orgId}/audit-log?before=../../etc`, { auth: owner.access })).status,
    ).toBe(400);
  });
});

describe("platform admins", () => {
  it("are named by e-mail in configuration, and count only once that address is verified", async () => {
    const t = await createTestApp({
      database: "pglite",
      redis: false,
      env: { TOLLGATE_PLATFORM_ADMINS: "Boss@Example.com" },
    });
    try {
      const res = await t.call("POST", "/v1/auth/register", {
        body: { email: "boss@example.com", password: PASSWORD, name: "Boss" },
      });
      expect(res.status).toBe(201);
      // Anyone could register the address first: until it is proven, it grants nothing.
      expect((await t.call("GET", "/v1/auth/me", { auth: res.body.access_token })).body.platform_admin).toBe(
        false,
      );
      const [mail] = await t.database.db
        .select()
        .from(emails)
        .where(and(eq(emails.to, "boss@example.com"), eq(emails.template, "verify_email")));
      const token = /token=([\w-]+)/.exec(mail?.text ?? "")?.[1];
      expect((await t.call("POST", "/v1/auth/verify-email", { body: { token } })).status).toBe(200);
      const login = await t.call("POST", "/v1/auth/login", {
        body: { email: "boss@example.com", password: PASSWORD },
      });
      expect(
        (await t.call("GET", "/v1/auth/me", { auth: login.body.access_token })).body.platform_admin,
      ).toBe(true);
      const other = await t.call("POST", "/v1/auth/register", {
        body: { email: "staff@example.com", password: PASSWORD, name: "S" },
      });
      expect(
        (await t.call("GET", "/v1/auth/me", { auth: other.body.access_token })).body.platform_admin,
      ).toBe(false);
    } finally {
      await t.close();
    }
  });
});
