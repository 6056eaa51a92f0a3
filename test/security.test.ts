import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestApp, type TestApp } from "./support/app.js";

/**
 * The shared authorization suite. It reads every route from /openapi.json, so a route added later is
 * covered without anyone remembering to: every operation that declares security refuses callers
 * without valid credentials, and every operation that does not is on the explicit public list below.
 * Every org-scoped operation also answers another tenant's user 404 (exactly as for an org that does
 * not exist), and a plain member 403 on anything that changes the org.
 */
const PUBLIC_OPERATIONS = new Set([
  "GET /healthz",
  "GET /readyz",
  "GET /metrics",
  // Signing in: the caller has no credentials yet.
  "POST /v1/auth/register",
  "POST /v1/auth/login",
  "POST /v1/auth/refresh",
  // Single sign-on: the browser arrives without credentials, and comes back from the provider.
  "GET /v1/auth/oauth/{provider}/start",
  "GET /v1/auth/oauth/{provider}/callback",
  "GET /v1/auth/providers",
  // E-mail links: whoever holds the token (or asks for a reset) is not signed in.
  "POST /v1/auth/verify-email",
  "POST /v1/auth/forgot-password",
  "POST /v1/auth/reset-password",
  // The pricing page.
  "GET /v1/plans",
  "POST /v1/pricing/estimate",
  // Stripe's events: authenticated by their signature instead.
  "POST /v1/billing/stripe/webhook",
]);

type Operation = { method: string; path: string; security: unknown[] | undefined };

/** Fills path parameters with well-formed ids that name nothing. */
const concrete = (path: string) => path.replace(/\{[^}]+\}/g, "org_00000000000000000000000000");

describe("authorization over every route in the OpenAPI document", () => {
  let t: TestApp;
  let operations: Operation[];

  beforeAll(async () => {
    // Every optional module on, so every route is in the document.
    t = await createTestApp({ database: "pglite", redis: false, env: { TOLLGATE_TEST_CLOCK: "1" } });
    const doc = (await t.call("GET", "/openapi.json")).body as {
      paths: Record<string, Record<string, { security?: unknown[] }>>;
    };
    operations = Object.entries(doc.paths).flatMap(([path, methods]) =>
      Object.entries(methods).map(([method, op]) => ({
        method: method.toUpperCase(),
        path,
        security: op.security,
      })),
    );
  });
  afterAll(() => t.close());

  it("finds the routes", () => {
    expect(operations.length).toBeGreaterThanOrEqual(5);
  });

  it("leaves only the deliberate public operations without security", () => {
    const open = operations.filter((op) => !op.security?.length).map((op) => `${op.method} ${op.path}`);
    expect(open.sort()).toEqual([...PUBLIC_OPERATIONS].sort());
  });

  it("answers 401 problem+json to no credentials, a wrong key and a malformed header, on every secured operation", async () => {
    const secured = operations.filter((op) => op.security?.length);
    expect(secured.length).toBeGreaterThan(0);
    const attempts: Record<string, string | undefined> = {
      none: undefined,
      "wrong key": "Bearer tg_admin_this-is-not-the-key-0000000000000000000000",
      "wrong scheme": `Basic ${Buffer.from("admin:admin").toString("base64")}`,
      "empty bearer": "Bearer ",
    };
    for (const op of secured) {
      for (const [name, authorization] of Object.entries(attempts)) {
        const res = await t.call(op.method, concrete(op.path), {
          headers: authorization ? { authorization } : {},
          ...(op.method === "GET" ? {} : { body: {} }),
        });
        expect(res.status, `${op.method} ${op.path} with ${name}`).toBe(401);
        expect(res.headers.get("content-type")).toBe("application/problem+json");
        expect(res.body.code).toBe("unauthenticated");
      }
    }
  });
});

