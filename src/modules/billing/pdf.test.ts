import { PDFParse } from "pdf-parse";
import { describe, expect, it } from "vitest";
import { type InvoiceOutput, type PdfBranding, type PdfDocumentInput, renderInvoicePdf } from "./pdf.js";

/**
 * Invoice PDFs read back with pdf-parse: what a customer's accountant would look for is in the text,
 * on every page where it belongs, and the same invoice always gives the same bytes.
 */

/** 1x1 RGBA PNG (pdfkit splits its alpha channel). */
const PNG_RGBA =
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
/** 4x2 RGB PNG (embedded as is). */
const PNG_RGB =
  "iVBORw0KGgoAAAANSUhEUgAAAAQAAAACCAIAAADwyuo0AAAAEElEQVR42mM4IScHRwzIHABvCggh7qR9+QAAAABJRU5ErkJggg==";

const branding: PdfBranding = {
  display_name: "Acme Inc.",
  primary_color: "#4F46E5",
  logo: null,
  footer: "Acme Inc. · 1 Market Street, San Francisco, CA 94105 · VAT DE123456789",
  support_email: "billing@acme.test",
};

type Line = InvoiceOutput["lines"][number];

const baseFee: Line = {
  kind: "base_fee",
  description: "Pro (monthly), 2025-03-01 to 2025-04-01",
  meter: null,
  model: null,
  quantity: "1",
  unit_amount: "1200",
  amount: "1200.00",
  exact_amount: "1200",
  period_start: "2025-03-01T00:00:00.000Z",
  period_end: "2025-04-01T00:00:00.000Z",
  details: null,
};

const usage: Line = {
  kind: "usage",
  description: "API requests",
  meter: "api_requests",
  model: "graduated",
  quantity: "125000",
  unit_amount: null,
  amount: "34.50",
  exact_amount: "34.5",
  period_start: "2025-02-01T00:00:00.000Z",
  period_end: "2025-03-01T00:00:00.000Z",
  details: {
    capped: false,
    tiers: [
      { tier: 1, from: "0", up_to: "10000", units: "10000", unit_amount: "0", flat_amount: "0", amount: "0" },
      {
        tier: 2,
        from: "10000",
        up_to: "100000",
        units: "90000",
        unit_amount: "0.0003",
        flat_amount: "0",
        amount: "27",
      },
      {
        tier: 3,
        from: "100000",
        up_to: null,
        units: "25000",
        unit_amount: "0.0003",
        flat_amount: "0",
        amount: "7.5",
      },
    ],
  },
};

function invoice(overrides: Partial<InvoiceOutput> = {}): InvoiceOutput {
  return {
    id: "inv_01JQ4Z8W1F3M",
    org_id: "org_01JQ4Z8W1F3M",
    subscription_id: "sub_01JQ4Z8W1F3M",
    number: "INV-000042",
    status: "finalized",
    reason: "subscription_cycle",
    currency: "USD",
    period_start: "2025-02-01T00:00:00.000Z",
    period_end: "2025-03-01T00:00:00.000Z",
    plan: "pro",
    plan_version: 3,
    interval: "month",
    lines: [baseFee, usage],
    subtotal: "1234.50",
    discounts: [{ code: "LAUNCH20", amount: "246.90" }],
    discount: "246.90",
    credits_applied: "100.00",
    total: "987.60",
    amount_due: "887.60",
    amount_paid: "0.00",
    amount_credited: "0.00",
    amount_remaining: "887.60",
    created_at: "2025-03-01T00:00:05.000Z",
    finalized_at: "2025-03-01T01:00:00.000Z",
    due_at: "2025-03-15T01:00:00.000Z",
    paid_at: null,
    voided_at: null,
    ...overrides,
  };
}

function input(overrides: Partial<PdfDocumentInput> = {}): PdfDocumentInput {
  return {
    kind: "invoice",
    invoice: invoice(),
    customer: {
      name: "Globex Corporation",
      email: "ap@globex.test",
      lines: ["42 Evergreen Terrace", "Springfield, OR 97403", "United States"],
    },
    branding,
    ...overrides,
  };
}

