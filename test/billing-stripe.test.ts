import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { appModes, createTestApp, type TestApp } from "./support/app.js";
import { type StandInEvent, StripeStandIn } from "./support/stripe-standin.js";
import { writeCatalog } from "./support/tollgate-process.js";

/**
 * The billing journey with the `stripe` provider: the official SDK against a local stand-in of
 * Stripe's API, webhooks signed by the SDK's own helper. Tollgate learns of what the customer does on
 * Stripe's pages (Checkout, the portal) only from webhooks, which are delivered shuffled and each
 * more than once — and, at the end, every event ever sent is replayed in a new order: nothing moves,
 * and every invoice was charged exactly once.
 */

const catalogFile = writeCatalog(`
currency: USD
default_plan: free
dunning: { retry_days: [2, 7], final_action: free }
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
    entitlements: { api_calls: { limit: null } }
    charges:
      - { meter: api_calls, model: standard, unit_amount: "0.01" }
`);

const iso = (ms: number) => new Date(ms).toISOString();

/** A seeded shuffle (mulberry32), so a failing order can be replayed from the seed in the message. */
function shuffled<T>(items: readonly T[], seed: number): T[] {
  let a = seed >>> 0;
  const random = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}

/** Both storage modes: the embedded one and the last (Postgres + Redis when they are configured). */
const [embedded] = appModes;
if (!embedded) throw new Error("no app modes");
const modes = [...new Map([embedded, appModes.at(-1) ?? embedded].map((m) => [m.name, m])).values()];

