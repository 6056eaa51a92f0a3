import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestApp, type TestApp } from "./support/app.js";

/**
 * The shared authorization suite. It reads every route from /openapi.json, so a route added later is
 * covered without anyone remembering to: every operation that declares security refuses callers
 * without valid credentials, and every operation that does not is on the explicit public list below.
 * The identity issue extends it with another org's user and key (404) and a role without the right (403).
 */
const PUBLIC_OPERATIONS = new Set(["GET /healthz", "GET /readyz", "GET /metrics"]);

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