async function read(pdf: Buffer) {
  // pdf.js takes ownership of typed arrays: hand it a copy.
  const parser = new PDFParse({ data: new Uint8Array(pdf) });
  try {
    const result = await parser.getText();
    const info = await parser.getInfo();
    return { text: result.text, pages: result.pages.map((page) => page.text), info: info.info };
  } finally {
    await parser.destroy();
  }
}

describe("renderInvoicePdf: an invoice", () => {
  it("holds everything an accountant looks for", async () => {
    const pdf = await renderInvoicePdf(input());
    expect(pdf.subarray(0, 5).toString("latin1")).toBe("%PDF-");
    const { text, pages, info } = await read(pdf);
    expect(pages).toHaveLength(1);
    for (const expected of [
      "Acme Inc.",
      "Invoice",
      "INV-000042",
      "Globex Corporation",
      "ap@globex.test",
      "42 Evergreen Terrace",
      "Springfield, OR 97403",
      "Issue date",
      "1 Mar 2025",
      "Due date",
      "15 Mar 2025",
      "Service period",
      "1 Feb 2025 – 28 Feb 2025",
      "Description",
      "Qty",
      "Unit price",
      "Amount",
      baseFee.description,
      "API requests",
      "Tier 2 (10,000 to 100,000): 90,000 × $0.0003 = $27.00",
      "125,000",
      "$1,200.00",
      "$1,200.00",
      "$34.50",
      "Subtotal",
      "$1,234.50",
      "Discount (LAUNCH20)",
      "-$246.90",
      "Total",
      "$987.60",
      "Credits applied",
      "-$100.00",
      "Amount due",
      "$887.60",
      "Amount paid",
      "$0.00",
      "VAT DE123456789",
      "billing@acme.test",
      "Page 1 of 1",
    ]) {
      expect(text).toContain(expected);
    }
    expect(text).not.toContain("PAID");
    expect(text).not.toContain("VOID");
    expect(info?.Title).toBe("Invoice INV-000042");
    expect(info?.Author).toBe("Acme Inc.");
  });

  it("shows PAID on a paid invoice", async () => {
    const paid = invoice({ status: "paid", amount_paid: "887.60", paid_at: "2025-03-03T09:30:00.000Z" });
    const { text } = await read(await renderInvoicePdf(input({ invoice: paid })));
    expect(text).toContain("PAID");
    expect(text).toContain("Paid on");
    expect(text).toContain("3 Mar 2025");
    expect(text).not.toContain("VOID");
  });

  it("shows VOID on a voided invoice", async () => {
    const voided = invoice({ status: "void", voided_at: "2025-03-04T00:00:00.000Z" });
    const { text } = await read(await renderInvoicePdf(input({ invoice: voided })));
    expect(text).toContain("VOID");
    expect(text).toContain("Voided on");
    expect(text).not.toContain("PAID");
  });

  it("shows a draft as a draft, without a number", async () => {
    const draft = invoice({ status: "draft", number: null, finalized_at: null, due_at: null });
    const { text, info } = await read(await renderInvoicePdf(input({ invoice: draft })));
    expect(text).toContain("DRAFT");
    expect(text).toContain("Draft");
    expect(text).not.toContain("Due date");
    expect(info?.Title).toBe("Invoice (draft)");
  });

  it("writes other currencies with their symbol and minor unit", async () => {
    const eur = invoice({
      currency: "EUR",
      lines: [{ ...baseFee, unit_amount: "12", amount: "12.00" }],
      subtotal: "12.00",
      discounts: [],
      discount: "0.00",
      credits_applied: "0.00",
      total: "12.00",
      amount_due: "12.00",
    });
    const eurText = (await read(await renderInvoicePdf(input({ invoice: eur })))).text;
    expect(eurText).toContain("€12.00");
    expect(eurText).not.toContain("Credits applied");
    expect(eurText).not.toContain("Discount");

    const jpy = invoice({
      currency: "JPY",
      lines: [{ ...baseFee, unit_amount: "500", amount: "500" }],
      subtotal: "500",
      discounts: [],
      discount: "0",
      credits_applied: "0",
      total: "500",
      amount_due: "500",
      amount_paid: "0",
    });
    const jpyText = (await read(await renderInvoicePdf(input({ invoice: jpy })))).text;
    expect(jpyText).toContain("¥500");
    expect(jpyText).not.toContain("¥500.");
  });

  it("wraps a long description instead of cutting it", async () => {
    const description = `Enterprise support retainer covering ${"priority incident response and ".repeat(6)}quarterly reviews`;
    const long = invoice({ lines: [{ ...baseFee, description }] });
    const { text } = await read(await renderInvoicePdf(input({ invoice: long })));
    expect(text).toContain("Enterprise support retainer");
    expect(text).toContain("quarterly reviews");
    expect(text.replace(/\s+/g, " ")).toContain(description);
  });

  it("continues an 80-line invoice over several pages, each with the table header", async () => {
    const lines: Line[] = Array.from({ length: 80 }, (_, i) => ({
      ...usage,
      description: `Meter ${String(i + 1).padStart(2, "0")}: events ingested in region eu-west-${(i % 3) + 1}`,
      model: "standard",
      quantity: String(1000 + i),
      unit_amount: "0.01",
      amount: `${10 + i}.00`,
      details: { capped: false },
    }));
    const many = invoice({ lines, subtotal: "3960.00", total: "3713.10", amount_due: "3613.10" });
    const { text, pages } = await read(await renderInvoicePdf(input({ invoice: many })));
    expect(pages.length).toBeGreaterThan(1);
    pages.forEach((page, i) => {
      expect(page).toContain("Description");
      expect(page).toContain("Unit price");
      expect(page).toContain(`Page ${i + 1} of ${pages.length}`);
      expect(page).toContain("VAT DE123456789");
    });
    for (const line of lines) expect(text).toContain(line.description);
    expect(pages[1]).toContain("INV-000042 (continued)");
    expect(pages.at(-1)).toContain("Amount due");
    expect(pages.at(-1)).toContain("$3,613.10");
  });

  it("prints names outside the standard fonts' character set without failing", async () => {
    const { text } = await read(
      await renderInvoicePdf(
        input({
          customer: {
            name: "Zoë Łódź Ltd 株式会社 🚀",
            email: null,
            lines: ["Straße 5", "Ελλάδα", "Cafe\u0301 \u2764\ufe0f"],
          },
          branding: { ...branding, display_name: "Acme Ünïcode™ — „Pty“", footer: "" },
        }),
      ),
    );
    expect(text).toContain("Zoë Lódz Ltd");
    expect(text).toContain("?");
    expect(text).toContain("Straße 5");
    expect(text).toContain("Café ?");
    expect(text).toContain("Acme Ünïcode™ — „Pty“");
    expect(text).toContain("Page 1 of 1");
  });

  it("falls back to a neutral colour when the brand colour is not #RRGGBB", async () => {
    const pdf = await renderInvoicePdf(
      input({ branding: { ...branding, primary_color: "red; drop table" } }),
    );
    expect((await read(pdf)).text).toContain("INV-000042");
  });

  it("gives identical bytes for identical input", async () => {
    const withLogo = input({ branding: { ...branding, logo: `data:image/png;base64,${PNG_RGBA}` } });
    const [first, second] = [await renderInvoicePdf(withLogo), await renderInvoicePdf(withLogo)];
    expect(first.equals(second)).toBe(true);
    const other = await renderInvoicePdf(input({ invoice: invoice({ number: "INV-000043" }) }));
    expect(other.equals(await renderInvoicePdf(input()))).toBe(false);
  });
});

