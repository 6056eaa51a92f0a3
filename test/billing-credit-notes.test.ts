import { eq, sql } from "drizzle-orm";
import { PDFParse } from "pdf-parse";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { creditNotes, emails, payments } from "../src/db/schema.js";
import { recordPayment } from "../src/modules/billing/payments.js";
import { appModes, createTestApp, type TestApp } from "./support/app.js";
import { writeCatalog } from "./support/tollgate-process.js";

/**
 * Corrections after an invoice is final, over HTTP: credit notes (refund to the card, credit for later,
 * or less to pay on an open invoice; capped per line and in all; gapless CN- numbers; append-only),
 * voiding an open invoice (dunning stops, applied credits come back), the receipt e-mail, and the
 * invoice and credit-note PDFs in the org's white-label branding — each only for its own org.
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
  - key: pro
    name: Pro
    price: { month: "20" }
    entitlements: { calls: { limit: null } }
    charges:
      - { meter: calls, model: standard, unit_amount: "0.01" }
`);

const iso = (ms: number) => new Date(ms).toISOString();
const [embedded] = appModes;
if (!embedded) throw new Error("no app modes");
const modes = [...new Map([embedded, appModes.at(-1) ?? embedded].map((m) => [m.name, m])).values()];

async function pdfText(bytes: ArrayBuffer) {
  const parser = new PDFParse({ data: new Uint8Array(bytes) });
  try {
    return (await parser.getText()).text;
  } finally {
    await parser.destroy();
  }
}

describe.each(modes)("credit notes, voiding, receipts and PDFs ($name)", (mode) => {
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
  async function paidOrg(email: string) {
    const res = await t.call("POST", "/v1/auth/register", {
      body: { email, password: "correct horse battery staple", name: "Ada" },
    });
    expect(res.status, res.text).toBe(201);
    const org = res.body.org.id as string;
    expect(
      (await op("PUT", `/v1/orgs/${org}/payment-method`, { card_number: "4242424242424242" })).status,
    ).toBe(200);
    const pro = await op("POST", `/v1/orgs/${org}/subscription`, { plan: "pro" });
    expect(pro.body, pro.text).toMatchObject({ plan: "pro", payment: "paid" });
    const [invoice] = (await op("GET", `/v1/orgs/${org}/invoices`)).body.data;
    return {
      org,
      token: res.body.access_token as string,
      invoice,
      periodEnd: Date.parse(pro.body.current_period_end),
    };
  }
  /** An org whose renewal was declined: its newest invoice is open. */
  async function pastDueOrg(email: string) {
    const paid = await paidOrg(email);
    await op("POST", "/v1/check", { org_id: paid.org, feature: "calls", amount: 150 });
    expect(
      (await op("PUT", `/v1/orgs/${paid.org}/payment-method`, { card_number: "4000000000000002" })).status,
    ).toBe(200);
    await advanceTo(paid.periodEnd);
    const [open] = (await op("GET", `/v1/orgs/${paid.org}/invoices`)).body.data;
    expect(open.status).toBe("finalized");
    expect((await op("GET", `/v1/orgs/${paid.org}/subscription`)).body.status).toBe("past_due");
    return { ...paid, open };
  }

  it("refunds part of a paid invoice, credits the rest for later, and refuses to credit more than was billed", async () => {
    const { org, invoice } = await paidOrg("cn-paid@example.com");
    const total = Number(invoice.total);
    expect(invoice).toMatchObject({ status: "paid" });
    const url = `/v1/orgs/${org}/invoices/${invoice.id}/credit-notes`;

    const refund = await op("POST", url, {
      amount: "5.00",
      reason: "product_unsatisfactory",
      memo: "Outage on the 3rd",
    });
    expect(refund.status, refund.text).toBe(201);
    expect(refund.body).toMatchObject({
      number: expect.stringMatching(/^CN-\d{6}$/),
      invoice_id: invoice.id,
      amount: "5.00",
      refund_amount: "5.00",
      credit_amount: "0.00",
      refund_status: "succeeded",
      lines: [{ invoice_line: null, description: "Outage on the 3rd", amount: "5.00" }],
    });

    // Line 0 is the proration charge: at most its amount can be credited against it.
    const line = invoice.lines[0];
    const tooMuchOnLine = await op("POST", url, {
      lines: [{ invoice_line: 0, amount: (Number(line.amount) + 0.01).toFixed(2) }],
    });
    expect(tooMuchOnLine.status).toBe(400);
    expect(tooMuchOnLine.body.errors[0].field).toBe("lines[0].amount");
    expect((await op("POST", url, { lines: [{ invoice_line: 9, amount: "1" }] })).status).toBe(400);
    expect((await op("POST", url, { amount: "1.005" })).status).toBe(400);
    expect((await op("POST", url, { amount: "0" })).status).toBe(400);
    expect((await op("POST", url, {})).status).toBe(400);
    const left = (total - 5).toFixed(2);
    const overTotal = await op("POST", url, { amount: (total - 5 + 0.01).toFixed(2), settle: "credit" });
    expect(overTotal.status).toBe(400);
    expect(overTotal.body.detail).toContain(`USD ${left}`);

    const credit = await op("POST", url, { amount: left, settle: "credit", reason: "order_change" });
    expect(credit.status, credit.text).toBe(201);
    expect(credit.body).toMatchObject({
      amount: left,
      credit_amount: left,
      refund_amount: "0.00",
      refund_status: null,
    });
    expect(Number(credit.body.number.slice(3))).toBe(Number(refund.body.number.slice(3)) + 1);
    const credits = await op("GET", `/v1/orgs/${org}/credits`);
    expect(credits.body.balance).toBe(left);
    expect(credits.body.grants[0]).toMatchObject({ source: "credit_note", amount: left });
    expect((await op("POST", url, { amount: "0.01", settle: "credit" })).status).toBe(400);

    const list = await op("GET", `/v1/orgs/${org}/credit-notes?invoice=${invoice.id}`);
    expect(list.body.data.map((n: { number: string }) => n.number)).toEqual([
      credit.body.number,
      refund.body.number,
    ]);
    // The invoice itself never changed; it says what was credited.
    const after = (await op("GET", `/v1/orgs/${org}/invoices/${invoice.id}`)).body;
    expect(after).toEqual({ ...invoice, amount_credited: invoice.total, amount_remaining: "0.00" });
    // Credit notes are append-only, in the database too.
    await expect(
      t.database.db.update(creditNotes).set({ amount: "0" }).where(eq(creditNotes.id, credit.body.id)),
    ).rejects.toThrow();
  });

  it("lowers what is left to pay on an open invoice, and a full credit settles it and ends dunning", async () => {
    const { org, open } = await pastDueOrg("cn-open@example.com");
    const due = Number(open.amount_due);
    const partial = await op("POST", `/v1/orgs/${org}/invoices/${open.id}/credit-notes`, { amount: "5.00" });
    expect(partial.status, partial.text).toBe(201);
    expect(partial.body).toMatchObject({
      outstanding_amount: "5.00",
      refund_amount: "0.00",
      credit_amount: "0.00",
    });
    expect((await op("GET", `/v1/orgs/${org}/invoices/${open.id}`)).body).toMatchObject({
      status: "finalized",
      amount_due: open.amount_due,
      amount_credited: "5.00",
      amount_remaining: (due - 5).toFixed(2),
    });

    // A good card: the retry charges what is left, not the original amount.
    expect(
      (await op("PUT", `/v1/orgs/${org}/payment-method`, { card_number: "4242424242424242" })).status,
    ).toBe(200);
    const paid = await op("POST", `/v1/orgs/${org}/invoices/${open.id}/pay`);
    expect(paid.status, paid.text).toBe(200);
    expect(paid.body).toMatchObject({ status: "paid", amount_paid: (due - 5).toFixed(2) });
    expect((await op("GET", `/v1/orgs/${org}/subscription`)).body.status).toBe("active");
    const receipts = (
      await t.database.db
        .select()
        .from(emails)
        .where(eq(emails.orgId, org))
        .orderBy(emails.createdAt, emails.id)
    ).filter((m) => m.template === "invoice_paid");
    expect(receipts.length).toBeGreaterThanOrEqual(2);
    expect(receipts.at(-1)?.subject).toContain(open.number);

    const other = await pastDueOrg("cn-open-full@example.com");
    const full = await op("POST", `/v1/orgs/${other.org}/invoices/${other.open.id}/credit-notes`, {
      amount: other.open.amount_due,
      reason: "duplicate",
    });
    expect(full.status, full.text).toBe(201);
    expect((await op("GET", `/v1/orgs/${other.org}/invoices/${other.open.id}`)).body.status).toBe("paid");
    expect((await op("GET", `/v1/orgs/${other.org}/subscription`)).body.status).toBe("active");
    // Nothing more is charged for it.
    const retry = await op("POST", `/v1/orgs/${other.org}/invoices/${other.open.id}/pay`);
    expect(retry.status).toBe(409);
  });

  it("voids an open invoice: dunning stops, credits applied to it come back; paid and void invoices refuse", async () => {
    const { org, open, invoice: paidInvoice } = await pastDueOrg("void@example.com");
    const voided = await op("POST", `/v1/orgs/${org}/invoices/${open.id}/void`);
    expect(voided.status, voided.text).toBe(200);
    expect(voided.body).toMatchObject({
      status: "void",
      voided_at: expect.any(String),
      amount_due: open.amount_due,
    });
    expect((await op("GET", `/v1/orgs/${org}/subscription`)).body.status).toBe("active");
    expect((await op("POST", `/v1/orgs/${org}/invoices/${open.id}/void`)).status).toBe(409);
    expect(
      (await op("POST", `/v1/orgs/${org}/invoices/${open.id}/credit-notes`, { amount: "1" })).status,
    ).toBe(409);
    const paidVoid = await op("POST", `/v1/orgs/${org}/invoices/${paidInvoice.id}/void`);
    expect(paidVoid.status).toBe(409);
    expect(paidVoid.body.detail).toContain("credit note");

    // Credits applied to an invoice are restored when it is voided.
    const withCredit = await pastDueOrgWithCredit("void-credit@example.com");
    const before = await op("GET", `/v1/orgs/${withCredit.org}/credits`);
    expect(before.body.balance).toBe("0.00");
    expect(withCredit.open.credits_applied).toBe("3.00");
    expect((await op("POST", `/v1/orgs/${withCredit.org}/invoices/${withCredit.open.id}/void`)).status).toBe(
      200,
    );
    const after = await op("GET", `/v1/orgs/${withCredit.org}/credits`);
    expect(after.body.balance).toBe("3.00");
    expect(after.body.ledger[0]).toMatchObject({ kind: "restore", amount: "3.00" });
  });

  async function pastDueOrgWithCredit(email: string) {
    const paid = await paidOrg(email);
    expect((await op("POST", `/v1/orgs/${paid.org}/credits`, { amount: "3" })).status).toBe(201);
    expect(
      (await op("PUT", `/v1/orgs/${paid.org}/payment-method`, { card_number: "4000000000000002" })).status,
    ).toBe(200);
    await advanceTo(paid.periodEnd);
    const [open] = (await op("GET", `/v1/orgs/${paid.org}/invoices`)).body.data;
    return { ...paid, open };
  }

  it("returns the first note for a repeated idempotency key, and waits for a payment in flight", async () => {
    const { org, invoice } = await paidOrg("cn-keys@example.com");
    const url = `/v1/orgs/${org}/invoices/${invoice.id}/credit-notes`;
    const body = { amount: "1.00", settle: "credit", idempotency_key: "ticket-4711" };
    const [first, second] = await Promise.all([op("POST", url, body), op("POST", url, body)]);
    expect(first.status, first.text).toBe(201);
    expect(second.status, second.text).toBe(201);
    expect(second.body.id).toBe(first.body.id);
    expect((await op("POST", url, body)).body.id).toBe(first.body.id);
    expect((await op("GET", `/v1/orgs/${org}/credits`)).body.balance).toBe("1.00");

    // A charge under way (its pending attempt written, the provider not answered yet) holds off
    // credit notes and voids, so what is charged is what is recorded.
    const { open } = await pastDueOrg("cn-inflight@example.com");
    // A key already used for another invoice of the org is a conflict, not a second note.
    const paidOne = `/v1/orgs/${open.org_id}/invoices`;
    const [, firstInvoice] = (await op("GET", paidOne)).body.data;
    const keyed = { amount: "1.00", settle: "credit", idempotency_key: "ticket-9" };
    expect((await op("POST", `${paidOne}/${firstInvoice.id}/credit-notes`, keyed)).status).toBe(201);
    const reused = await op("POST", `${paidOne}/${open.id}/credit-notes`, keyed);
    expect(reused.status).toBe(409);
    expect(reused.body.detail).toContain("another invoice");
    await t.database.db.insert(payments).values({
      id: "pay_00000000000000000000000001",
      orgId: open.org_id,
      invoiceId: open.id,
      provider: "local",
      amount: open.amount_due,
      currency: "USD",
      status: "pending",
      idempotencyKey: `invoice:${open.id}:attempt:99`,
      createdAt: t.deps.clock.now(),
    });
    const blocked = await op("POST", `/v1/orgs/${open.org_id}/invoices/${open.id}/credit-notes`, {
      amount: "1",
    });
    expect(blocked.status).toBe(409);
    expect(blocked.body.detail).toContain("being processed");
    expect((await op("POST", `/v1/orgs/${open.org_id}/invoices/${open.id}/void`)).status).toBe(409);
    // The attempt settles (here: the provider says it succeeded): the invoice is paid with its amount.
    const settled = await recordPayment(t.deps, open.id, {
      idempotencyKey: `invoice:${open.id}:attempt:99`,
      outcome: { status: "succeeded", reference: "local_4242" },
    });
    expect(settled.status).toBe("paid");
    expect((await op("GET", `/v1/orgs/${open.org_id}/invoices/${open.id}`)).body).toMatchObject({
      status: "paid",
      amount_paid: open.amount_due,
    });
    // Told again, or told of an attempt it never made, it changes nothing.
    expect(
      (
        await recordPayment(t.deps, open.id, {
          idempotencyKey: `invoice:${open.id}:attempt:99`,
          outcome: { status: "succeeded", reference: "local_4242" },
        })
      ).status,
    ).toBe("not_due");
  });

  it("credits a payment that succeeds late, after the invoice was settled another way", async () => {
    const { org, open } = await pastDueOrg("late-success@example.com");
    // The declined attempt…
    const [declined] = (
      await t.database.db.select().from(payments).where(eq(payments.invoiceId, open.id))
    ).filter((p) => p.status === "failed");
    expect(declined).toBeDefined();
    // …is forgiven with a full credit note, then the bank says it went through after all.
    expect(
      (await op("POST", `/v1/orgs/${org}/invoices/${open.id}/credit-notes`, { amount: open.amount_due }))
        .status,
    ).toBe(201);
    const late = await recordPayment(t.deps, open.id, {
      idempotencyKey: declined?.idempotencyKey as string,
      outcome: { status: "succeeded", reference: "late" },
    });
    expect(late.status).toBe("paid");
    const credits = await op("GET", `/v1/orgs/${org}/credits`);
    expect(credits.body.grants[0]).toMatchObject({ source: "overpayment", amount: open.amount_due });
  });

  it("keeps credit notes and voiding to the operator", async () => {
    const { org, token, invoice } = await paidOrg("cn-owner@example.com");
    const asOwner = await t.call("POST", `/v1/orgs/${org}/invoices/${invoice.id}/credit-notes`, {
      auth: token,
      body: { amount: "1" },
    });
    expect(asOwner.status).toBe(403);
    const voidAsOwner = await t.call("POST", `/v1/orgs/${org}/invoices/${invoice.id}/void`, { auth: token });
    expect(voidAsOwner.status).toBe(403);
  });

  it("keeps each org's branding to its own members, and the seller's to the operator", async () => {
    const a = await paidOrg("brand-a@example.com");
    const b = await paidOrg("brand-b@example.com");
    const defaults = await t.call("GET", `/v1/orgs/${a.org}/branding`, { auth: a.token });
    expect(defaults.status, defaults.text).toBe(200);
    expect(defaults.body).toMatchObject({ display_name: "Ada's organization", custom: false });
    const bad = await t.call("PUT", `/v1/orgs/${a.org}/branding`, {
      auth: a.token,
      body: { primary_color: "red", logo: "https://evil.example/logo.png" },
    });
    expect(bad.status).toBe(400);
    expect(bad.body.errors.map((e: { field: string }) => e.field).sort()).toEqual(["logo", "primary_color"]);
    const set = await t.call("PUT", `/v1/orgs/${a.org}/branding`, {
      auth: a.token,
      body: { display_name: "Team A", primary_color: "#0E7490" },
    });
    expect(set.status, set.text).toBe(200);
    expect(set.body).toMatchObject({ display_name: "Team A", primary_color: "#0e7490", custom: true });
    // Leaving a field out keeps it; null resets it.
    const reset = await t.call("PUT", `/v1/orgs/${a.org}/branding`, {
      auth: a.token,
      body: { display_name: null },
    });
    expect(reset.body).toMatchObject({ display_name: "Ada's organization", primary_color: "#0e7490" });
    const foreign = await t.call("PUT", `/v1/orgs/${a.org}/branding`, {
      auth: b.token,
      body: { display_name: "Hijacked" },
    });
    expect([403, 404]).toContain(foreign.status);
    const sellerByCustomer = await t.call("PUT", "/v1/admin/branding", {
      auth: a.token,
      body: { display_name: "Hijacked" },
    });
    expect(sellerByCustomer.status).toBe(403);
  });

  it("serves invoice and credit-note PDFs issued by the seller, to the org's own members only", async () => {
    const a = await paidOrg("pdf-a@example.com");
    const b = await paidOrg("pdf-b@example.com");
    const seller = await op("PUT", "/v1/admin/branding", {
      display_name: "Acme Analytics GmbH",
      primary_color: "#0E7490",
      footer: "Acme Analytics GmbH · Hauptstraße 1 · 10115 Berlin · VAT DE123456789",
      support_email: "billing@acme.example",
    });
    expect(seller.status, seller.text).toBe(200);
    expect(seller.body).toMatchObject({ display_name: "Acme Analytics GmbH", custom: true });
    // An org's own branding does not change who issued its invoices.
    await t.call("PUT", `/v1/orgs/${a.org}/branding`, {
      auth: a.token,
      body: { display_name: "Not the seller" },
    });

    const res = await fetchRaw(`/v1/orgs/${a.org}/invoices/${a.invoice.id}.pdf`, a.token);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("application/pdf");
    expect(res.headers.get("content-disposition")).toContain(`${a.invoice.number}.pdf`);
    const bytes = await res.arrayBuffer();
    expect(Buffer.from(bytes).subarray(0, 5).toString()).toBe("%PDF-");
    const text = await pdfText(bytes);
    expect(text).toContain("Acme Analytics GmbH");
    expect(text).toContain(a.invoice.number);
    expect(text).toContain("VAT DE123456789");
    expect(text).toContain("pdf-a@example.com");
    expect(text).not.toContain("Not the seller");

    const note = await op("POST", `/v1/orgs/${a.org}/invoices/${a.invoice.id}/credit-notes`, {
      amount: "2.50",
    });
    const notePdf = await fetchRaw(`/v1/orgs/${a.org}/credit-notes/${note.body.id}.pdf`, a.token);
    expect(notePdf.status).toBe(200);
    const noteText = await pdfText(await notePdf.arrayBuffer());
    expect(noteText).toContain(note.body.number);
    expect(noteText).toContain("$2.50");

    // B can read neither A's invoice PDF nor A's credit note, and gets no bytes of them.
    for (const path of [
      `/v1/orgs/${a.org}/invoices/${a.invoice.id}.pdf`,
      `/v1/orgs/${b.org}/invoices/${a.invoice.id}.pdf`,
      `/v1/orgs/${b.org}/credit-notes/${note.body.id}.pdf`,
    ]) {
      const stolen = await fetchRaw(path, b.token);
      expect([403, 404], path).toContain(stolen.status);
      expect(stolen.headers.get("content-type"), path).toContain("application/problem+json");
    }
    expect((await fetchRaw(`/v1/orgs/${a.org}/invoices/${a.invoice.id}.pdf`, undefined)).status).toBe(401);
  });

  async function fetchRaw(path: string, token: string | undefined) {
    return t.app.request(path, { headers: token ? { authorization: `Bearer ${token}` } : {} }, undefined);
  }

  it("counts credit-note numbers without gaps, across orgs", async () => {
    const rows = await t.database.db.execute<{ number: string }>(
      sql`select number from credit_notes order by number`,
    );
    const numbers =
      (rows as unknown as { rows?: { number: string }[] }).rows ?? (rows as unknown as { number: string }[]);
    const seq = numbers.map((r) => Number(r.number.slice(3)));
    expect(seq.length).toBeGreaterThan(3);
    expect(seq).toEqual(seq.map((_, i) => (seq[0] ?? 0) + i));
  });
});
