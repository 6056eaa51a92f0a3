import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { appModes, createTestApp, type TestApp } from "./support/app.js";
import { writeCatalog } from "./support/tollgate-process.js";

/**
 * Coupons and credits over HTTP, exactly as the catalog spec orders them: coupons one after another
 * in the order applied, each on what is left; a once fixed coupon keeps its remainder; repeating ones
 * stop after their periods; redemptions never pass their maximum; credits after coupons, oldest
 * expiring first, never below zero, expired by a ledger entry; a negative subtotal becomes credit.
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
  - { key: hundred, name: Hundred, price: { month: "100" }, entitlements: { calls: { limit: null } } }
  - { key: thirty, name: Thirty, price: { month: "30" }, entitlements: { calls: { limit: 1000 } } }
  - key: flex
    name: Flex
    price: { month: "40" }
    downgrade: immediate
    entitlements: { calls: { limit: 5000 } }
`);

const iso = (ms: number) => new Date(ms).toISOString();
const day = 86_400_000;

describe.each(appModes)("coupons and credits ($name)", (mode) => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ ...mode, env: { TOLLGATE_TEST_CLOCK: "1", TOLLGATE_CATALOG: catalogFile } });
  });
  afterAll(() => t.close());

  const op = (method: string, path: string, body?: unknown) =>
    t.call(method, path, { auth: "operator", ...(body !== undefined ? { body } : {}) });
  async function advanceBy(ms: number) {
    const res = await op("POST", "/v1/test-clock/advance", { to: iso(t.deps.clock.nowMs() + ms) });
    expect(res.status, res.text).toBe(200);
  }
  async function coupon(body: Record<string, unknown>) {
    const res = await op("POST", "/v1/admin/coupons", body);
    expect(res.status, res.text).toBe(201);
    return res.body.code as string;
  }
  let sequence = 0;
  async function payingOrg() {
    const res = await op("POST", "/v1/orgs", { name: `Org ${sequence++}` });
    expect(res.status, res.text).toBe(201);
    const org = res.body.id as string;
    expect(
      (await op("PUT", `/v1/orgs/${org}/payment-method`, { card_number: "4242424242424242" })).status,
    ).toBe(200);
    return org;
  }
  const redeem = (org: string, code: string) => op("POST", `/v1/orgs/${org}/coupons`, { code });
  async function invoices(org: string) {
    const res = await op("GET", `/v1/orgs/${org}/invoices`);
    expect(res.status, res.text).toBe(200);
    return [...res.body.data].reverse();
  }
  const month = async (org: string) => {
    const sub = (await op("GET", `/v1/orgs/${org}/subscription`)).body;
    return Date.parse(sub.current_period_end) - t.deps.clock.nowMs();
  };

  it("applies coupons one after another on what is left: fixed 10 then 20% of 100 is 10 + 18", async () => {
    const fixed = await coupon({
      code: `TEN${sequence}`,
      type: "fixed_amount",
      amount_off: "10",
      duration: "forever",
    });
    const pct = await coupon({
      code: `PCT${sequence}`,
      type: "percentage",
      percent_off: "20",
      duration: "forever",
    });
    const first = await payingOrg();
    expect((await redeem(first, fixed.toLowerCase())).status).toBe(201);
    expect((await redeem(first, pct)).status).toBe(201);
    const preview = await op("POST", `/v1/orgs/${first}/subscription/preview`, { plan: "hundred" });
    expect(preview.body).toMatchObject({
      subtotal: "100.00",
      discounts: [
        { code: fixed, amount: "10.00" },
        { code: pct, amount: "18.00" },
      ],
      discount: "28.00",
      total: "72.00",
      amount_due: "72.00",
    });
    const changed = await op("POST", `/v1/orgs/${first}/subscription`, { plan: "hundred" });
    expect(changed.body).toMatchObject({ plan: "hundred", payment: "paid" });
    const [invoice] = await invoices(first);
    expect(invoice).toMatchObject({
      subtotal: "100.00",
      discount: "28.00",
      total: "72.00",
      amount_paid: "72.00",
    });
    expect(invoice.discounts).toEqual(preview.body.discounts);

    // The other order: 20% of 100, then 10 of what is left.
    const second = await payingOrg();
    await redeem(second, pct);
    await redeem(second, fixed);
    const reversed = await op("POST", `/v1/orgs/${second}/subscription/preview`, { plan: "hundred" });
    expect(reversed.body.discounts.map((d: { amount: string }) => d.amount)).toEqual(["20.00", "10.00"]);
    expect(reversed.body.total).toBe("70.00");
  });

  it("keeps a once fixed coupon's remainder for later invoices, and stops a repeating one after its periods", async () => {
    const once = await coupon({
      code: `ONCE${sequence}`,
      type: "fixed_amount",
      amount_off: "50",
      duration: "once",
    });
    const org = await payingOrg();
    await redeem(org, once);
    await op("POST", `/v1/orgs/${org}/subscription`, { plan: "thirty" });
    await advanceBy((await month(org)) + 1000);
    await advanceBy((await month(org)) + 1000);
    const totals = (await invoices(org)).map((i) => [i.subtotal, i.discount, i.total]);
    expect(totals).toEqual([
      ["30.00", "30.00", "0.00"],
      ["30.00", "20.00", "10.00"],
      ["30.00", "0.00", "30.00"],
    ]);
    const applied = (await op("GET", `/v1/orgs/${org}/coupons`)).body.data;
    expect(applied[0]).toMatchObject({ status: "exhausted", remaining_amount: "0.00" });

    const twice = await coupon({
      code: `HALF${sequence}`,
      type: "percentage",
      percent_off: "50",
      duration: "repeating",
      duration_periods: 2,
    });
    const other = await payingOrg();
    await redeem(other, twice);
    await op("POST", `/v1/orgs/${other}/subscription`, { plan: "thirty" });
    await advanceBy((await month(other)) + 1000);
    await advanceBy((await month(other)) + 1000);
    expect((await invoices(other)).map((i) => i.total)).toEqual(["15.00", "15.00", "30.00"]);
  });

  it("redeems a coupon given with a plan change, and discounts that change's invoice", async () => {
    const code = await coupon({
      code: `WELCOME${sequence}`,
      type: "fixed_amount",
      amount_off: "5",
      duration: "forever",
    });
    const org = await payingOrg();
    const changed = await op("POST", `/v1/orgs/${org}/subscription`, { plan: "thirty", coupon: code });
    expect(changed.body).toMatchObject({ plan: "thirty", payment: "paid" });
    const [invoice] = await invoices(org);
    expect(invoice).toMatchObject({
      subtotal: "30.00",
      discounts: [{ code, amount: "5.00" }],
      total: "25.00",
    });
    const bad = await op("POST", `/v1/orgs/${org}/subscription`, { plan: "hundred", coupon: "NOPE" });
    expect(bad.status).toBe(400);
    expect((await op("GET", `/v1/orgs/${org}/subscription`)).body.plan).toBe("thirty");
  });

  it("never redeems past max_redemptions, however many orgs redeem at once; once per org", async () => {
    const code = await coupon({
      code: `FEW${sequence}`,
      type: "percentage",
      percent_off: "5",
      duration: "forever",
      max_redemptions: 3,
    });
    const orgs = await Promise.all(Array.from({ length: 6 }, () => payingOrg()));
    const answers = await Promise.all(orgs.map((org) => redeem(org, code)));
    expect(answers.map((a) => a.status).sort()).toEqual([201, 201, 201, 409, 409, 409]);
    const winner = orgs[answers.findIndex((a) => a.status === 201)] as string;
    expect((await redeem(winner, code)).status).toBe(409);
    const listed = (await op("GET", "/v1/admin/coupons")).body.data.find(
      (c: { code: string }) => c.code === code,
    );
    expect(listed.redemptions).toBe(3);
  });

  it("applies credits after coupons, oldest expiring first, and expires the rest by a ledger entry", async () => {
    const org = await payingOrg();
    const grant = (body: unknown) => op("POST", `/v1/orgs/${org}/credits`, body);
    expect((await grant({ amount: "40", reason: "Goodwill" })).status).toBe(201);
    const soon = await grant({ amount: "25.00", expires_at: iso(t.deps.clock.nowMs() + 10 * day) });
    expect(soon.body.balance).toBe("65.00");
    const later = await grant({ amount: "7", expires_at: iso(t.deps.clock.nowMs() + 20 * day) });
    expect(later.body.balance).toBe("72.00");

    // A 100 plan for a whole month: 25 (expires first), then 7, then 40 — 72 of credit, 28 due.
    const changed = await op("POST", `/v1/orgs/${org}/subscription`, { plan: "hundred" });
    expect(changed.body.payment).toBe("paid");
    const [invoice] = await invoices(org);
    expect(invoice).toMatchObject({
      total: "100.00",
      credits_applied: "72.00",
      amount_due: "28.00",
      amount_paid: "28.00",
    });
    const credits = (await op("GET", `/v1/orgs/${org}/credits`)).body;
    expect(credits.balance).toBe("0.00");
    expect(
      credits.ledger
        .filter((l: { kind: string }) => l.kind === "apply")
        .map((l: { amount: string }) => l.amount)
        .sort(),
    ).toEqual(["-25.00", "-40.00", "-7.00"]);

    const expiring = await grant({ amount: "12.5", expires_at: iso(t.deps.clock.nowMs() + 2 * day) });
    expect(expiring.body.balance).toBe("12.50");
    await advanceBy(3 * day);
    const after = (await op("GET", `/v1/orgs/${org}/credits`)).body;
    expect(after.balance).toBe("0.00");
    expect(after.ledger[0]).toMatchObject({ kind: "expire", amount: "-12.50" });
    // The grant itself is untouched: history is not edited.
    expect(after.grants[0]).toMatchObject({ amount: "12.50", balance: "0.00" });
  });

  it("turns a negative subtotal (an immediate downgrade) into credit for the next invoices", async () => {
    const org = await payingOrg();
    await op("POST", `/v1/orgs/${org}/subscription`, { plan: "flex" });
    const span = await month(org);
    await advanceBy(span / 2);
    const down = await op("POST", `/v1/orgs/${org}/subscription/preview`, { plan: "thirty" });
    expect(down.body).toMatchObject({
      kind: "downgrade",
      timing: "now",
      subtotal: "-5.00",
      total: "0.00",
      amount_due: "0.00",
    });
    const changed = await op("POST", `/v1/orgs/${org}/subscription`, { plan: "thirty" });
    expect(changed.body).toMatchObject({ plan: "thirty" });
    const credits = (await op("GET", `/v1/orgs/${org}/credits`)).body;
    expect(credits).toMatchObject({ balance: "5.00" });
    expect(credits.grants[0]).toMatchObject({ source: "proration", amount: "5.00" });
    await advanceBy(span / 2 + 1000);
    const history = await invoices(org);
    expect(history.at(-1)).toMatchObject({ total: "30.00", credits_applied: "5.00", amount_due: "25.00" });
  });

  it("refuses bad coupons and codes with problem+json", async () => {
    const bad = [
      [{ code: "X", type: "percentage", percent_off: "10", duration: "once" }, "code"],
      [{ code: "NOPCT1", type: "percentage", duration: "once" }, "percent_off"],
      [{ code: "BIG1", type: "percentage", percent_off: "120", duration: "once" }, "percent_off"],
      [
        { code: "MIX1", type: "fixed_amount", amount_off: "5", percent_off: "5", duration: "once" },
        "percent_off",
      ],
      [{ code: "REP1", type: "fixed_amount", amount_off: "5", duration: "repeating" }, "duration_periods"],
      [
        { code: "EUR1", type: "fixed_amount", amount_off: "5", currency: "EUR", duration: "once" },
        "currency",
      ],
    ] as const;
    for (const [body, field] of bad) {
      const res = await op("POST", "/v1/admin/coupons", body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.body.errors, res.text).toContainEqual(expect.objectContaining({ field }));
    }
    const code = await coupon({
      code: `DUP${sequence}`,
      type: "percentage",
      percent_off: "10",
      duration: "once",
    });
    expect(
      (
        await op("POST", "/v1/admin/coupons", {
          code,
          type: "percentage",
          percent_off: "10",
          duration: "once",
        })
      ).status,
    ).toBe(409);
    const org = await payingOrg();
    const unknown = await redeem(org, "NOSUCHCODE");
    expect(unknown.status).toBe(400);
    expect(unknown.body.errors[0]).toMatchObject({ field: "code", code: "unknown_coupon" });
    const expired = await coupon({
      code: `OLD${sequence}`,
      type: "percentage",
      percent_off: "10",
      duration: "once",
      redeem_by: iso(t.deps.clock.nowMs() + day),
    });
    await advanceBy(2 * day);
    expect((await redeem(org, expired)).body.errors[0]).toMatchObject({ code: "coupon_expired" });
    // An org's member without billing:manage cannot redeem; another tenant's org is a 404.
    const user = await t.call("POST", "/v1/auth/register", {
      body: { email: `coupon${sequence}@example.com`, password: "correct horse battery staple", name: "Bo" },
    });
    expect(
      (await t.call("POST", `/v1/orgs/${org}/coupons`, { auth: user.body.access_token, body: { code } }))
        .status,
    ).toBe(404);
    expect(
      (
        await t.call("POST", `/v1/orgs/${org}/credits`, {
          auth: user.body.access_token,
          body: { amount: "5" },
        })
      ).status,
    ).toBe(404);
  });
});