describe("renderInvoicePdf: the logo", () => {
  const hasImage = (pdf: Buffer) => pdf.includes("/Subtype /Image");

  it("embeds a PNG data URI, with or without an alpha channel", async () => {
    for (const png of [PNG_RGBA, PNG_RGB]) {
      const pdf = await renderInvoicePdf(
        input({ branding: { ...branding, logo: `data:image/png;base64,${png}` } }),
      );
      expect(hasImage(pdf)).toBe(true);
      expect((await read(pdf)).text).toContain("Acme Inc.");
    }
  });

  it("embeds a JPEG data URI", async () => {
    // The smallest JPEG pdfkit reads: start of image, a baseline frame header (8x8, 3 components), end.
    const jpeg = Buffer.from([
      0xff, 0xd8, 0xff, 0xc0, 0x00, 0x11, 0x08, 0x00, 0x08, 0x00, 0x08, 0x03, 0x01, 0x11, 0x00, 0x02, 0x11,
      0x00, 0x03, 0x11, 0x00, 0xff, 0xd9,
    ]);
    const pdf = await renderInvoicePdf(
      input({ branding: { ...branding, logo: `data:image/jpeg;base64,${jpeg.toString("base64")}` } }),
    );
    expect(pdf.includes("/Filter /DCTDecode")).toBe(true);
  });

  it("skips a logo that is not a well-formed PNG or JPEG data URI", async () => {
    const rgba = Buffer.from(PNG_RGBA, "base64");
    const corrupt = Buffer.from(rgba);
    corrupt.fill(0xab, 41, 50); // inside the IDAT's deflate stream
    const endless = Buffer.concat([
      rgba.subarray(0, 8),
      Buffer.from([0xff, 0xff, 0xff, 0xf4, 0x61, 0x62, 0x63, 0x64]),
    ]);
    const logos = [
      "data:image/png;base64,bm90IGFuIGltYWdlIGF0IGFsbA==",
      "data:image/png;base64,@@@garbage@@@",
      `data:image/png;base64,${corrupt.toString("base64")}`,
      `data:image/png;base64,${endless.toString("base64")}`,
      `data:image/jpeg;base64,${Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0x00, 0x02]).toString("base64")}`,
      `data:image/svg+xml;base64,${Buffer.from("<svg/>").toString("base64")}`,
      "https://example.test/logo.png",
      "/etc/passwd",
      "",
    ];
    for (const logo of logos) {
      const pdf = await renderInvoicePdf(input({ branding: { ...branding, logo } }));
      expect(hasImage(pdf)).toBe(false);
      expect((await read(pdf)).text).toContain("INV-000042");
    }
  });
});

