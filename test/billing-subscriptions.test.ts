import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { appModes, createTestApp, type TestApp } from "./support/app.js";
import { writeCatalog } from "./support/tollgate-process.js";

/**
 * A customer's billing journey over HTTP on the test clock, in every storage mode: sign up on free,
 * upgrade mid-period through the test-mode checkout (a declined card changes nothing), upgrade again
 * with the card on file (proration lines exact, the preview equal to what posts), a month of metered
 * use closed to the cent, a failed renewal and its recovery, a downgrade at the period end, a
 * cancellation; and monthly → annual, which restarts the periods.
 */

const catalogFile = writeCatalog(`
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
  - key: basic
    name: Basic
    price: { month: "10", year: "100" }
    entitlements: { api_calls: { limit: 1000 } }
  - key: pro
    name: Pro
    price: { month: "20", year: "200" }
    entitlements: { api_calls: { limit: null } }
    charges:
      - { meter: api_calls, model: standard, unit_amount: "0.01" }
  - key: team
    name: Team
    price: { month: "30" }
    trial_days: 14
    entitlements: { api_calls: { limit: 5000 } }
`);

const iso = (ms: number) => new Date(ms).toISOString();
type Line = { kind: string; amount: string; quantity: string | null; details?: unknown };
const amounts = (lines: Line[]) => lines.map((l) => [l.kind, l.amount]);

