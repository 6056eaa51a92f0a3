import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { appModes, createTestApp, type TestApp } from "./support/app.js";
import { writeCatalog } from "./support/tollgate-process.js";

/**
 * Revenue metrics on a history the test writes day by day on the test clock, with every number
 * worked out by hand from the definitions (docs/dashboard.md).
 */

const catalog = writeCatalog(`
currency: USD
default_plan: free
meters:
  - { key: calls, name: Calls, aggregation: count }
features:
  - { key: calls, type: metered, meter: calls }
plans:
  - { key: free, name: Free, price: { month: "0" }, entitlements: { calls: { limit: 10 } } }
  - { key: pro, name: Pro, price: { month: "10" }, entitlements: { calls: { limit: 1000 } } }
  - { key: biz, name: Biz, price: { month: "40", year: "100" }, entitlements: { calls: { limit: 10000 } } }
`);

const DAY = 86_400_000;
const iso = (ms: number) => new Date(ms).toISOString();

describe.each(appModes)("revenue metrics ($name)", (mode) => {
  let t: TestApp;
  let t0: number;
  const orgs: Record<string, string> = {};
  beforeAll(async () => {
    t = await createTestApp({ ...mode, env: { TOLLGATE_TEST_CLOCK: "1", TOLLGATE_CATALOG: catalog } });
    const op = (method: string, path: string, body?: unknown) =>
      t.call(method, path, { auth: "operator", ...(body !== undefined ? { body } : {}) });
    const advanceTo = async (ms: number) =>
      expect((await op("POST", "/v1/test-clock/advance", { to: iso(ms) })).status).toBe(200);
    t0 = Date.parse((await op("GET", "/v1/test-clock")).body.now);
    // Day 0: four orgs, all free.
    for (const name of ["a", "b", "c", "d"]) orgs[name] = (await op("POST", "/v1/orgs", { name })).body.id;
    // Day 1: A takes Pro (10 a month), B Biz yearly (100 a year: 8.33 a month).
    await advanceTo(t0 + DAY);
    expect(
      (await op("POST", `/v1/orgs/${orgs.a}/subscription`, { plan: "pro", skip_payment: true })).status,
    ).toBe(200);
    expect(
      (
        await op("POST", `/v1/orgs/${orgs.b}/subscription`, {
          plan: "biz",
          interval: "year",
          skip_payment: true,
        })
      ).status,
    ).toBe(200);
    // Day 10: C takes Pro. Day 20: A cancels at once.
    await advanceTo(t0 + 10 * DAY);
    expect(
      (await op("POST", `/v1/orgs/${orgs.c}/subscription`, { plan: "pro", skip_payment: true })).status,
    ).toBe(200);
    await advanceTo(t0 + 20 * DAY);
    const canceled = await op("POST", `/v1/orgs/${orgs.a}/subscription/cancel`, { at_period_end: false });
    expect(canceled.status, canceled.text).toBe(200);
    await advanceTo(t0 + 25 * DAY);
  });
  afterAll(() => t.close());

  const metrics = async (from: number, to: number) => {
    const res = await t.call("GET", `/v1/admin/metrics?from=${iso(from)}&to=${iso(to)}`, {
      auth: "operator",
    });
    expect(res.status, res.text).toBe(200);
    return res.body;
  };

  it("computes MRR, ARR, subscriptions, ARPU and the plan split at the end of a window", async () => {
    const m = await metrics(t0, t0 + 25 * DAY);
    // B (100 / 12) + C (10); A canceled on day 20; D never paid.
    expect(m).toMatchObject({
      currency: "USD",
      mrr: "18.33",
      arr: "220.00",
      active_subscriptions: 2,
      arpu: "9.17",
      by_plan: { biz: { subscriptions: 1, mrr: "8.33" }, pro: { subscriptions: 1, mrr: "10.00" } },
    });
    // Nobody paid at day 0: no churn to speak of, so no LTV; 2 of the 4 free orgs converted.
    expect(m.churn_rate).toBeNull();
    expect(m.ltv).toBeNull();
    expect(m.conversion_rate).toBe(0.5);
  });

  it("takes the window as a number of days ending at the server's now (its test clock here)", async () => {
    const byDays = await t.call("GET", "/v1/admin/metrics?days=25", { auth: "operator" });
    expect(byDays.status, byDays.text).toBe(200);
    expect(byDays.body).toEqual(await metrics(t0, t0 + 25 * DAY));
    const both = await t.call("GET", `/v1/admin/metrics?days=5&from=${iso(t0)}`, { auth: "operator" });
    expect(both.status).toBe(400);
    expect(both.body.errors[0].field).toBe("days");
    expect((await t.call("GET", "/v1/admin/metrics?days=0", { auth: "operator" })).status).toBe(400);
  });

  it("computes churn, and LTV from it, over a window that starts with paying orgs", async () => {
    // Day 5: A and B pay. Day 25: B still does, A does not; C converted, D did not.
    const m = await metrics(t0 + 5 * DAY, t0 + 25 * DAY);
    expect(m.churn_rate).toBe(0.5);
    expect(m.conversion_rate).toBe(0.5);
    // Monthly churn: 0.5 over 20 days is 0.75 a month; LTV = ARPU 9.1666… ÷ 0.75.
    expect(m.ltv).toBe("12.22");
  });

  it("answers for any past date, and draws MRR over time", async () => {
    expect((await metrics(t0 - DAY, t0 + 2 * DAY)).mrr).toBe("18.33"); // A 10 + B 8.33
    expect((await metrics(t0, t0 + 15 * DAY)).mrr).toBe("28.33"); // A, B, C
    const m = await metrics(t0 - 40 * DAY, t0 + 25 * DAY);
    expect(m.series[0]).toMatchObject({ mrr: "0.00", active_subscriptions: 0 });
    expect(m.series.at(-1)).toMatchObject({ at: iso(t0 + 25 * DAY), mrr: "18.33", active_subscriptions: 2 });
    // Daily points: the upgrades of day 1 and 10 and the cancellation of day 20 show as steps.
    const at = (day: number) =>
      m.series.find(
        (p: { at: string }) =>
          p.at.slice(0, 10) === iso(t0 + day * DAY).slice(0, 10) && Date.parse(p.at) > t0 + (day - 1) * DAY,
      )?.mrr;
    expect([at(2), at(11), at(21)]).toEqual(["18.33", "28.33", "18.33"]);
  });

  it("counts an org deleted while paying as churned, and no longer as a candidate", async () => {
    const op = (method: string, path: string, body?: unknown) =>
      t.call(method, path, { auth: "operator", ...(body !== undefined ? { body } : {}) });
    const advanceTo = async (ms: number) =>
      expect((await op("POST", "/v1/test-clock/advance", { to: iso(ms) })).status).toBe(200);
    await advanceTo(t0 + 26 * DAY);
    const e = (await op("POST", "/v1/orgs", { name: "e" })).body.id;
    expect((await op("POST", `/v1/orgs/${e}/subscription`, { plan: "pro", skip_payment: true })).status).toBe(
      200,
    );
    await advanceTo(t0 + 27 * DAY);
    expect((await op("DELETE", `/v1/orgs/${e}`)).status).toBe(204);
    await advanceTo(t0 + 28 * DAY);
    const m = await metrics(t0 + 26.5 * DAY, t0 + 28 * DAY);
    // Paying at 26.5: B, C, E. At 28: B and C — E's deletion canceled its subscription.
    expect(m).toMatchObject({ mrr: "18.33", active_subscriptions: 2 });
    expect(m.churn_rate).toBe(0.3333);
    // Candidates: A and D (not paying, not deleted); neither converted.
    expect(m.conversion_rate).toBe(0);
  });

  it("is for the operator and platform admins, with a sane window", async () => {
    expect((await t.call("GET", "/v1/admin/metrics")).status).toBe(401);
    const user = await t.call("POST", "/v1/auth/register", {
      body: { email: "someone@example.com", password: "correct horse battery staple", name: "S" },
    });
    expect((await t.call("GET", "/v1/admin/metrics", { auth: user.body.access_token })).status).toBe(403);
    const backwards = await t.call("GET", `/v1/admin/metrics?from=${iso(t0 + DAY)}&to=${iso(t0)}`, {
      auth: "operator",
    });
    expect(backwards.status).toBe(400);
  });
});
