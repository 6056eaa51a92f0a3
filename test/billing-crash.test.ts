import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/storage.js";
import {
  killAllTollgates,
  startTollgate,
  type TollgateProcess,
  writeCatalog,
} from "./support/tollgate-process.js";

/**
 * `kill -9` of a real server in the middle of a billing run, then a run from a fresh process on the
 * same database: every period is invoiced exactly once, with the amounts a clean run gives, and the
 * invoice numbers have no gaps.
 */

const ADMIN_KEY = "billing-crash-operator-key-0123456789";
const ORGS = 150;

const catalog = writeCatalog(`
currency: USD
default_plan: free
meters:
  - { key: api_calls, name: API calls, aggregation: count }
features:
  - { key: api_calls, type: metered, meter: api_calls }
plans:
  - key: free
    name: Free
    price: { month: "0" }
    entitlements: { api_calls: { limit: 100 } }
  - key: pro
    name: Pro
    price: { month: "10" }
    entitlements: { api_calls: { limit: null } }
    charges:
      - { meter: api_calls, model: standard, unit_amount: "0.01" }
`);

describe.runIf(process.env.DATABASE_URL)("a billing run killed half-way (postgres)", () => {
  let db: TestDatabase;
  let env: Record<string, string>;
  beforeAll(async () => {
    db = await createTestDatabase("postgres");
    env = {
      DATABASE_URL: db.url as string,
      TOLLGATE_ADMIN_KEY: ADMIN_KEY,
      TOLLGATE_SECRET: "test-secret-0123456789abcdef0123456789",
      TOLLGATE_CATALOG: catalog,
      TOLLGATE_TEST_CLOCK: "1",
    };
  });
  afterAll(async () => {
    await killAllTollgates();
    await db?.drop();
  });

  const invoiceCount = async () =>
    Number((await db.handle.query<{ n: string }>(sql`select count(*)::text as n from invoices`))[0]?.n);

  it("invoices every period exactly once after a restart, numbered without gaps", async () => {
    const first = await startTollgate(env);
    const call = (proc: TollgateProcess, method: string, path: string, body?: unknown) =>
      proc.call(method, path, { auth: ADMIN_KEY, ...(body !== undefined ? { body } : {}) });
    const clock = await call(first, "GET", "/v1/test-clock");
    const year = new Date(clock.body.now).getUTCFullYear() + 1;
    const jan1 = new Date(Date.UTC(year, 0, 1)).toISOString();
    const feb1 = new Date(Date.UTC(year, 1, 1)).toISOString();
    expect((await call(first, "POST", "/v1/test-clock/advance", { to: jan1 })).status).toBe(200);

    // Each org uses a different number of calls, so every invoice's amount is its own.
    const expected = new Map<string, string>();
    for (let i = 0; i < ORGS; i += 10) {
      await Promise.all(
        Array.from({ length: Math.min(10, ORGS - i) }, async (_, j) => {
          const units = i + j + 1;
          const org = await call(first, "POST", "/v1/orgs", { name: `Org ${units}` });
          expect(org.status, org.text).toBe(201);
          const id = org.body.id as string;
          const plan = await call(first, "POST", `/v1/orgs/${id}/subscription`, {
            plan: "pro",
            skip_payment: true,
          });
          expect(plan.status, plan.text).toBe(200);
          const check = await call(first, "POST", "/v1/check", {
            org_id: id,
            feature: "api_calls",
            amount: units,
          });
          expect(check.body.allowed, check.text).toBe(true);
          expected.set(id, (units * 0.01 + 10).toFixed(2));
        }),
      );
    }

    // The advance runs the billing run; kill the server once it is part-way through.
    const advance = call(first, "POST", "/v1/test-clock/advance", { to: feb1 }).catch(() => undefined);
    let seen = 0;
    for (let waited = 0; seen < 5 && waited < 30_000; waited += 5) {
      await new Promise((resolve) => setTimeout(resolve, 5));
      seen = await invoiceCount();
    }
    await first.kill9();
    await advance;
    const atKill = await invoiceCount();
    expect(atKill).toBeGreaterThanOrEqual(5);
    expect(atKill, "the run finished before the kill: nothing was tested").toBeLessThan(ORGS);

    const second = await startTollgate(env);
    const run = await call(second, "POST", "/v1/admin/billing/run");
    expect(run.status, run.text).toBe(200);
    expect(run.body.closed).toBe(ORGS - atKill);
    expect((await call(second, "POST", "/v1/admin/billing/run")).body.closed).toBe(0);

    const rows = await db.handle.query<{ org_id: string; number: string; total: string; period_start: Date }>(
      sql`select org_id, number, total::text as total, period_start from invoices order by number`,
    );
    expect(rows).toHaveLength(ORGS);
    expect(new Set(rows.map((r) => r.org_id)).size).toBe(ORGS);
    for (const row of rows) {
      expect(Number(row.total).toFixed(2), row.org_id).toBe(expected.get(row.org_id));
      expect(new Date(row.period_start).toISOString()).toBe(jan1);
    }
    expect(rows.map((r) => r.number)).toEqual(
      Array.from({ length: ORGS }, (_, i) => `INV-${String(i + 1).padStart(6, "0")}`),
    );
  }, 180_000);
});
