import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { appModes, createTestApp, type TestApp } from "../../../test/support/app.js";

const PASSWORD = "correct horse battery";
const NEW_PASSWORD = "a different horse entirely";

describe.each(appModes)("profile and password ($name)", (mode) => {
  let t: TestApp;

  beforeAll(async () => {
    t = await createTestApp({
      ...mode,
      env: {
        TOLLGATE_OIDC_GITHUB_ISSUER: "http://127.0.0.1:1/github",
        TOLLGATE_OIDC_GITHUB_CLIENT_ID: "client",
        TOLLGATE_OIDC_GITHUB_CLIENT_SECRET: "secret",
        TOLLGATE_OIDC_ACME_ISSUER: "http://127.0.0.1:1/acme",
        TOLLGATE_OIDC_ACME_CLIENT_ID: "client",
        TOLLGATE_OIDC_ACME_CLIENT_SECRET: "secret",
      },
    });
  });
  afterAll(() => t?.close());

  const signUp = async (name: string) => {
    const email = `${name}.${Date.now()}.${Math.floor(Math.random() * 1e6)}@example.com`;
    const res = await t.call("POST", "/v1/auth/register", { body: { email, password: PASSWORD, name } });
    expect(res.status, res.text).toBe(201);
    return { email, token: res.body.access_token as string, refresh: res.body.refresh_token as string };
  };

  it("lists the configured sign-in providers to anyone, with their names", async () => {
    const res = await t.call("GET", "/v1/auth/providers");
    expect(res.status).toBe(200);
    expect(res.body.providers).toEqual([
      { key: "acme", name: "Acme" },
      { key: "github", name: "GitHub" },
    ]);
  });

  it("changes the name, which /v1/auth/me then shows", async () => {
    const user = await signUp("before");
    const res = await t.call("PATCH", "/v1/auth/me", { auth: user.token, body: { name: "  After  " } });
    expect(res.status, res.text).toBe(200);
    expect(res.body).toMatchObject({ name: "After", email: user.email });
    const me = await t.call("GET", "/v1/auth/me", { auth: user.token });
    expect(me.body.user.name).toBe("After");
  });

  it("refuses an empty name, unknown fields and a missing session", async () => {
    const user = await signUp("strict");
    const empty = await t.call("PATCH", "/v1/auth/me", { auth: user.token, body: { name: "   " } });
    expect(empty.status).toBe(400);
    expect(empty.body.errors[0].field).toBe("name");
    const email = await t.call("PATCH", "/v1/auth/me", {
      auth: user.token,
      body: { name: "x", email: "other@example.com" },
    });
    expect(email.status).toBe(400);
    const anonymous = await t.call("PATCH", "/v1/auth/me", { body: { name: "x" } });
    expect(anonymous.status).toBe(401);
    const me = await t.call("GET", "/v1/auth/me", { auth: user.token });
    expect(me.body.user).toMatchObject({ name: "strict", email: user.email });
  });

  it("changes the password with the current one; other sessions end, this one stays", async () => {
    const user = await signUp("pw");
    const other = await t.call("POST", "/v1/auth/login", { body: { email: user.email, password: PASSWORD } });
    expect(other.status).toBe(200);

    const missing = await t.call("POST", "/v1/auth/password", {
      auth: user.token,
      body: { new_password: NEW_PASSWORD },
    });
    expect(missing.status).toBe(400);
    expect(missing.body.errors[0].field).toBe("current_password");
    const wrong = await t.call("POST", "/v1/auth/password", {
      auth: user.token,
      body: { current_password: "not it at all", new_password: NEW_PASSWORD },
    });
    expect(wrong.status).toBe(403);
    const short = await t.call("POST", "/v1/auth/password", {
      auth: user.token,
      body: { current_password: PASSWORD, new_password: "short" },
    });
    expect(short.status).toBe(400);
    expect(short.body.errors[0].field).toBe("new_password");

    const ok = await t.call("POST", "/v1/auth/password", {
      auth: user.token,
      body: { current_password: PASSWORD, new_password: NEW_PASSWORD },
    });
    expect(ok.status, ok.text).toBe(204);

    expect((await t.call("GET", "/v1/auth/me", { auth: user.token })).status).toBe(200);
    expect((await t.call("GET", "/v1/auth/me", { auth: other.body.access_token })).status).toBe(401);
    const refreshOther = await t.call("POST", "/v1/auth/refresh", {
      body: { refresh_token: other.body.refresh_token },
    });
    expect(refreshOther.status).toBe(401);

    const oldLogin = await t.call("POST", "/v1/auth/login", {
      body: { email: user.email, password: PASSWORD },
    });
    expect(oldLogin.status).toBe(401);
    const newLogin = await t.call("POST", "/v1/auth/login", {
      body: { email: user.email, password: NEW_PASSWORD },
    });
    expect(newLogin.status).toBe(200);
  });
});