describe("renderInvoicePdf: a credit note", () => {
  it("renders its title, number, reason and the lines credited", async () => {
    const pdf = await renderInvoicePdf(
      input({
        kind: "credit_note",
        invoice: invoice({ status: "paid", amount_paid: "887.60", paid_at: "2025-03-03T09:30:00.000Z" }),
        credit_note: {
          number: "CN-000007",
          reason: "service_outage",
          memo: "Outage on 12 March, 4 hours",
          created_at: "2025-03-20T10:00:00.000Z",
          lines: [
            { description: "Pro (monthly): outage credit", amount: "120.00" },
            { description: "API requests: refund of retried calls", amount: "4.50" },
          ],
          total: "124.50",
        },
      }),
    );
    const { text, info } = await read(pdf);
    for (const expected of [
      "Credit note",
      "CN-000007",
      "INV-000042",
      "20 Mar 2025",
      "Service outage",
      "Outage on 12 March, 4 hours",
      "Pro (monthly): outage credit",
      "API requests: refund of retried calls",
      "$120.00",
      "$4.50",
      "Total credited",
      "$124.50",
      "Globex Corporation",
      "Page 1 of 1",
    ]) {
      expect(text).toContain(expected);
    }
    expect(text).not.toContain("PAID");
    expect(info?.Title).toBe("Credit note CN-000007");
  });

  it("refuses a credit note without its details", async () => {
    await expect(renderInvoicePdf(input({ kind: "credit_note" }))).rejects.toThrow(/credit_note/);
  });
});
