import { and, eq } from "drizzle-orm";
import { generateSync } from "otplib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { appModes, createTestApp, type TestApp } from "../../../test/support/app.js";
import { auditLog, orgs, recoveryCodes, users } from "../../db/schema.js";
import { createRouter } from "../../lib/http.js";
import { requireOrgAccess } from "../orgs/access.js";

const PASSWORD = "correct horse battery";

describe.each(appModes)("two-factor authentication ($name)", (mode) => {
  let t: TestApp;

  beforeAll(async () => {
    t = await createTestApp({ ...mode, env: { TOLLGATE_TEST_CLOCK: "1" } });
    // A tiny org route behind requireOrgAccess, independent of the org routes being written.
    const probe = createRouter();
    probe.get("/test-only/orgs/:org/probe", async (c) => {
      const access = await requireOrgAccess(c, c.req.param("org"), "org:read");
      return c.json({ org: access.orgId });
    });
    t.app.route("/", probe);
  });
  afterAll(() => t?.close());

  const code = (secret: string, offsetSeconds = 0) =>
    generateSync({ secret, epoch: Math.floor(t.deps.clock.nowMs() / 1000) + offsetSeconds });

  const signUp = async (name: string) => {
    const email = `${name}.${Date.now()}.${Math.floor(Math.random() * 1e6)}@example.com`;
    const res = await t.call("POST", "/v1/auth/register", { body: { email, password: PASSWORD, name } });
    expect(res.status, res.text).toBe(201);
    return {
      email,
      token: res.body.access_token as string,
      userId: res.body.user.id,
      orgId: res.body.org.id,
    };
  };

  /** Sets up and turns on 2FA; returns the secret and the recovery codes. */
  const enable = async (token: string) => {
    const setup = await t.call("POST", "/v1/auth/2fa/setup", { auth: token, body: { password: PASSWORD } });
    expect(setup.status, setup.text).toBe(200);
    const secret = setup.body.secret as string;
    const res = await t.call("POST", "/v1/auth/2fa/enable", { auth: token, body: { code: code(secret) } });
    expect(res.status, res.text).toBe(200);
    return { secret, recoveryCodes: res.body.recovery_codes as string[] };
  };

  it("asks for the password again before setting up (a stolen session cannot add its own authenticator)", async () => {
    const user = await signUp("reauth");
    const missing = await t.call("POST", "/v1/auth/2fa/setup", { auth: user.token, body: {} });
    expect(missing.status).toBe(400);
    expect(missing.body.errors[0].field).toBe("password");
    const wrong = await t.call("POST", "/v1/auth/2fa/setup", {
      auth: user.token,
      body: { password: "not the password" },
    });
    expect(wrong.status).toBe(403);
    const [row] = await t.deps.database.db.select().from(users).where(eq(users.id, user.userId));
    expect(row?.totpSecret).toBeNull();
  });

  it("ends the account's other sessions when turned on, and a refresh never upgrades a session to two-factor", async () => {
    const user = await signUp("sessions");
    const other = await t.call("POST", "/v1/auth/login", { body: { email: user.email, password: PASSWORD } });
    expect(other.status).toBe(200);
    const login = await t.call("POST", "/v1/auth/login", { body: { email: user.email, password: PASSWORD } });
    await enable(login.body.access_token);
    // The other session is over, access and refresh alike.
    expect((await t.call("GET", "/v1/auth/me", { auth: other.body.access_token })).status).toBe(401);
    expect(
      (await t.call("POST", "/v1/auth/refresh", { body: { refresh_token: other.body.refresh_token } }))
        .status,
    ).toBe(401);
    // The session that turned it on continues, still one-factor after a refresh.
    await t.deps.database.db.update(orgs).set({ requireTwoFactor: true }).where(eq(orgs.id, user.orgId));
    const refreshed = await t.call("POST", "/v1/auth/refresh", {
      body: { refresh_token: login.body.refresh_token },
    });
    expect(refreshed.status).toBe(200);
    expect(
      (await t.call("GET", `/v1/orgs/${user.orgId}`, { auth: refreshed.body.access_token })).status,
    ).toBe(403);
  });

  it("sets up a pending secret, and turns it on only with a correct code", async () => {
    const user = await signUp("setup");
    const setup = await t.call("POST", "/v1/auth/2fa/setup", {
      auth: user.token,
      body: { password: PASSWORD },
    });
    expect(setup.status).toBe(200);
    expect(setup.body.secret).toMatch(/^[A-Z2-7]{16,}$/);
    expect(setup.body.otpauth_url).toMatch(/^otpauth:\/\/totp\//);
    expect(setup.body.otpauth_url).toContain(`secret=${setup.body.secret}`);

    const [row] = await t.deps.database.db.select().from(users).where(eq(users.id, user.userId));
    expect(row?.totpSecret).toBeTruthy();
    expect(row?.totpSecret).not.toContain(setup.body.secret); // sealed at rest
    expect(row?.totpEnabledAt).toBeNull();

    // Not on yet: signing in asks for nothing more.
    expect(
      (await t.call("POST", "/v1/auth/login", { body: { email: user.email, password: PASSWORD } })).status,
    ).toBe(200);

    const wrong = await t.call("POST", "/v1/auth/2fa/enable", { auth: user.token, body: { code: "000000" } });
    expect(wrong.status).toBe(400);
    expect(wrong.body.errors[0]).toMatchObject({ field: "code", code: "invalid_code" });

    const on = await t.call("POST", "/v1/auth/2fa/enable", {
      auth: user.token,
      body: { code: code(setup.body.secret) },
    });
    expect(on.status).toBe(200);
    expect(on.body.recovery_codes).toHaveLength(10);
    expect(new Set(on.body.recovery_codes).size).toBe(10);
    const stored = await t.deps.database.db
      .select()
      .from(recoveryCodes)
      .where(eq(recoveryCodes.userId, user.userId));
    expect(stored).toHaveLength(10);
    for (const rc of on.body.recovery_codes) expect(JSON.stringify(stored)).not.toContain(rc);

    const audit = await t.deps.database.db
      .select()
      .from(auditLog)
      .where(and(eq(auditLog.actorId, user.userId), eq(auditLog.action, "user.two_factor_enabled")));
    expect(audit).toHaveLength(1);

    // Already on: neither setup nor enable again.
    expect(
      (await t.call("POST", "/v1/auth/2fa/setup", { auth: user.token, body: { password: PASSWORD } })).status,
    ).toBe(409);
    expect(
      (
        await t.call("POST", "/v1/auth/2fa/enable", {
          auth: user.token,
          body: { code: code(setup.body.secret) },
        })
      ).status,
    ).toBe(409);
  });

  it("refuses enable without a setup, and requires a session", async () => {
    const user = await signUp("nosetup");
    expect(
      (await t.call("POST", "/v1/auth/2fa/enable", { auth: user.token, body: { code: "123456" } })).status,
    ).toBe(409);
    expect((await t.call("POST", "/v1/auth/2fa/setup")).status).toBe(401);
    expect((await t.call("POST", "/v1/auth/2fa/setup", { auth: "operator" })).status).toBe(403);
  });

  it("asks for the second factor at login; a current code works, a recovery code works once", async () => {
    const user = await signUp("login");
    const { secret, recoveryCodes: codes } = await enable(user.token);
    const login = (extra: Record<string, string> = {}) =>
      t.call("POST", "/v1/auth/login", { body: { email: user.email, password: PASSWORD, ...extra } });

    const bare = await login();
    expect(bare.status).toBe(401);
    expect(bare.body.two_factor_required).toBe(true);

    const wrong = await login({ totp_code: "000000" });
    expect(wrong.status).toBe(401);
    expect(wrong.body.two_factor_required).toBe(true);

    const withCode = await login({ totp_code: code(secret) });
    expect(withCode.status, withCode.text).toBe(200);
    expect(withCode.body.user.two_factor_enabled).toBe(true);

    const recovery = codes[0] ?? "";
    expect((await login({ recovery_code: recovery })).status).toBe(200);
    expect((await login({ recovery_code: recovery })).status).toBe(401);
    // Case and surrounding spaces do not matter; each code is its own.
    expect((await login({ recovery_code: ` ${(codes[1] ?? "").toUpperCase()} ` })).status).toBe(200);
  });

  it("turns off with a code or a recovery code, and only with a correct one", async () => {
    const user = await signUp("disable");
    const { secret, recoveryCodes: codes } = await enable(user.token);
    const disable = (body: unknown) => t.call("POST", "/v1/auth/2fa/disable", { auth: user.token, body });

    expect((await disable({})).status).toBe(400);
    expect((await disable({ code: code(secret), recovery_code: codes[0] })).status).toBe(400);
    expect((await disable({ code: "000000" })).status).toBe(400);
    expect((await disable({ recovery_code: "aaaaa-bbbbb" })).status).toBe(400);

    expect((await disable({ recovery_code: codes[0] })).status).toBe(204);
    const [row] = await t.deps.database.db.select().from(users).where(eq(users.id, user.userId));
    expect(row).toMatchObject({ totpSecret: null, totpEnabledAt: null });
    expect(
      await t.deps.database.db.select().from(recoveryCodes).where(eq(recoveryCodes.userId, user.userId)),
    ).toEqual([]);
    expect(
      (await t.call("POST", "/v1/auth/login", { body: { email: user.email, password: PASSWORD } })).status,
    ).toBe(200);
    expect((await disable({ code: code(secret) })).status).toBe(409);
    const audit = await t.deps.database.db
      .select()
      .from(auditLog)
      .where(and(eq(auditLog.actorId, user.userId), eq(auditLog.action, "user.two_factor_disabled")));
    expect(audit).toHaveLength(1);

    // And with a current code.
    const again = await enable(user.token);
    expect((await disable({ code: code(again.secret) })).status).toBe(204);
  });

  it("an org that requires two-factor refuses sessions without it, until the member turns it on and signs in again", async () => {
    const user = await signUp("required");
    await t.deps.database.db.update(orgs).set({ requireTwoFactor: true }).where(eq(orgs.id, user.orgId));
    const probe = (token: string) => t.call("GET", `/test-only/orgs/${user.orgId}/probe`, { auth: token });

    const refused = await probe(user.token);
    expect(refused.status).toBe(403);
    expect(refused.body.detail).toMatch(/two-factor/);

    const { secret } = await enable(user.token);
    // The session started before it was on keeps its one-factor standing.
    expect((await probe(user.token)).status).toBe(403);

    const login = await t.call("POST", "/v1/auth/login", {
      body: { email: user.email, password: PASSWORD, totp_code: code(secret) },
    });
    expect(login.status).toBe(200);
    const allowed = await probe(login.body.access_token);
    expect(allowed.status, allowed.text).toBe(200);
    expect(allowed.body).toEqual({ org: user.orgId });

    // The real org routes go through the same gate.
    const keys = await t.call("GET", `/v1/orgs/${user.orgId}/api-keys`, { auth: user.token });
    expect(keys.status).toBe(403);
    expect(
      (await t.call("GET", `/v1/orgs/${user.orgId}/api-keys`, { auth: login.body.access_token })).status,
    ).toBe(200);
  });

  it("follows the test clock: a code from another time window is refused", async () => {
    const user = await signUp("clock");
    const setup = await t.call("POST", "/v1/auth/2fa/setup", {
      auth: user.token,
      body: { password: PASSWORD },
    });
    const stale = code(setup.body.secret, -300);
    const res = await t.call("POST", "/v1/auth/2fa/enable", { auth: user.token, body: { code: stale } });
    expect(res.status).toBe(400);
  });
});