describe("tenancy over every org-scoped route in the OpenAPI document", () => {
  let t: TestApp;
  let orgRoutes: Operation[];
  const signUp = async (name: string) => {
    const res = await t.call("POST", "/v1/auth/register", {
      body: {
        email: `${name}.${Date.now()}.${Math.random()}@example.com`,
        password: "correct horse battery",
        name,
      },
    });
    expect(res.status, res.text).toBe(201);
    return {
      token: res.body.access_token as string,
      orgId: res.body.org.id as string,
      email: res.body.user.email as string,
    };
  };

  beforeAll(async () => {
    t = await createTestApp({ database: "pglite", redis: false });
    const doc = (await t.call("GET", "/openapi.json")).body as {
      paths: Record<string, Record<string, { security?: unknown[] }>>;
    };
    orgRoutes = Object.entries(doc.paths)
      .filter(([path]) => path.startsWith("/v1/orgs/{org}"))
      .flatMap(([path, methods]) =>
        Object.entries(methods).map(([method, op]) => ({
          method: method.toUpperCase(),
          path,
          security: op.security,
        })),
      );
  });
  afterAll(() => t.close());

  /** Path parameters other than {org} get well-formed ids that name nothing in the victim's org. */
  const pathFor = (op: Operation, orgId: string) =>
    op.path.replace("{org}", orgId).replace(/\{[^}]+\}/g, "usr_00000000000000000000000000");

  it("covers every org route", () => {
    expect(orgRoutes.length).toBeGreaterThanOrEqual(8);
  });

  it("answers another org's user 404, exactly as for an org that does not exist", async () => {
    const victim = await signUp("victim");
    const intruder = await signUp("intruder");
    for (const op of orgRoutes) {
      const body =
        op.method === "GET" || op.method === "DELETE"
          ? {}
          : { body: { name: "x", role: "member", email: "x@example.com", scopes: ["usage:read"] } };
      const res = await t.call(op.method, pathFor(op, victim.orgId), { auth: intruder.token, ...body });
      const missing = await t.call(op.method, pathFor(op, "org_00000000000000000000000000"), {
        auth: intruder.token,
        ...body,
      });
      expect([res.status, `${op.method} ${op.path}`]).toEqual([404, `${op.method} ${op.path}`]);
      expect(res.body.detail.replace(victim.orgId, "ORG")).toBe(
        missing.body.detail.replace("org_00000000000000000000000000", "ORG"),
      );
    }
  });

  it("answers another org's API key 404 on every org route, even with every scope", async () => {
    const victim = await signUp("victim2");
    const intruder = await signUp("intruder2");
    const created = await t.call("POST", `/v1/orgs/${intruder.orgId}/api-keys`, {
      auth: intruder.token,
      body: {
        name: "all scopes",
        scopes: [
          "org:read",
          "members:read",
          "keys:read",
          "billing:read",
          "webhooks:read",
          "usage:read",
          "audit:read",
        ],
      },
    });
    expect(created.status, created.text).toBe(201);
    // Org API keys are rate limited by the org's plan (free: 10 a minute); this walks every route.
    const upgraded = await t.call("POST", `/v1/orgs/${intruder.orgId}/subscription`, {
      auth: "operator",
      body: { plan: "enterprise", skip_payment: true },
    });
    expect(upgraded.status, upgraded.text).toBe(200);
    for (const op of orgRoutes) {
      const body = op.method === "GET" || op.method === "DELETE" ? {} : { body: { name: "x" } };
      const res = await t.call(op.method, pathFor(op, victim.orgId), { auth: created.body.key, ...body });
      expect([res.status, `${op.method} ${op.path}`]).toEqual([404, `${op.method} ${op.path}`]);
    }
  });

  it("answers a plain member 403 on every route that changes the org", async () => {
    const owner = await signUp("owner");
    const member = await signUp("member");
    // Invitations count only for a verified address: follow the verification link first.
    const [verification] = await t.database.query<{ text: string }>(
      sql`select text from emails where "to" = ${member.email} and template = 'verify_email'`,
    );
    const verifyToken = /token=([\w-]+)/.exec(verification?.text ?? "")?.[1];
    expect((await t.call("POST", "/v1/auth/verify-email", { body: { token: verifyToken } })).status).toBe(
      200,
    );
    const sent = await t.call("POST", `/v1/orgs/${owner.orgId}/invitations`, {
      auth: owner.token,
      body: { email: member.email, role: "member" },
    });
    expect(sent.status).toBe(201);
    const [mail] =
      (await t.database.query<{ text: string }>(
        sql`select text from emails where "to" = ${member.email} and template = 'invitation'`,
      )) ?? [];
    const token = /invitations\/(\S+)/.exec(mail?.text ?? "")?.[1] ?? "";
    expect((await t.call("POST", `/v1/invitations/${token}/accept`, { auth: member.token })).status).toBe(
      200,
    );
    for (const op of orgRoutes.filter((o) => o.method !== "GET")) {
      const body =
        op.method === "DELETE"
          ? {}
          : { body: { name: "x", role: "admin", email: "x@example.com", scopes: ["usage:read"] } };
      const res = await t.call(op.method, pathFor(op, owner.orgId), { auth: member.token, ...body });
      expect([res.status, `${op.method} ${op.path}`]).toEqual([403, `${op.method} ${op.path}`]);
    }
  });
});