describe.each(modes)("the stripe provider ($name)", (mode) => {
  let t: TestApp;
  let stripe: StripeStandIn;
  let year: number;
  const seed = Number(process.env.TOLLGATE_TEST_SEED ?? Date.now() % 100_000);
  const at = (month: number, day = 1, hour = 0) => Date.UTC(year, month, day, hour);
  /** How many events have been delivered so far: each step delivers what came after. */
  let delivered = 0;

  beforeAll(async () => {
    stripe = await new StripeStandIn().start();
    t = await createTestApp({
      ...mode,
      env: {
        TOLLGATE_TEST_CLOCK: "1",
        TOLLGATE_CATALOG: catalogFile,
        TOLLGATE_BILLING_PROVIDER: "stripe",
        STRIPE_SECRET_KEY: stripe.secretKey,
        STRIPE_WEBHOOK_SECRET: stripe.webhookSecret,
        STRIPE_API_BASE: stripe.url,
      },
    });
    year = new Date(t.deps.clock.nowMs()).getUTCFullYear() + 1;
    await advanceTo(at(0));
  });
  afterAll(async () => {
    await t.close();
    await stripe.stop();
  });

  async function advanceTo(ms: number) {
    const res = await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: { to: iso(ms) } });
    expect(res.status, res.text).toBe(200);
  }
  async function post(event: StandInEvent, options: { timestamp?: number; secret?: string } = {}) {
    const { body, headers } = stripe.signed(event, options);
    return t.call("POST", "/v1/billing/stripe/webhook", { body, headers });
  }
  /** Delivers every event since the last call, shuffled, each twice (Stripe retries and replays). */
  async function deliverNew(label: string) {
    const fresh = stripe.events.slice(delivered);
    delivered = stripe.events.length;
    const order = shuffled([...fresh, ...fresh], seed + delivered);
    for (const event of order) {
      const res = await post(event);
      expect(res.status, `${label} (seed ${seed}) ${event.type}: ${res.text}`).toBe(200);
    }
    return fresh;
  }
  const operator = (method: string, path: string, body?: unknown) =>
    t.call(method, path, { auth: "operator", ...(body !== undefined ? { body } : {}) });
  const invoicesOf = async (org: string) => {
    const res = await operator("GET", `/v1/orgs/${org}/invoices`);
    expect(res.status, res.text).toBe(200);
    return [...res.body.data].reverse() as Record<string, string>[];
  };
  const chargesFor = (org: string) =>
    stripe.succeededCharges().filter((pi) => (pi.metadata as Record<string, string>).tollgate_org === org);

  it("subscribes through Checkout, renews, fails, recovers through the portal, and survives every replay", async () => {
    const signup = await t.call("POST", "/v1/auth/register", {
      body: { email: "stripe-journey@example.com", password: "correct horse battery staple", name: "Ada" },
    });
    expect(signup.status, signup.text).toBe(201);
    const org = signup.body.org.id as string;
    const me = (method: string, path: string, body?: unknown) => operator(method, path, body);
    await advanceTo(at(0, 16, 12));

    // 1. Free → Basic mid-January: a Stripe Checkout page, nothing changes until Stripe says so.
    const change = await me("POST", `/v1/orgs/${org}/subscription`, { plan: "basic" });
    expect(change.status, change.text).toBe(200);
    expect(change.body.checkout_url).toMatch(new RegExp(`^${stripe.url}/c/pay/cs_test_`));
    expect(stripe.customers.size).toBe(1);
    const [customer] = [...stripe.customers.values()];
    expect(customer?.metadata).toEqual({ tollgate_org: org });
    // A card declined on the page leaves the session open and Tollgate untouched.
    expect(stripe.completeCheckout(change.body.checkout_url, "4000 0000 0000 0002")).toEqual({
      completed: false,
    });
    expect(stripe.completeCheckout(change.body.checkout_url, "4242 4242 4242 4242")).toEqual({
      completed: true,
    });
    expect((await me("GET", `/v1/orgs/${org}/subscription`)).body.plan).toBe("free");

    await deliverNew("checkout");
    const basic = await me("GET", `/v1/orgs/${org}/subscription`);
    expect(basic.body).toMatchObject({ plan: "basic", status: "active" });
    let history = await invoicesOf(org);
    expect(history.map((i) => [i.reason, i.total, i.status])).toEqual([
      ["subscription_update", "5.00", "paid"],
    ]);
    expect(chargesFor(org).map((pi) => pi.amount)).toEqual([500]);
    const card = await me("GET", `/v1/orgs/${org}/subscription`);
    expect(card.status).toBe(200);
    // The charge went out under Tollgate's idempotency key for the invoice's first attempt.
    const chargeRequests = stripe.requests.filter(
      (r) => r.path === "/v1/payment_intents" && r.method === "POST",
    );
    expect(chargeRequests.map((r) => r.idempotencyKey)).toEqual([
      `tollgate:invoice:${history[0]?.id}:attempt:1`,
    ]);
    // Coming back to the success page after the webhook says paid, and changes nothing.
    const checkoutId = [...stripe.checkoutSessions.values()][0]?.client_reference_id as string;
    const back = await t.call("GET", `/checkout/${checkoutId}/return`, { headers: { accept: "text/html" } });
    expect(back.status).toBe(200);
    expect(back.text).toContain("Payment received");

    // 2. A month of use, renewed on February 1st: base fee in advance, usage in arrears, one charge.
    const used = await operator("POST", "/v1/check", { org_id: org, feature: "api_calls", amount: 1234 });
    expect(used.status, used.text).toBe(200);
    await advanceTo(at(1, 1, 1));
    await deliverNew("renewal");
    history = await invoicesOf(org);
    expect(history.map((i) => [i.reason, i.total, i.status])).toEqual([
      ["subscription_update", "5.00", "paid"],
      ["subscription_cycle", "22.34", "paid"],
    ]);
    expect(chargesFor(org).map((pi) => pi.amount)).toEqual([500, 2234]);

    // 3. The portal: the customer swaps in a card that will be declined (4000 0000 0000 0341).
    const portal = await me("POST", `/v1/orgs/${org}/portal`, {
      return_url: "https://app.example.com/billing",
    });
    expect(portal.status, portal.text).toBe(200);
    expect(portal.body.url).toMatch(new RegExp(`^${stripe.url}/p/session/`));
    expect(stripe.portalChangeCard(portal.body.url, "4000 0000 0000 0341")).toEqual({ saved: true });
    await deliverNew("portal card change");
    const method = await t.deps.database.db.query.paymentMethods.findFirst();
    expect(method).toMatchObject({ provider: "stripe", last4: "0341" });

    // 4. March's renewal is declined: past_due, retried on the schedule, e-mailed.
    await advanceTo(at(2, 1, 1));
    await deliverNew("failed renewal");
    let sub = await me("GET", `/v1/orgs/${org}/subscription`);
    expect(sub.body.status).toBe("past_due");
    history = await invoicesOf(org);
    const march = history[2] as Record<string, string>;
    expect([march.reason, march.total, march.status]).toEqual(["subscription_cycle", "10.00", "finalized"]);
    await advanceTo(at(2, 3, 2));
    await deliverNew("first retry");
    expect((await me("GET", `/v1/orgs/${org}/subscription`)).body.status).toBe("past_due");

    // 5. A good card in the portal; the next retry (day 7) pays and the subscription recovers.
    const portal2 = await me("POST", `/v1/orgs/${org}/portal`, {});
    expect(stripe.portalChangeCard(portal2.body.url, "4242424242424242")).toEqual({ saved: true });
    await deliverNew("card fixed");
    await advanceTo(at(2, 8, 2));
    await deliverNew("second retry");
    sub = await me("GET", `/v1/orgs/${org}/subscription`);
    expect(sub.body.status).toBe("active");
    expect(chargesFor(org).map((pi) => pi.amount)).toEqual([500, 2234, 1000]);
    const declined = [...stripe.paymentIntents.values()].filter((pi) => pi.status !== "succeeded");
    expect(declined).toHaveLength(2);

    // 6. Downgrade at the period end: April closes on Free with nothing to charge.
    const down = await me("POST", `/v1/orgs/${org}/subscription`, { plan: "free" });
    expect(down.status, down.text).toBe(200);
    await advanceTo(at(3, 1, 1));
    await deliverNew("downgrade");
    sub = await me("GET", `/v1/orgs/${org}/subscription`);
    expect(sub.body.plan).toBe("free");

    // 7. Every event ever sent, replayed in a new order: nothing moves.
    const before = JSON.stringify(await invoicesOf(org));
    const charges = stripe.succeededCharges().length;
    for (const event of shuffled(stripe.events, seed * 7 + 1)) {
      const res = await post(event);
      expect(res.status, `replay (seed ${seed}) ${event.type}: ${res.text}`).toBe(200);
      expect(res.body.duplicate, event.type).toBe(true);
    }
    expect(JSON.stringify(await invoicesOf(org))).toBe(before);
    expect(stripe.succeededCharges().length).toBe(charges);
    // Each paid invoice matches exactly one successful charge of its amount.
    for (const invoice of await invoicesOf(org)) {
      const paid = stripe
        .succeededCharges()
        .filter((pi) => (pi.metadata as Record<string, string>).tollgate_invoice === invoice.id);
      if (invoice.status === "paid" && invoice.amount_due !== "0.00") {
        expect(
          paid.map((pi) => pi.amount),
          invoice.id,
        ).toEqual([Math.round(Number(invoice.amount_due) * 100)]);
      } else expect(paid, invoice.id).toEqual([]);
    }
  });

  it("verifies signatures: a wrong secret, an altered body, a stale or missing header are refused", async () => {
    const event = stripe.events[0] as StandInEvent;
    const wrong = await post(event, { secret: "whsec_not_the_secret" });
    expect(wrong.status).toBe(400);
    expect(wrong.headers.get("content-type")).toContain("application/problem+json");
    expect(wrong.body.code).toBe("invalid_signature");

    const { body, headers } = stripe.signed(event);
    const altered = await t.call("POST", "/v1/billing/stripe/webhook", {
      body: body.replace(event.id, `${event.id}x`),
      headers,
    });
    expect(altered.status).toBe(400);

    const nowS = Math.floor(Date.now() / 1000);
    expect((await post(event, { timestamp: nowS - 301 })).status).toBe(400);
    expect((await post(event, { timestamp: nowS - 250 })).status).toBe(200);

    const missing = await t.call("POST", "/v1/billing/stripe/webhook", {
      body,
      headers: { "content-type": "application/json" },
    });
    expect(missing.status).toBe(400);
    expect(missing.body.code).toBe("invalid_signature");
  });

  it("charges once when Stripe's answer is lost, and a webhook settles an invoice whose charge was never written down", async () => {
    const signup = await t.call("POST", "/v1/auth/register", {
      body: { email: "stripe-lost@example.com", password: "correct horse battery staple", name: "Bo" },
    });
    const org = signup.body.org.id as string;
    const change = await operator("POST", `/v1/orgs/${org}/subscription`, { plan: "basic" });
    expect(stripe.completeCheckout(change.body.checkout_url, "4242424242424242")).toEqual({
      completed: true,
    });
    // The first charge's answer is lost once: the SDK retries under the same key and Stripe replays it.
    stripe.loseNext = 1;
    await deliverNew("lost answer");
    expect((await operator("GET", `/v1/orgs/${org}/subscription`)).body.status).toBe("active");
    const first = chargesFor(org);
    expect(first).toHaveLength(1);
    const [invoice] = await invoicesOf(org);
    expect(invoice?.status).toBe("paid");

    // Next renewal: every answer is lost (more than the SDK's retries) — Stripe charged, Tollgate could
    // not tell, and the invoice stays open. Stripe's webhook settles it; the billing run then finds
    // nothing to charge.
    const renewalOn = (monthsAhead: number) => {
      const now = new Date(t.deps.clock.nowMs());
      return Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + monthsAhead, 1, 1);
    };
    stripe.loseNext = 1000;
    await advanceTo(renewalOn(1));
    stripe.loseNext = 0;
    expect(((await invoicesOf(org)).at(-1) as Record<string, string>).status).toBe("finalized");
    expect(chargesFor(org)).toHaveLength(2);
    await deliverNew("after the lost answers");
    expect(((await invoicesOf(org)).at(-1) as Record<string, string>).status).toBe("paid");
    expect((await operator("POST", "/v1/admin/billing/run", {})).status).toBe(200);
    expect(chargesFor(org)).toHaveLength(2);

    // The renewal after: answers lost again, and no webhook this time. The billing run charges the
    // invoice again under the same attempt's key, and Stripe answers with the first charge.
    stripe.loseNext = 1000;
    await advanceTo(renewalOn(1));
    stripe.loseNext = 0;
    expect(((await invoicesOf(org)).at(-1) as Record<string, string>).status).toBe("finalized");
    expect(chargesFor(org)).toHaveLength(3);
    const run = await operator("POST", "/v1/admin/billing/run", {});
    expect(run.status, run.text).toBe(200);
    expect(chargesFor(org)).toHaveLength(3);
    const history = await invoicesOf(org);
    expect(history.map((i) => i.status)).toEqual(["paid", "paid", "paid"]);
    await deliverNew("after the billing run");
    expect(chargesFor(org)).toHaveLength(3);

    // A credit note refunds through Stripe, once, against the invoice's own PaymentIntent.
    const last = history.at(-1) as Record<string, string>;
    const note = await operator("POST", `/v1/orgs/${org}/invoices/${last.id}/credit-notes`, {
      amount: "4.00",
    });
    expect(note.status, note.text).toBe(201);
    expect(note.body).toMatchObject({ refund_amount: "4.00", refund_status: "succeeded" });
    const refunds = [...stripe.refunds.values()];
    expect(refunds).toHaveLength(1);
    const paidBy = stripe
      .succeededCharges()
      .find((pi) => (pi.metadata as Record<string, string>).tollgate_invoice === last.id);
    expect(refunds[0]).toMatchObject({ amount: 400, payment_intent: paidBy?.id });
    const refundRequest = stripe.requests.find((r) => r.path === "/v1/refunds");
    expect(refundRequest?.idempotencyKey).toBe(`tollgate:refund:${note.body.id}`);

    // The bank returns the refund later: the note says so, and what it failed to give back can be
    // settled again, as credit.
    stripe.failRefund(refunds[0]?.id as string);
    await deliverNew("refund failed");
    const failed = await operator("GET", `/v1/orgs/${org}/credit-notes?invoice=${last.id}`);
    expect(failed.body.data[0]).toMatchObject({ id: note.body.id, refund_status: "failed" });
    const again = await operator("POST", `/v1/orgs/${org}/invoices/${last.id}/credit-notes`, {
      amount: last.total,
      settle: "credit",
    });
    expect(again.status, again.text).toBe(201);
  });

  it("sends an interrupted attempt again with the card it named first, even after the card changed", async () => {
    const signup = await t.call("POST", "/v1/auth/register", {
      body: { email: "stripe-resend@example.com", password: "correct horse battery staple", name: "Ed" },
    });
    const org = signup.body.org.id as string;
    const change = await operator("POST", `/v1/orgs/${org}/subscription`, { plan: "basic" });
    expect(stripe.completeCheckout(change.body.checkout_url, "4242424242424242")).toEqual({
      completed: true,
    });
    await deliverNew("resend: checkout");
    expect(chargesFor(org)).toHaveLength(1);

    // The renewal's charge goes through at Stripe, but no answer comes back: the attempt stays pending.
    const now = new Date(t.deps.clock.nowMs());
    stripe.loseNext = 1000;
    await advanceTo(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1, 1));
    stripe.loseNext = 0;
    expect(chargesFor(org)).toHaveLength(2);
    const [pending] = await t.database.db.query.payments.findMany({
      where: (p, { and, eq }) => and(eq(p.orgId, org), eq(p.status, "pending")),
    });
    expect(pending?.paymentMethod).toMatch(/^pm_/);

    // Meanwhile the customer replaces the card in the portal, and Tollgate hears of it.
    const portal = await operator("POST", `/v1/orgs/${org}/portal`, {});
    const before = stripe.events.length;
    expect(stripe.portalChangeCard(portal.body.url, "4242424242424242")).toEqual({ saved: true });
    for (const event of stripe.events.slice(before)) expect((await post(event)).status).toBe(200);
    const card = await t.database.db.query.paymentMethods.findFirst({
      where: (m, { eq }) => eq(m.orgId, org),
    });
    expect(card?.reference).not.toBe(pending?.paymentMethod);

    // The billing run sends the attempt again as it was: Stripe answers with the first charge.
    expect((await operator("POST", "/v1/admin/billing/run", {})).status).toBe(200);
    expect(chargesFor(org)).toHaveLength(2);
    const [latest] = (await operator("GET", `/v1/orgs/${org}/invoices`)).body.data;
    expect(latest.status).toBe("paid");
    await deliverNew("resend: after");
    expect(chargesFor(org)).toHaveLength(2);
  });

  it("answers 503 while Stripe cannot be read, and processes the event when Stripe delivers it again", async () => {
    const signup = await t.call("POST", "/v1/auth/register", {
      body: { email: "stripe-down@example.com", password: "correct horse battery staple", name: "Di" },
    });
    const org = signup.body.org.id as string;
    const change = await operator("POST", `/v1/orgs/${org}/subscription`, { plan: "basic" });
    expect(stripe.completeCheckout(change.body.checkout_url, "4242424242424242")).toEqual({
      completed: true,
    });
    const completed = stripe.events
      .filter((e) => e.type === "checkout.session.completed")
      .at(-1) as StandInEvent;
    const checkoutId = completed.data.object.client_reference_id as string;

    stripe.failNext = 100;
    const down = await post(completed);
    expect(down.status).toBe(503);
    expect(down.headers.get("content-type")).toContain("application/problem+json");
    const page = await t.call("GET", `/checkout/${checkoutId}/return`, { headers: { accept: "text/html" } });
    expect(page.status).toBe(503);
    expect(page.text).toContain("refresh this page");
    expect((await operator("GET", `/v1/orgs/${org}/subscription`)).body.plan).toBe("free");

    stripe.failNext = 0;
    const again = await post(completed);
    expect(again.status, again.text).toBe(200);
    expect(again.body).toMatchObject({ duplicate: false, handled: true });
    expect((await operator("GET", `/v1/orgs/${org}/subscription`)).body).toMatchObject({
      plan: "basic",
      status: "active",
    });
    expect((await post(completed)).body.duplicate).toBe(true);
    await deliverNew("after the outage");
    expect(chargesFor(org)).toHaveLength(1);
  });

  it("refuses card numbers on Tollgate with the stripe provider, and the webhook is 404 with the local one", async () => {
    const signup = await t.call("POST", "/v1/auth/register", {
      body: { email: "stripe-card@example.com", password: "correct horse battery staple", name: "Cy" },
    });
    const res = await operator("PUT", `/v1/orgs/${signup.body.org.id}/payment-method`, {
      card_number: "4242424242424242",
    });
    expect(res.status).toBe(409);
    expect(res.body.detail).toContain("portal");
  });
});

describe("the stripe webhook without the stripe provider", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ ...embedded });
  });
  afterAll(() => t.close());
  it("answers 404", async () => {
    const res = await t.call("POST", "/v1/billing/stripe/webhook", {
      body: "{}",
      headers: { "content-type": "application/json", "stripe-signature": "t=1,v1=00" },
    });
    expect(res.status).toBe(404);
    expect(res.body.code).toBe("not_found");
  });
});
