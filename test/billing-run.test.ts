import { eq, sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { invoiceLines, invoices } from "../src/db/schema.js";
import { runBilling } from "../src/modules/billing/run.js";
import { loadCatalog } from "../src/modules/catalog/validate.js";
import { appModes, createTestApp, type TestApp } from "./support/app.js";
import { writeCatalog } from "./support/tollgate-process.js";

/**
 * The billing run over HTTP, on the test clock: each ended period closes with one invoice (usage in
 * arrears, the next base fee in advance), exactly once, numbered without gaps; the upcoming invoice
 * is what the run then posts; trials make the base fee free until they end; finalized invoices
 * cannot change.
 */

const CATALOG = `
currency: USD
default_plan: free
meters:
  - { key: api_calls, name: API calls, aggregation: count }
  - { key: payments, name: Payment volume, aggregation: sum }
features:
  - { key: api_calls, type: metered, meter: api_calls }
plans:
  - key: free
    name: Free
    price: { month: "0" }
    entitlements: { api_calls: { limit: 100 } }
  - key: pro
    name: Pro
    price: { month: "10", year: "100" }
    entitlements: { api_calls: { limit: null } }
    charges:
      - meter: api_calls
        model: graduated
        tiers:
          - { up_to: 1000, unit_amount: "0" }
          - { up_to: null, unit_amount: "0.002" }
      - { meter: payments, model: percentage, rate: "2.9", fixed_amount: "0.30", free_units_per_events: 1 }
  - key: trial
    name: Trial
    price: { month: "30" }
    trial_days: 45
    entitlements: { api_calls: { limit: 1000 } }
  - key: trial_month
    name: Trial month
    price: { month: "30" }
    trial_days: 31
    entitlements: { api_calls: { limit: 1000 } }
`;

const catalogFile = writeCatalog(CATALOG);
it("runs on a valid catalog", () => expect(loadCatalog(catalogFile).plans).toHaveLength(4));

const iso = (ms: number) => new Date(ms).toISOString();

type Line = {
  kind: string;
  description: string;
  quantity: string | null;
  amount: string;
  period_start: string;
};

describe.each(appModes)("the billing run ($name)", (mode) => {
  let t: TestApp;
  /** The first of January after the test clock's start: every period below is a calendar month. */
  let jan1: number;
  const at = (month: number, dayOfMonth = 1, hour = 0) =>
    Date.UTC(new Date(jan1).getUTCFullYear(), month, dayOfMonth, hour);

  beforeAll(async () => {
    t = await createTestApp({ ...mode, env: { TOLLGATE_TEST_CLOCK: "1", TOLLGATE_CATALOG: catalogFile } });
    jan1 = Date.UTC(new Date(t.deps.clock.nowMs()).getUTCFullYear() + 1, 0, 1);
    await advanceTo(jan1);
  });
  afterAll(() => t.close());

  async function advanceTo(ms: number) {
    const res = await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: { to: iso(ms) } });
    expect(res.status, res.text).toBe(200);
    return res.body;
  }
  async function newOrg(plan?: string) {
    const res = await t.call("POST", "/v1/orgs", {
      auth: "operator",
      body: { name: `Org on ${plan ?? "free"}` },
    });
    expect(res.status, res.text).toBe(201);
    const org = res.body.id as string;
    if (plan) {
      const set = await t.call("POST", `/v1/orgs/${org}/subscription`, {
        auth: "operator",
        body: { plan, skip_payment: true },
      });
      expect(set.status, set.text).toBe(200);
    }
    return org;
  }
  async function consume(org: string, amount: number) {
    const res = await t.call("POST", "/v1/check", {
      auth: "operator",
      body: { org_id: org, feature: "api_calls", amount },
    });
    expect(res.status, res.text).toBe(200);
    expect(res.body.allowed).toBe(true);
  }
  async function invoicesOf(org: string) {
    const res = await t.call("GET", `/v1/orgs/${org}/invoices`, { auth: "operator" });
    expect(res.status, res.text).toBe(200);
    // Oldest first, for reading the history in order.
    return [...res.body.data].reverse();
  }
  const summary = (lines: Line[]) =>
    lines.map((l) => [l.kind, l.description.split(",")[0], l.quantity, l.amount]);

  let pro: string;
  let free: string;
  let trial: string;

  it("prices the running period's upcoming invoice from usage so far", async () => {
    pro = await newOrg("pro");
    free = await newOrg();
    trial = await newOrg("trial");
    await advanceTo(at(0, 20));
    await consume(pro, 1500);
    const events = [
      { id: "pay_1", org_id: pro, meter: "payments", value: "100", timestamp: iso(at(0, 2)) },
      { id: "pay_2", org_id: pro, meter: "payments", value: "50", timestamp: iso(at(0, 3)) },
    ];
    const posted = await t.call("POST", "/v1/events", { auth: "operator", body: { events } });
    expect(posted.status, posted.text).toBe(202);

    const res = await t.call("GET", `/v1/orgs/${pro}/invoices/upcoming`, { auth: "operator" });
    expect(res.status, res.text).toBe(200);
    expect(res.body).toMatchObject({
      status: "upcoming",
      period_start: iso(at(0)),
      period_end: iso(at(1)),
      next_billing_at: iso(at(1)),
    });
    expect(summary(res.body.lines)).toEqual([
      // 1,500 calls: the first 1,000 free, 500 at 0.002.
      ["usage", "API calls", "1500", "1.00"],
      // The first payment is free; 50 × 2.9% + 0.30.
      ["usage", "Payment volume", "150", "1.75"],
      ["base_fee", "Pro (monthly)", "1", "10.00"],
    ]);
    expect(res.body.total).toBe("12.75");
  });

  it("closes the period at its end: the invoice posts exactly the upcoming lines", async () => {
    const upcoming = await t.call("GET", `/v1/orgs/${pro}/invoices/upcoming`, { auth: "operator" });
    const advanced = await advanceTo(at(1));
    const billing = advanced.ran.find((r: { name: string }) => r.name === "billing");
    expect(billing.result.closed).toBeGreaterThanOrEqual(3);

    const [invoice, ...more] = await invoicesOf(pro);
    expect(more).toHaveLength(0);
    expect(invoice).toMatchObject({
      status: "finalized",
      reason: "subscription_cycle",
      currency: "USD",
      plan: "pro",
      period_start: iso(at(0)),
      period_end: iso(at(1)),
      subtotal: "12.75",
      total: "12.75",
      amount_due: "12.75",
      finalized_at: iso(at(1)),
    });
    expect(invoice.number).toMatch(/^INV-\d{6}$/);
    const strip = (lines: Record<string, unknown>[]) => lines.map(({ details: _d, ...rest }) => rest);
    expect(strip(invoice.lines)).toEqual(strip(upcoming.body.lines));
    expect(invoice.lines[2]).toMatchObject({ period_start: iso(at(1)), period_end: iso(at(2)) });

    const one = await t.call("GET", `/v1/orgs/${pro}/invoices/${invoice.id}`, { auth: "operator" });
    expect(one.status, one.text).toBe(200);
    expect(one.body).toEqual(invoice);
  });

  it("gives a free plan's periods no invoice, and a trial's base fee starts when the trial ends", async () => {
    expect(await invoicesOf(free)).toEqual([]);
    const [first] = await invoicesOf(trial);
    // The trial runs 45 days from January 1, to February 15: half of February's 28 days is paid.
    expect(summary(first.lines)).toEqual([["base_fee", "Trial (monthly)", "0.5", "15.00"]]);
    expect(first.lines[0]).toMatchObject({ period_start: iso(at(1, 15)), period_end: iso(at(2)) });
    expect(first.total).toBe("15.00");
  });

  it("catches up period by period after a long jump, numbering without gaps", async () => {
    await consume(pro, 2000);
    await advanceTo(at(3, 1, 1));
    const history = await invoicesOf(pro);
    expect(history.map((i) => [i.period_start, i.total])).toEqual([
      [iso(at(0)), "12.75"],
      // February: 2,000 calls (2.00) and March's base fee.
      [iso(at(1)), "12.00"],
      // March: no usage; the zero usage lines stay on the invoice.
      [iso(at(2)), "10.00"],
    ]);
    expect(summary(history[2].lines)).toEqual([
      ["usage", "API calls", "0", "0.00"],
      ["usage", "Payment volume", "0", "0.00"],
      ["base_fee", "Pro (monthly)", "1", "10.00"],
    ]);
    const trialHistory = await invoicesOf(trial);
    expect(trialHistory.map((i) => i.total)).toEqual(["15.00", "30.00", "30.00"]);

    const all = await t.database.db.select({ number: invoices.number }).from(invoices);
    const numbers = all.map((r) => Number(r.number?.slice(4))).sort((a, b) => a - b);
    expect(numbers).toEqual(Array.from({ length: numbers.length }, (_, i) => i + 1));
    expect(numbers).toHaveLength(6);
  });

  it("is idempotent, also when several runs race", async () => {
    const before = await t.database.db.select({ id: invoices.id }).from(invoices);
    const again = await t.call("POST", "/v1/admin/billing/run", { auth: "operator" });
    expect(again.status, again.text).toBe(200);
    expect(again.body).toEqual({ closed: 0, invoices: [] });

    // Three runs at once over a period that just ended: every period is closed exactly once.
    await consume(pro, 10);
    t.deps.testClock?.clock.moveTo(at(4, 1, 2));
    const runs = await Promise.all([runBilling(t.deps), runBilling(t.deps), runBilling(t.deps)]);
    expect(runs.reduce((n, r) => n + r.invoices.length, 0)).toBe(2);
    const after = await t.database.db.select({ id: invoices.id }).from(invoices);
    expect(after.length).toBe(before.length + 2);
  });

  it("keeps finalized invoices immutable, in the database itself", async () => {
    const [invoice] = await invoicesOf(pro);
    await expect(
      t.database.db.update(invoices).set({ total: "1.00" }).where(eq(invoices.id, invoice.id)),
    ).rejects.toThrow();
    await expect(
      t.database.db.update(invoiceLines).set({ amount: "0" }).where(eq(invoiceLines.invoiceId, invoice.id)),
    ).rejects.toThrow();
    await expect(t.database.db.delete(invoices).where(eq(invoices.id, invoice.id))).rejects.toThrow();
    await expect(
      t.database.query(sql`delete from invoice_lines where invoice_id = ${invoice.id}`),
    ).rejects.toThrow();
    const [row] = await t.database.db.select().from(invoices).where(eq(invoices.id, invoice.id));
    expect(row?.total).toBe("12.75");
  });

  it("shows an org only its own invoices", async () => {
    const [invoice] = await invoicesOf(pro);
    const other = await t.call("GET", `/v1/orgs/${trial}/invoices/${invoice.id}`, { auth: "operator" });
    expect(other.status).toBe(404);
    expect(other.body.code).toBe("not_found");
    const bad = await t.call("GET", `/v1/orgs/${pro}/invoices/not-an-id`, { auth: "operator" });
    expect(bad.status).toBe(400);
    const page = await t.call("GET", `/v1/orgs/${pro}/invoices?limit=2`, { auth: "operator" });
    expect(page.body.data).toHaveLength(2);
    const older = await t.call("GET", `/v1/orgs/${pro}/invoices?before=${page.body.data[1].id}`, {
      auth: "operator",
    });
    expect(older.body.data.map((i: { id: string }) => i.id)).not.toContain(page.body.data[1].id);
    expect(older.body.data.length + 2).toBe((await invoicesOf(pro)).length);
  });

  it("bills a trial that ends exactly at its period's end once, in advance with the next period", async () => {
    // August has 31 days: a 31-day trial from August 1 ends on September 1, the period's end.
    await advanceTo(at(7));
    const org = await newOrg("trial_month");
    await advanceTo(at(8, 1, 1));
    const history = await invoicesOf(org);
    expect(history.map((i) => [i.period_start, i.total])).toEqual([[iso(at(7)), "30.00"]]);
    expect(history[0].lines.map((l: Line) => [l.kind, l.period_start, l.amount])).toEqual([
      ["base_fee", iso(at(8)), "30.00"],
    ]);
    const sub = await t.call("GET", `/v1/orgs/${org}/subscription`, { auth: "operator" });
    expect(sub.body.status).toBe("active");
  });

  it("starts subscriptions older than billing at their current period, leaving the past alone", async () => {
    const org = await newOrg("pro");
    await t.database.query(
      sql`update subscriptions set billed_through = null, next_billing_at = null, anchor_at = ${iso(at(0))} where org_id = ${org}`,
    );
    await runBilling(t.deps);
    expect(await invoicesOf(org)).toEqual([]);
    const [sub] = await t.database.query<{ billed_through: string }>(
      sql`select billed_through::text from subscriptions where org_id = ${org}`,
    );
    expect(new Date(sub?.billed_through ?? 0).getTime()).toBe(at(8));
  });
});
