import { eq, sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { emails } from "../src/db/schema.js";
import { appModes, createTestApp, type TestApp } from "./support/app.js";
import { writeCatalog } from "./support/tollgate-process.js";

/**
 * Dunning on the test clock: a declined renewal makes the subscription past_due and e-mails the
 * org's billing contacts; retries follow the catalog's schedule (2, 7, 14 and 21 days by default)
 * from the first failure, each failure e-mailed; entitlements stay during the grace period; after the
 * last retry the subscription is canceled (the free plan's grants remain) or moved to the free plan.
 * A good card before the end recovers everything.
 */

const plans = `
meters:
  - { key: calls, name: Calls, aggregation: count }
features:
  - { key: calls, type: metered, meter: calls }
plans:
  - { key: free, name: Free, price: { month: "0" }, entitlements: { calls: { limit: 10 } } }
  - { key: pro, name: Pro, price: { month: "20" }, entitlements: { calls: { limit: 1000 } } }
`;
const defaults = writeCatalog(`currency: USD\ndefault_plan: free\n${plans}`);
const toFree = writeCatalog(
  `currency: USD\ndefault_plan: free\ndunning: { retry_days: [1, 3], grace_days: 2, final_action: free }\n${plans}`,
);

const iso = (ms: number) => new Date(ms).toISOString();
const DAY = 86_400_000;

async function setUp(t: TestApp, email: string) {
  const res = await t.call("POST", "/v1/auth/register", {
    body: { email, password: "correct horse battery staple", name: "Ada" },
  });
  expect(res.status, res.text).toBe(201);
  const org = res.body.org.id as string;
  const op = (method: string, path: string, body?: unknown) =>
    t.call(method, path, { auth: "operator", ...(body !== undefined ? { body } : {}) });
  expect(
    (await op("PUT", `/v1/orgs/${org}/payment-method`, { card_number: "4242424242424242" })).status,
  ).toBe(200);
  const changed = await op("POST", `/v1/orgs/${org}/subscription`, { plan: "pro" });
  expect(changed.body, changed.text).toMatchObject({ plan: "pro", payment: "paid" });
  // From now on the card is declined.
  expect(
    (await op("PUT", `/v1/orgs/${org}/payment-method`, { card_number: "4000000000000002" })).status,
  ).toBe(200);
  const periodEnd = Date.parse(changed.body.current_period_end);
  return { org, op, periodEnd };
}

describe.each(appModes)("dunning ($name)", (mode) => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ ...mode, env: { TOLLGATE_TEST_CLOCK: "1", TOLLGATE_CATALOG: defaults } });
  });
  afterAll(() => t.close());

  const advanceTo = async (ms: number) => {
    const res = await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: { to: iso(ms) } });
    expect(res.status, res.text).toBe(200);
  };
  const mails = async (org: string, template: string) =>
    (
      await t.database.db
        .select()
        .from(emails)
        .where(eq(emails.orgId, org))
        .orderBy(emails.createdAt, emails.id)
    ).filter((m) => m.template === template);

  it("retries on the schedule, keeps entitlements in the grace period, then cancels", async () => {
    const { org, op, periodEnd } = await setUp(t, "dunning@example.com");
    const status = async () => (await op("GET", `/v1/orgs/${org}/subscription`)).body.status;
    const allowed = async () =>
      (await op("POST", "/v1/check", { org_id: org, feature: "calls", amount: 1, consume: false })).body;

    await advanceTo(periodEnd);
    expect(await status()).toBe("past_due");
    const [invoice] = (await op("GET", `/v1/orgs/${org}/invoices`)).body.data;
    expect(invoice).toMatchObject({ status: "finalized", amount_due: "20.00" });
    let failed = await mails(org, "payment_failed");
    expect(failed).toHaveLength(1);
    expect(failed[0]?.subject).toContain("Payment failed");
    expect(failed[0]?.text).toContain(`try again on ${iso(periodEnd + 2 * DAY).slice(0, 10)}`);
    // In the grace period, Pro's limits still apply.
    expect(await allowed()).toMatchObject({ allowed: true, limit: 1000 });

    // Retries 2, 7, 14 and 21 days after the first failure, each one failing and e-mailed.
    for (const [i, days] of [2, 7, 14].entries()) {
      await advanceTo(periodEnd + days * DAY - 1000);
      expect((await mails(org, "payment_failed")).length).toBe(1 + i);
      await advanceTo(periodEnd + days * DAY);
      expect((await mails(org, "payment_failed")).length).toBe(2 + i);
      expect(await status()).toBe("past_due");
    }
    const payments = await t.database.query<{ n: string }>(
      sql`select count(*)::text as n from payments where invoice_id = ${invoice.id}`,
    );
    expect(Number(payments[0]?.n)).toBe(4);

    await advanceTo(periodEnd + 21 * DAY);
    failed = await mails(org, "payment_failed");
    expect(failed).toHaveLength(5);
    expect(failed[4]?.text).toContain("That was the last attempt");
    expect(await status()).toBe("canceled");
    expect(await mails(org, "dunning_ended")).toHaveLength(1);
    // Canceled: the free plan's grants.
    expect(await allowed()).toMatchObject({ allowed: true, limit: 10 });
  });

  it("recovers when the card is fixed before the last retry: the retry pays and the plan stays", async () => {
    const { org, op, periodEnd } = await setUp(t, "recovers@example.com");
    await advanceTo(periodEnd);
    expect((await op("GET", `/v1/orgs/${org}/subscription`)).body.status).toBe("past_due");
    await op("PUT", `/v1/orgs/${org}/payment-method`, { card_number: "4242424242424242" });
    await advanceTo(periodEnd + 2 * DAY);
    const sub = (await op("GET", `/v1/orgs/${org}/subscription`)).body;
    expect(sub).toMatchObject({ status: "active", plan: "pro" });
    const [invoice] = (await op("GET", `/v1/orgs/${org}/invoices`)).body.data;
    expect(invoice).toMatchObject({ status: "paid", amount_paid: "20.00" });
    // Nothing more is attempted or sent after it is paid.
    await advanceTo(periodEnd + 8 * DAY);
    expect(await mails(org, "payment_failed")).toHaveLength(1);
  });
});

describe("dunning with a custom schedule that ends on the free plan", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({
      database: "pglite",
      redis: false,
      env: { TOLLGATE_TEST_CLOCK: "1", TOLLGATE_CATALOG: toFree },
    });
  });
  afterAll(() => t.close());

  it("denies paid features after the grace period and moves the org to the free plan after the last retry", async () => {
    const { org, op, periodEnd } = await setUp(t, "tofree@example.com");
    const advanceTo = (ms: number) => op("POST", "/v1/test-clock/advance", { to: iso(ms) });
    const check = async () =>
      (await op("POST", "/v1/check", { org_id: org, feature: "calls", amount: 1, consume: false })).body;
    await advanceTo(periodEnd);
    expect(await check()).toMatchObject({ allowed: true, limit: 1000 });
    await advanceTo(periodEnd + 2 * DAY + 1000);
    // Grace (2 days) is over and a retry is still to come: nothing paid is granted.
    expect(await check()).toMatchObject({ allowed: false, reason: "subscription_inactive" });
    await advanceTo(periodEnd + 3 * DAY);
    const sub = (await op("GET", `/v1/orgs/${org}/subscription`)).body;
    expect(sub).toMatchObject({ status: "active", plan: "free" });
    expect(await check()).toMatchObject({ allowed: true, limit: 10 });
  });
});
