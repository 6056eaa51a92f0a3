import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { appModes, createTestApp, type TestApp } from "./support/app.js";
import { writeCatalog } from "./support/tollgate-process.js";

/**
 * The local provider's customer portal: `POST /v1/orgs/:org/portal` hands out a link to a test-mode
 * page where a past_due customer sees the open invoice, is refused a declining card, saves a good one
 * and pays — and the subscription is active again. Links expire after an hour, name nothing else,
 * and only the org's billing managers can open one.
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
  - { key: pro, name: Pro, price: { month: "20" }, entitlements: { calls: { limit: 1000 } } }
`);

const iso = (ms: number) => new Date(ms).toISOString();
const form = (body: string) => ({
  body,
  headers: { "content-type": "application/x-www-form-urlencoded", accept: "text/html" },
});

describe.each(appModes)("the local customer portal ($name)", (mode) => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ ...mode, env: { TOLLGATE_TEST_CLOCK: "1", TOLLGATE_CATALOG: catalogFile } });
  });
  afterAll(() => t.close());

  const op = (method: string, path: string, body?: unknown) =>
    t.call(method, path, { auth: "operator", ...(body !== undefined ? { body } : {}) });
  const advanceTo = async (ms: number) => {
    const res = await op("POST", "/v1/test-clock/advance", { to: iso(ms) });
    expect(res.status, res.text).toBe(200);
  };
  async function signUp(email: string) {
    const res = await t.call("POST", "/v1/auth/register", {
      body: { email, password: "correct horse battery staple", name: "Ada" },
    });
    expect(res.status, res.text).toBe(201);
    return { org: res.body.org.id as string, token: res.body.access_token as string };
  }

  it("lets a past_due customer replace a declined card and pay the open invoice", async () => {
    const { org } = await signUp("portal@example.com");
    expect(
      (await op("PUT", `/v1/orgs/${org}/payment-method`, { card_number: "4242424242424242" })).status,
    ).toBe(200);
    const pro = await op("POST", `/v1/orgs/${org}/subscription`, { plan: "pro" });
    expect(pro.body, pro.text).toMatchObject({ plan: "pro", payment: "paid" });
    expect(
      (await op("PUT", `/v1/orgs/${org}/payment-method`, { card_number: "4000000000000002" })).status,
    ).toBe(200);
    await advanceTo(Date.parse(pro.body.current_period_end));
    expect((await op("GET", `/v1/orgs/${org}/subscription`)).body.status).toBe("past_due");

    // (A month on the test clock expires the sign-up's token: the operator opens it, as a backend would.)
    const opened = await op("POST", `/v1/orgs/${org}/portal`, {
      return_url: "https://app.example.com/settings/billing",
    });
    expect(opened.status, opened.text).toBe(200);
    expect(opened.body.url).toMatch(/\/portal\/bps_[0-9a-z]{32}$/);
    const path = new URL(opened.body.url).pathname;

    const page = await t.call("GET", path, { headers: { accept: "text/html" } });
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toContain("text/html");
    expect(page.headers.get("cache-control")).toBe("no-store");
    expect(page.text).toContain("Pro (monthly)");
    expect(page.text).toContain("past due");
    expect(page.text).toContain("visa ending in 0002");
    expect(page.text).toContain("USD 20.00");
    expect(page.text).toContain("Pay now");
    expect(page.text).toContain('href="https://app.example.com/settings/billing"');

    // A declining card is not saved, as on Stripe; an unknown one is a 400 that names the test cards.
    const declined = await t.call("POST", `${path}/card`, form("card_number=4000+0000+0000+0002"));
    expect(declined.status).toBe(402);
    expect(declined.text).toContain("declined");
    const unknown = await t.call("POST", `${path}/card`, form("card_number=1234"));
    expect(unknown.status).toBe(400);
    expect(unknown.text).toContain("4242 4242 4242 4242");

    const saved = await t.call("POST", `${path}/card`, form("card_number=4242+4242+4242+4242"));
    expect(saved.status, saved.text).toBe(200);
    expect(saved.text).toContain("visa ending in 4242");
    expect((await op("GET", `/v1/orgs/${org}/subscription`)).body.status).toBe("past_due");

    const [invoice] = (await op("GET", `/v1/orgs/${org}/invoices`)).body.data;
    expect(invoice).toMatchObject({ status: "finalized", amount_due: "20.00" });
    const paid = await t.call("POST", `${path}/invoices/${invoice.id}/pay`, form(""));
    expect(paid.status, paid.text).toBe(200);
    expect(paid.text).toContain(`Invoice ${invoice.number} is paid.`);
    expect((await op("GET", `/v1/orgs/${org}/invoices/${invoice.id}`)).body.status).toBe("paid");
    expect((await op("GET", `/v1/orgs/${org}/subscription`)).body.status).toBe("active");
    // Paying again charges nothing.
    const again = await t.call("POST", `${path}/invoices/${invoice.id}/pay`, form(""));
    expect(again.text).toContain("has nothing to pay");
    const payments = await t.database.db.query.payments.findMany();
    expect(payments.filter((p) => p.invoiceId === invoice.id && p.status === "succeeded")).toHaveLength(1);

    // The link works for an hour.
    await advanceTo(t.deps.clock.nowMs() + 3_600_000);
    const expired = await t.call("GET", path, { headers: { accept: "text/html" } });
    expect(expired.status).toBe(404);
    expect(expired.text).toContain("expired");
  });

  it("opens only for the org's billing managers, and a link names only its own org's invoices", async () => {
    const a = await signUp("portal-a@example.com");
    const b = await signUp("portal-b@example.com");
    const foreign = await t.call("POST", `/v1/orgs/${a.org}/portal`, { auth: b.token, body: {} });
    expect([403, 404]).toContain(foreign.status);
    expect(foreign.headers.get("content-type")).toContain("application/problem+json");
    const badUrl = await t.call("POST", `/v1/orgs/${a.org}/portal`, {
      auth: a.token,
      body: { return_url: "javascript:alert(1)" },
    });
    expect(badUrl.status).toBe(400);

    // B's portal cannot pay (or even see) A's invoice.
    expect(
      (await op("PUT", `/v1/orgs/${a.org}/payment-method`, { card_number: "4242424242424242" })).status,
    ).toBe(200);
    await op("POST", `/v1/orgs/${a.org}/subscription`, { plan: "pro" });
    const [invoiceOfA] = (await op("GET", `/v1/orgs/${a.org}/invoices`)).body.data;
    const portalB = await t.call("POST", `/v1/orgs/${b.org}/portal`, { auth: b.token, body: {} });
    const pathB = new URL(portalB.body.url).pathname;
    const steal = await t.call("POST", `${pathB}/invoices/${invoiceOfA.id}/pay`, form(""));
    expect(steal.status).toBe(404);
    expect((await t.call("GET", pathB, { headers: { accept: "text/html" } })).text).not.toContain(
      invoiceOfA.id,
    );

    for (const bad of ["/portal/bps_00000000000000000000000000000000", "/portal/nonsense", "/portal/chk_x"]) {
      const res = await t.call("GET", bad, { headers: { accept: "text/html" } });
      expect(res.status, bad).toBe(404);
    }
  });
});