describe.each(appModes)("subscription changes and payments ($name)", (mode) => {
  let t: TestApp;
  let year: number;
  const at = (month: number, day = 1, hour = 0) => Date.UTC(year, month, day, hour);

  beforeAll(async () => {
    t = await createTestApp({ ...mode, env: { TOLLGATE_TEST_CLOCK: "1", TOLLGATE_CATALOG: catalogFile } });
    year = new Date(t.deps.clock.nowMs()).getUTCFullYear() + 1;
    await advanceTo(at(0));
  });
  afterAll(() => t.close());

  async function advanceTo(ms: number) {
    const res = await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: { to: iso(ms) } });
    expect(res.status, res.text).toBe(200);
  }
  const PASSWORD = "correct horse battery staple";
  /** Access tokens expire as the clock moves months: a 401 signs in again and retries once. */
  const tokens = new Map<string, string>();
  async function signUp(email: string) {
    const res = await t.call("POST", "/v1/auth/register", {
      body: { email, password: PASSWORD, name: "Ada" },
    });
    expect(res.status, res.text).toBe(201);
    tokens.set(email, res.body.access_token);
    return { token: email, org: res.body.org.id as string };
  }
  async function request(email: string, method: string, path: string, body?: unknown) {
    const send = () =>
      t.call(method, path, { auth: tokens.get(email), ...(body !== undefined ? { body } : {}) });
    let res = await send();
    if (res.status === 401) {
      const login = await t.call("POST", "/v1/auth/login", { body: { email, password: PASSWORD } });
      expect(login.status, login.text).toBe(200);
      tokens.set(email, login.body.access_token);
      res = await send();
    }
    return res;
  }
  const as = (email: string) => ({
    get: (path: string) => request(email, "GET", path),
    post: (path: string, body?: unknown) => request(email, "POST", path, body ?? {}),
    put: (path: string, body: unknown) => request(email, "PUT", path, body),
  });
  const invoicesOf = async (token: string, org: string) => {
    const res = await as(token).get(`/v1/orgs/${org}/invoices`);
    expect(res.status, res.text).toBe(200);
    return [...res.body.data].reverse();
  };
  const stripDetails = (lines: Record<string, unknown>[]) => lines.map(({ details: _d, ...rest }) => rest);

  it("walks a customer from free to paid, through renewals, a failed payment, a downgrade and a cancellation", async () => {
    const { token, org } = await signUp("journey@example.com");
    const me = as(token);
    // Halfway through January: 15.5 of 31 days are left.
    await advanceTo(at(0, 16, 12));

    // 1. Free → Basic: nothing to credit (free), half of Basic's month to pay.
    const preview = await me.post(`/v1/orgs/${org}/subscription/preview`, { plan: "basic" });
    expect(preview.status, preview.text).toBe(200);
    expect(preview.body).toMatchObject({ kind: "upgrade", timing: "now", amount_due: "5.00" });
    expect(amounts(preview.body.lines)).toEqual([["proration_charge", "5.00"]]);

    const change = await me.post(`/v1/orgs/${org}/subscription`, { plan: "basic" });
    expect(change.status, change.text).toBe(200);
    expect(change.body.checkout_url).toMatch(/\/checkout\/chk_[0-9a-z]{32}$/);
    const checkoutPath = new URL(change.body.checkout_url).pathname;

    const page = await t.call("GET", checkoutPath, { headers: { accept: "text/html" } });
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toContain("text/html");
    expect(page.text).toContain("Pay USD 5.00");
    expect(page.text).toContain("Test mode");

    const declined = await t.call("POST", checkoutPath, { body: { card_number: "4000 0000 0000 0002" } });
    expect(declined.status).toBe(402);
    expect(declined.body.code).toBe("payment_required");
    expect((await me.get(`/v1/orgs/${org}/subscription`)).body.plan).toBe("free");
    const unknownCard = await t.call("POST", checkoutPath, { body: { card_number: "4111111111111111" } });
    expect(unknownCard.status).toBe(400);

    const paid = await t.call("POST", checkoutPath, {
      body: "card_number=4242+4242+4242+4242",
      headers: { "content-type": "application/x-www-form-urlencoded" },
    });
    expect(paid.status, paid.text).toBe(200);
    expect(paid.text).toContain("Payment received");
    const again = await t.call("POST", checkoutPath, { body: { card_number: "4242424242424242" } });
    expect(again.status).toBe(409);

    const basic = await me.get(`/v1/orgs/${org}/subscription`);
    expect(basic.body).toMatchObject({ plan: "basic", status: "active", current_period_start: iso(at(0)) });
    let history = await invoicesOf(token, org);
    expect(history).toHaveLength(1);
    expect(history[0]).toMatchObject({
      reason: "subscription_update",
      status: "paid",
      total: "5.00",
      amount_paid: "5.00",
    });
    expect(stripDetails(history[0].lines)).toEqual(stripDetails(preview.body.lines));

    // 2. Basic → Pro on January 24 with the card on file: 8 of 31 days left.
    await advanceTo(at(0, 24));
    const upgrade = await me.post(`/v1/orgs/${org}/subscription/preview`, { plan: "pro" });
    // −10 × 8/31 = −2.580645… and +20 × 8/31 = 5.161290…, each rounded on its own line.
    expect(amounts(upgrade.body.lines)).toEqual([
      ["proration_credit", "-2.58"],
      ["proration_charge", "5.16"],
    ]);
    expect(upgrade.body.lines[0].exact_amount).toMatch(/^-2\.580645161290322580645/);
    expect(upgrade.body.amount_due).toBe("2.58");
    const upgraded = await me.post(`/v1/orgs/${org}/subscription`, { plan: "pro" });
    expect(upgraded.status, upgraded.text).toBe(200);
    expect(upgraded.body).toMatchObject({ plan: "pro", payment: "paid" });
    history = await invoicesOf(token, org);
    expect(history[1]).toMatchObject({ status: "paid", total: "2.58" });
    expect(stripDetails(history[1].lines)).toEqual(stripDetails(upgrade.body.lines));
    expect((await me.post(`/v1/orgs/${org}/subscription`, { plan: "pro" })).status).toBe(409);

    // 3. A month of metered use, closed to the cent: 1,234 calls at 0.01 and February's base fee.
    const used = await t.call("POST", "/v1/check", {
      auth: "operator",
      body: { org_id: org, feature: "api_calls", amount: 1234 },
    });
    expect(used.body.allowed, used.text).toBe(true);
    await advanceTo(at(1));
    history = await invoicesOf(token, org);
    expect(history[2]).toMatchObject({ reason: "subscription_cycle", status: "paid", total: "32.34" });
    expect(amounts(history[2].lines)).toEqual([
      ["usage", "12.34"],
      ["base_fee", "20.00"],
    ]);

    // 4. A failed renewal: the card on file is declined, the subscription goes past_due.
    expect((await me.put(`/v1/orgs/${org}/payment-method`, { card_number: "4000000000000002" })).status).toBe(
      200,
    );
    await advanceTo(at(2));
    history = await invoicesOf(token, org);
    const failed = history[3];
    expect(failed).toMatchObject({ status: "finalized", total: "20.00", amount_due: "20.00" });
    expect((await me.get(`/v1/orgs/${org}/subscription`)).body.status).toBe("past_due");
    const entitlements = await t.call("GET", `/v1/orgs/${org}/entitlements`, { auth: "operator" });
    expect(entitlements.status).toBe(200);
    const retryDeclined = await me.post(`/v1/orgs/${org}/invoices/${failed.id}/pay`);
    expect(retryDeclined.status).toBe(402);

    // Recovery: a good card, the invoice paid, the subscription active again.
    expect(
      (await me.put(`/v1/orgs/${org}/payment-method`, { card_number: "4242424242424242" })).body.last4,
    ).toBe("4242");
    const recovered = await me.post(`/v1/orgs/${org}/invoices/${failed.id}/pay`);
    expect(recovered.status, recovered.text).toBe(200);
    expect(recovered.body).toMatchObject({ status: "paid", amount_paid: "20.00" });
    expect((await me.get(`/v1/orgs/${org}/subscription`)).body.status).toBe("active");
    expect((await me.post(`/v1/orgs/${org}/invoices/${failed.id}/pay`)).status).toBe(409);

    // 5. Pro → Basic waits for the period end; March closes on Pro and bills April on Basic.
    const downgrade = await me.post(`/v1/orgs/${org}/subscription/preview`, { plan: "basic" });
    expect(downgrade.body).toMatchObject({
      kind: "downgrade",
      timing: "period_end",
      effective_at: iso(at(3)),
      lines: [],
    });
    const scheduled = await me.post(`/v1/orgs/${org}/subscription`, { plan: "basic" });
    expect(scheduled.body).toMatchObject({
      plan: "pro",
      pending_change: { plan: "basic", interval: "month", effective_at: iso(at(3)) },
    });
    const upcoming = await me.get(`/v1/orgs/${org}/invoices/upcoming`);
    expect(amounts(upcoming.body.lines)).toEqual([
      ["usage", "0.00"],
      ["base_fee", "10.00"],
    ]);
    await advanceTo(at(3));
    history = await invoicesOf(token, org);
    expect(history[4]).toMatchObject({ plan: "pro", total: "10.00", status: "paid" });
    expect(stripDetails(history[4].lines)).toEqual(stripDetails(upcoming.body.lines));
    expect((await me.get(`/v1/orgs/${org}/subscription`)).body).toMatchObject({
      plan: "basic",
      pending_change: null,
    });

    // 6. Cancel at the period end, resume, cancel again: April is the last period.
    const cancel = await me.post(`/v1/orgs/${org}/subscription/cancel`, {});
    expect(cancel.body).toMatchObject({ status: "active", cancel_at_period_end: true });
    expect((await me.post(`/v1/orgs/${org}/subscription/resume`)).body.cancel_at_period_end).toBe(false);
    await me.post(`/v1/orgs/${org}/subscription/cancel`, { at_period_end: true });
    expect(amounts((await me.get(`/v1/orgs/${org}/invoices/upcoming`)).body.lines)).toEqual([]);
    await advanceTo(at(4, 2));
    expect((await me.get(`/v1/orgs/${org}/subscription`)).body).toMatchObject({
      status: "canceled",
      canceled_at: iso(at(4)),
    });
    expect(await invoicesOf(token, org)).toHaveLength(5);
    // Canceled: the org keeps the free plan's grants.
    const check = await t.call("POST", "/v1/check", {
      auth: "operator",
      body: { org_id: org, feature: "api_calls", consume: false },
    });
    expect(check.body).toMatchObject({ allowed: true, limit: 100 });
    expect((await me.post(`/v1/orgs/${org}/subscription/resume`)).status).toBe(409);

    // Every payment was one charge per invoice.
    const paidTotals = (await invoicesOf(token, org)).map((i) => [i.status, i.amount_paid]);
    expect(paidTotals).toEqual([
      ["paid", "5.00"],
      ["paid", "2.58"],
      ["paid", "32.34"],
      ["paid", "20.00"],
      ["paid", "10.00"],
    ]);
  });

  it("monthly → annual applies now: the month's unused fee is credited and the year starts", async () => {
    const { token, org } = await signUp("annual@example.com");
    const me = as(token);
    expect((await me.put(`/v1/orgs/${org}/payment-method`, { card_number: "4242424242424242" })).status).toBe(
      200,
    );
    // The org's month started now (at its sign-up); move to an exact half of it.
    const sub = (await me.get(`/v1/orgs/${org}/subscription`)).body;
    const start = Date.parse(sub.current_period_start);
    const end = Date.parse(sub.current_period_end);
    const onBasic = await me.post(`/v1/orgs/${org}/subscription`, { plan: "basic" });
    expect(onBasic.body).toMatchObject({ plan: "basic", payment: "paid" });
    const half = start + (end - start) / 2;
    await advanceTo(half);

    const preview = await me.post(`/v1/orgs/${org}/subscription/preview`, { plan: "pro", interval: "year" });
    expect(preview.body).toMatchObject({ kind: "interval_change", timing: "now" });
    expect(amounts(preview.body.lines)).toEqual([
      ["proration_credit", "-5.00"],
      ["proration_charge", "200.00"],
    ]);
    const changed = await me.post(`/v1/orgs/${org}/subscription`, { plan: "pro", interval: "year" });
    expect(changed.body).toMatchObject({
      plan: "pro",
      interval: "year",
      current_period_start: iso(half),
      payment: "paid",
    });
    expect(Date.parse(changed.body.current_period_end) - half).toBeGreaterThan(364 * 86_400_000);

    // Annual → monthly is a downgrade: at the end of the year.
    const back = await me.post(`/v1/orgs/${org}/subscription/preview`, { plan: "pro", interval: "month" });
    expect(back.body).toMatchObject({
      kind: "downgrade",
      timing: "period_end",
      effective_at: changed.body.current_period_end,
    });
  });

  it("starts a plan's trial without charging, and charges the rest of the period when it ends", async () => {
    const withCard = await signUp("trial@example.com");
    const noCard = await signUp("trial-nocard@example.com");
    expect(
      (
        await as(withCard.token).put(`/v1/orgs/${withCard.org}/payment-method`, {
          card_number: "4242424242424242",
        })
      ).status,
    ).toBe(200);
    const startMs = t.deps.clock.nowMs();
    const preview = await as(withCard.token).post(`/v1/orgs/${withCard.org}/subscription/preview`, {
      plan: "team",
    });
    expect(preview.body).toMatchObject({
      trial_ends_at: iso(startMs + 14 * 86_400_000),
      lines: [],
      amount_due: "0.00",
    });
    for (const who of [withCard, noCard]) {
      const res = await as(who.token).post(`/v1/orgs/${who.org}/subscription`, { plan: "team" });
      expect(res.body, `${who.token}: ${res.text}`).toMatchObject({
        plan: "team",
        status: "trialing",
        invoice_id: null,
      });
    }
    const sub = (await as(withCard.token).get(`/v1/orgs/${withCard.org}/subscription`)).body;
    const period = { start: Date.parse(sub.current_period_start), end: Date.parse(sub.current_period_end) };
    const trialEnd = Date.parse(sub.trial_ends_at);

    await advanceTo(trialEnd + 3_600_000);
    const [first] = await invoicesOf(withCard.token, withCard.org);
    // 30 × the share of the period left when the trial ended, rounded half away from zero.
    const share = (period.end - trialEnd) / (period.end - period.start);
    const expected = (Math.round(30 * share * 100 + 1e-9) / 100).toFixed(2);
    expect(first).toMatchObject({ status: "paid", total: expected });
    expect(first.lines[0]).toMatchObject({
      kind: "base_fee",
      period_start: iso(trialEnd),
      period_end: iso(period.end),
    });
    expect((await as(withCard.token).get(`/v1/orgs/${withCard.org}/subscription`)).body.status).toBe(
      "active",
    );

    const [unpaid] = await invoicesOf(noCard.token, noCard.org);
    expect(unpaid).toMatchObject({ status: "finalized" });
    expect((await as(noCard.token).get(`/v1/orgs/${noCard.org}/subscription`)).body.status).toBe("past_due");
    // Nothing billed twice when the period closes: the next invoice is the next period's fee.
    await advanceTo(period.end + 3_600_000);
    const history = await invoicesOf(withCard.token, withCard.org);
    expect(history.map((i) => i.total)).toEqual([expected, "30.00"]);
  });

  it("credits only the paid part of this period: cancel now, back on free, upgrade is charged in full", async () => {
    const { token, org } = await signUp("loop@example.com");
    const me = as(token);
    expect((await me.put(`/v1/orgs/${org}/payment-method`, { card_number: "4242424242424242" })).status).toBe(
      200,
    );
    // Basic from the first instant of the org's period: a whole month, paid.
    const first = await me.post(`/v1/orgs/${org}/subscription`, { plan: "basic" });
    expect(first.body).toMatchObject({ plan: "basic", payment: "paid" });
    await advanceTo(t.deps.clock.nowMs() + 9 * 86_400_000);
    expect((await me.post(`/v1/orgs/${org}/subscription/cancel`, { at_period_end: false })).body.status).toBe(
      "canceled",
    );
    const free = await me.post(`/v1/orgs/${org}/subscription`, { plan: "free" });
    expect(free.body).toMatchObject({ plan: "free", status: "active" });
    // The month paid before the cancellation is not credited against the new period.
    const again = await me.post(`/v1/orgs/${org}/subscription/preview`, { plan: "basic" });
    expect(amounts(again.body.lines)).toEqual([["proration_charge", "10.00"]]);
  });

  it("refuses an upgrade the card on file declines, and changes nothing", async () => {
    const { token, org } = await signUp("declined@example.com");
    const me = as(token);
    expect((await me.put(`/v1/orgs/${org}/payment-method`, { card_number: "4000000000000002" })).status).toBe(
      200,
    );
    const res = await me.post(`/v1/orgs/${org}/subscription`, { plan: "pro" });
    expect(res.status).toBe(402);
    expect(res.body.code).toBe("payment_required");
    expect((await me.get(`/v1/orgs/${org}/subscription`)).body).toMatchObject({
      plan: "free",
      status: "active",
    });
    expect(await invoicesOf(token, org)).toEqual([]);
  });

  it("closes an ended period before pricing a change made before the run got to it", async () => {
    const { token, org } = await signUp("boundary@example.com");
    const me = as(token);
    expect((await me.put(`/v1/orgs/${org}/payment-method`, { card_number: "4242424242424242" })).status).toBe(
      200,
    );
    expect((await me.post(`/v1/orgs/${org}/subscription`, { plan: "basic" })).body.payment).toBe("paid");
    const end = Date.parse((await me.get(`/v1/orgs/${org}/subscription`)).body.current_period_end);
    // 30 s past the period's end, before any run (the clock moved without running anything).
    t.deps.testClock?.clock.moveTo(end + 30_000);
    const preview = await me.post(`/v1/orgs/${org}/subscription/preview`, { plan: "pro" });
    // The period closed first (the next month's 10.00 paid in advance), so the upgrade credits it.
    expect(amounts(preview.body.lines)).toEqual([
      ["proration_credit", "-10.00"],
      ["proration_charge", "20.00"],
    ]);
    const history = await invoicesOf(token, org);
    expect(history.map((i) => [i.reason, i.total, i.status])).toEqual([
      ["subscription_update", "10.00", "paid"],
      ["subscription_cycle", "10.00", "paid"],
    ]);
  });

  it("applies one of several concurrent identical changes, with one invoice and one charge", async () => {
    const { token, org } = await signUp("race@example.com");
    const me = as(token);
    expect((await me.put(`/v1/orgs/${org}/payment-method`, { card_number: "4242424242424242" })).status).toBe(
      200,
    );
    await advanceTo(t.deps.clock.nowMs() + 86_400_000);
    const answers = await Promise.all(
      Array.from({ length: 4 }, () => me.post(`/v1/orgs/${org}/subscription`, { plan: "pro" })),
    );
    const statuses = answers.map((a) => a.status).sort();
    expect(statuses).toEqual([200, 409, 409, 409]);
    const history = await invoicesOf(token, org);
    expect(history).toHaveLength(1);
    expect(history[0].status).toBe("paid");
  });

  it("keeps changes to those allowed: the operator's comp needs the operator, bad plans are 400", async () => {
    const { token, org } = await signUp("rules@example.com");
    const comp = await as(token).post(`/v1/orgs/${org}/subscription`, { plan: "pro", skip_payment: true });
    expect(comp.status).toBe(403);
    const unknown = await as(token).post(`/v1/orgs/${org}/subscription/preview`, { plan: "platinum" });
    expect(unknown.status).toBe(400);
    expect(unknown.body.errors[0]).toMatchObject({ field: "plan", code: "unknown_plan" });
    const other = await signUp("other@example.com");
    expect((await as(other.token).post(`/v1/orgs/${org}/subscription/preview`, { plan: "pro" })).status).toBe(
      404,
    );
    expect(
      (await as(other.token).put(`/v1/orgs/${org}/payment-method`, { card_number: "4242424242424242" }))
        .status,
    ).toBe(404);
    const missing = await t.call("GET", "/checkout/chk_00000000000000000000000000");
    expect(missing.status).toBe(404);
  });
});
