import { and, eq } from "drizzle-orm";
import { OAuth2Server } from "oauth2-mock-server";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { appModes, createTestApp, type TestApp } from "../../../test/support/app.js";
import { auditLog, identities, users } from "../../db/schema.js";

/**
 * Single sign-on against a real OIDC provider on loopback (oauth2-mock-server): discovery, the
 * authorize redirect, the code exchange with PKCE and the signed ID token are all the real thing.
 */

const CLIENT_ID = "tollgate-test-client";

type Claims = Record<string, unknown>;

describe.each(appModes)("single sign-on ($name)", (mode) => {
  let provider: OAuth2Server;
  let t: TestApp;
  let shape: ((payload: Claims) => void) | undefined;

  beforeAll(async () => {
    provider = new OAuth2Server();
    await provider.issuer.keys.generate("RS256");
    await provider.start(0, "127.0.0.1");
    // Shapes the ID token only (the access token has no audience).
    provider.service.on("beforeTokenSigning", (token: { payload: Claims }) => {
      if (token.payload.aud === CLIENT_ID) shape?.(token.payload);
    });
    t = await createTestApp({
      ...mode,
      env: {
        TOLLGATE_OIDC_MOCK_ISSUER: provider.issuer.url ?? "",
        TOLLGATE_OIDC_MOCK_CLIENT_ID: CLIENT_ID,
        TOLLGATE_OIDC_MOCK_CLIENT_SECRET: "mock-client-secret",
      },
    });
  });
  afterAll(async () => {
    await t?.close();
    await provider?.stop();
  });
  afterEach(() => {
    shape = undefined;
  });

  const claims = (
    subject: string,
    email: string | undefined,
    verified: boolean | undefined,
    name = "Sso User",
  ) => {
    shape = (payload) => {
      payload.sub = subject;
      if (email !== undefined) payload.email = email;
      if (verified !== undefined) payload.email_verified = verified;
      payload.name = name;
    };
  };

  /** GET /start; returns the provider URL and the sealed cookie. */
  const start = async (query = "") => {
    const res = await t.app.request(`/v1/auth/oauth/mock/start${query}`);
    expect(res.status, await res.clone().text()).toBe(302);
    const location = new URL(res.headers.get("location") ?? "");
    const setCookie = res.headers.get("set-cookie") ?? "";
    const cookie = setCookie.split(";")[0] ?? "";
    return { location, cookie, setCookie };
  };

  /** Follows the provider's authorize redirect by hand and returns the callback path + query. */
  const authorize = async (location: URL) => {
    const res = await fetch(location, { redirect: "manual" });
    expect(res.status).toBe(302);
    const back = new URL(res.headers.get("location") ?? "");
    expect(back.origin + back.pathname).toBe(`${t.deps.env.publicUrl}/v1/auth/oauth/mock/callback`);
    return `${back.pathname}${back.search}`;
  };

  const callback = async (path: string, cookie: string) => {
    const res = await t.app.request(path, { headers: cookie ? { cookie } : {} });
    const text = await res.text();
    return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : undefined };
  };

  /** The whole round trip. */
  const signIn = async (query = "") => {
    const { location, cookie } = await start(query);
    return callback(await authorize(location), cookie);
  };

  const unique = (name: string) => `${name}.${Date.now()}.${Math.floor(Math.random() * 1e6)}@example.com`;

  it("redirects to the provider with PKCE (S256), state and nonce, in a sealed HttpOnly cookie", async () => {
    const { location, setCookie } = await start();
    expect(location.origin).toBe(provider.issuer.url);
    const q = location.searchParams;
    expect(q.get("client_id")).toBe(CLIENT_ID);
    expect(q.get("response_type")).toBe("code");
    expect(q.get("code_challenge_method")).toBe("S256");
    expect(q.get("code_challenge")).toMatch(/^[\w-]{43}$/);
    expect(q.get("state")).toMatch(/^[\w-]{20,}$/);
    expect(q.get("nonce")).toMatch(/^[\w-]{20,}$/);
    expect(q.get("scope")).toContain("openid");
    expect(q.get("redirect_uri")).toBe(`${t.deps.env.publicUrl}/v1/auth/oauth/mock/callback`);
    expect(setCookie).toMatch(/HttpOnly/i);
    expect(setCookie).toMatch(/SameSite=Lax/i);
    expect(setCookie).toMatch(/Max-Age=600/);
    expect(setCookie).toMatch(/Path=\/v1\/auth\/oauth/);
    // Neither the state nor the verifier is readable in the cookie.
    expect(setCookie).not.toContain(q.get("state"));
  });

  it("answers 404 for a provider that is not configured, and 400 for an off-site redirect_to", async () => {
    const res = await t.call("GET", "/v1/auth/oauth/nosuch/start");
    expect(res.status).toBe(404);
    expect(res.body.code).toBe("not_found");
    expect((await t.call("GET", "/v1/auth/oauth/nosuch/callback?code=x&state=y")).status).toBe(404);
    for (const target of [
      "https://evil.example.com/",
      "//evil.example.com/x",
      "/\\evil.example.com",
      "dashboard",
    ]) {
      const bad = await t.call("GET", `/v1/auth/oauth/mock/start?redirect_to=${encodeURIComponent(target)}`);
      expect([target, bad.status]).toEqual([target, 400]);
    }
  });

  it("creates a new account (verified, no password, personal org) and signs it in", async () => {
    const email = unique("new");
    claims(`sub-${email}`, email, true, "Grace Hopper");
    const res = await signIn();
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body).toMatchObject({ created: true, linked: true, token_type: "Bearer" });
    expect(res.body.user).toMatchObject({ email, name: "Grace Hopper", email_verified: true });

    const me = await t.call("GET", "/v1/auth/me", { auth: res.body.access_token });
    expect(me.status).toBe(200);
    expect(me.body.orgs).toHaveLength(1);
    expect(me.body.orgs[0]).toMatchObject({ personal: true, role: "owner" });

    const [row] = await t.deps.database.db.select().from(users).where(eq(users.email, email));
    expect(row?.passwordHash).toBeNull();
    const audit = await t.deps.database.db
      .select()
      .from(auditLog)
      .where(and(eq(auditLog.actorId, res.body.user.id), eq(auditLog.action, "user.signed_in")));
    expect(audit[0]?.metadata).toEqual({ method: "oidc", provider: "mock" });

    // The same provider account again: signs in the same user, nothing new created.
    claims(`sub-${email}`, email, true);
    const again = await signIn();
    expect(again.status).toBe(200);
    expect(again.body).toMatchObject({ created: false, linked: false });
    expect(again.body.user.id).toBe(res.body.user.id);
  });

  it("links a verified e-mail to the existing password account (same user id)", async () => {
    const email = unique("existing");
    const registered = await t.call("POST", "/v1/auth/register", {
      body: { email, password: "correct horse battery", name: "Ada" },
    });
    expect(registered.status, registered.text).toBe(201);
    const userId = registered.body.user.id as string;

    claims(`sub-${email}`, email.toUpperCase(), true);
    const res = await signIn();
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body).toMatchObject({ created: false, linked: true });
    expect(res.body.user.id).toBe(userId);
    const linked = await t.deps.database.db.select().from(identities).where(eq(identities.userId, userId));
    expect(linked).toMatchObject([{ provider: "mock", subject: `sub-${email}` }]);
    // The address was never verified here: the provider's proof hands over the account, so the
    // password set by whoever registered it first no longer works, nor do their sessions.
    const login = await t.call("POST", "/v1/auth/login", {
      body: { email, password: "correct horse battery" },
    });
    expect(login.status).toBe(401);
    expect((await t.call("GET", "/v1/auth/me", { auth: registered.body.access_token })).status).toBe(401);
  });

  it("keeps the password of an account whose address was already verified when linking", async () => {
    const email = unique("verified");
    const registered = await t.call("POST", "/v1/auth/register", {
      body: { email, password: "correct horse battery", name: "Ada" },
    });
    expect(registered.status).toBe(201);
    await t.deps.database.db
      .update(users)
      .set({ emailVerifiedAt: new Date() })
      .where(eq(users.id, registered.body.user.id));
    claims(`sub-${email}`, email, true);
    const res = await signIn();
    expect(res.status).toBe(200);
    expect(res.body.user.id).toBe(registered.body.user.id);
    const login = await t.call("POST", "/v1/auth/login", {
      body: { email, password: "correct horse battery" },
    });
    expect(login.status).toBe(200);
  });

  it("never links or creates on an unverified e-mail", async () => {
    const email = unique("unverified");
    const registered = await t.call("POST", "/v1/auth/register", {
      body: { email, password: "correct horse battery", name: "Ada" },
    });
    expect(registered.status).toBe(201);
    claims(`sub-${email}`, email, false);
    const res = await signIn();
    expect(res.status).toBe(409);
    expect(res.body.detail).toMatch(/not verified/);
    expect(res.body.access_token).toBeUndefined();
    expect(
      await t.deps.database.db
        .select()
        .from(identities)
        .where(eq(identities.subject, `sub-${email}`)),
    ).toEqual([]);

    // No claim at all is no verification either; with no account it is refused, not created.
    const stranger = unique("stranger");
    claims(`sub-${stranger}`, stranger, undefined);
    const refused = await signIn();
    expect(refused.status).toBe(403);
    expect(await t.deps.database.db.select().from(users).where(eq(users.email, stranger))).toEqual([]);
  });

  it("refuses a tampered state, a missing or tampered cookie, and a replayed callback", async () => {
    const email = unique("replay");
    claims(`sub-${email}`, email, true);
    const { location, cookie } = await start();
    const path = await authorize(location);

    const state = new URL(path, "http://x").searchParams.get("state") ?? "";
    const tampered = path.replace(`state=${state}`, `state=${state.slice(0, -2)}xx`);
    const wrongState = await callback(tampered, cookie);
    expect(wrongState.status).toBe(400);
    expect(wrongState.body.errors[0]).toMatchObject({ field: "state" });

    expect((await callback(path, "")).status).toBe(400);
    const [name, value = ""] = cookie.split("=");
    // One character changed (to another one: the one replaced decides, not the last).
    const replaced = value.at(-3) === "A" ? "B" : "A";
    const flipped = `${name}=${value.slice(0, -3)}${replaced}${value.slice(-2)}`;
    expect(flipped).not.toBe(cookie);
    expect((await callback(path, flipped)).status).toBe(400);

    // The tampered attempts did not spend the real state: the genuine callback works, once.
    const first = await callback(path, cookie);
    expect(first.status, JSON.stringify(first.body)).toBe(200);
    expect(first.headers.get("set-cookie")).toMatch(/tg_oauth=;.*Max-Age=0/);
    const replay = await callback(path, cookie);
    expect(replay.status).toBe(400);
    expect(replay.body.detail).toMatch(/already completed/);
  });

  it("refuses an ID token whose nonce is not this sign-in's", async () => {
    const email = unique("nonce");
    claims(`sub-${email}`, email, true);
    const inner = shape;
    shape = (payload) => {
      inner?.(payload);
      payload.nonce = "someone-elses-nonce";
    };
    const res = await signIn();
    expect(res.status).toBe(401);
    expect(res.body.code).toBe("unauthenticated");
    expect(t.logs.text).toMatch(/"claim":"nonce"/);
    expect(await t.deps.database.db.select().from(users).where(eq(users.email, email))).toEqual([]);
  });

  it("refuses an ID token for another client (audience)", async () => {
    const email = unique("aud");
    claims(`sub-${email}`, email, true);
    const inner = shape;
    shape = (payload) => {
      inner?.(payload);
      payload.aud = "another-client";
    };
    const res = await signIn();
    expect(res.status).toBe(401);
    expect(t.logs.text).toMatch(/"claim":"aud"/);
  });

  it("with redirect_to, sends the browser there with the tokens in the fragment", async () => {
    const email = unique("redirect");
    claims(`sub-${email}`, email, true);
    const res = await t.app.request("/v1/auth/oauth/mock/start?redirect_to=%2Fdashboard%3Ftab%3D1");
    const cookie = (res.headers.get("set-cookie") ?? "").split(";")[0] ?? "";
    const path = await authorize(new URL(res.headers.get("location") ?? ""));
    const back = await t.app.request(path, { headers: { cookie } });
    expect(back.status).toBe(302);
    const target = new URL(back.headers.get("location") ?? "");
    expect(`${target.origin}${target.pathname}${target.search}`).toBe(
      `${t.deps.env.publicUrl}/dashboard?tab=1`,
    );
    const fragment = new URLSearchParams(target.hash.slice(1));
    const me = await t.call("GET", "/v1/auth/me", { auth: fragment.get("access_token") ?? "" });
    expect(me.status).toBe(200);
    expect(me.body.user.email).toBe(email);
  });

  it("with redirect_to, sends a failed sign-in back there too, with the reason in the fragment", async () => {
    const res = await t.app.request("/v1/auth/oauth/mock/start?redirect_to=%2Flogin%3Fplan%3Dpro");
    const cookie = (res.headers.get("set-cookie") ?? "").split(";")[0] ?? "";
    const state = new URL(res.headers.get("location") ?? "").searchParams.get("state") ?? "";
    const back = await callback(`/v1/auth/oauth/mock/callback?error=access_denied&state=${state}`, cookie);
    expect(back.status).toBe(302);
    const target = new URL(back.headers.get("location") ?? "");
    expect(`${target.pathname}${target.search}`).toBe("/login?plan=pro");
    const fragment = new URLSearchParams(target.hash.slice(1));
    expect(fragment.get("error")).toBe("forbidden");
    expect(fragment.get("error_description")).toContain("access_denied");
    expect(fragment.has("access_token")).toBe(false);
  });

  it("lists the provider for the sign-in page", async () => {
    const res = await t.call("GET", "/v1/auth/providers");
    expect(res.status).toBe(200);
    expect(res.body.providers).toEqual([{ key: "mock", name: "Mock" }]);
  });

  it("answers the provider's own refusal (error=access_denied) with 403", async () => {
    const { location, cookie } = await start();
    const state = location.searchParams.get("state") ?? "";
    const res = await callback(`/v1/auth/oauth/mock/callback?error=access_denied&state=${state}`, cookie);
    expect(res.status).toBe(403);
    expect(res.body.detail).toContain("access_denied");
  });
});
