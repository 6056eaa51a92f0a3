import { inflateSync } from "node:zlib";
import type { Decimal } from "decimal.js";
import PDFDocument from "pdfkit";
import type { invoiceOut } from "./invoices.js";
import { formatMoney, Money, minorUnitDigits, text as plainDecimal } from "./money.js";

/**
 * Invoices and credit notes as PDF documents a customer can forward to their accountant: A4, the
 * operator's white-label branding (name, colour, logo, footer), every amount in the currency's format.
 * Nothing is computed here: the amounts are the invoice's own, already rounded to the minor unit.
 *
 * Built with pdfkit's standard Helvetica, whose encoding is WinAnsi (Latin-1 and a few more):
 * accented Latin letters outside it lose their accent ("ő" prints "o"), anything else prints "?".
 * The same input gives the same bytes (the document dates come from the invoice, not the clock).
 * Dates print in UTC.
 */

export type InvoiceOutput = ReturnType<typeof invoiceOut>;

export interface PdfBranding {
  /** Shown as the issuer's name at the top, e.g. "Acme Inc." */
  display_name: string;
  /** #RRGGBB, used for the header rule/accents and table header */
  primary_color: string;
  /** A data: URI of a PNG or JPEG image, or null. Never fetch URLs. */
  logo: string | null;
  /** Free text printed at the bottom of every page (e.g. legal address, VAT number), may be "" */
  footer: string;
  /** e.g. billing@acme.test or null */
  support_email: string | null;
}

export interface PdfParty {
  name: string;
  email?: string | null;
  lines?: string[] /* address lines */;
}

export interface PdfDocumentInput {
  kind: "invoice" | "credit_note";
  /** The JSON shape the API returns (amounts are decimal strings). */
  invoice: InvoiceOutput;
  /** The org being billed. */
  customer: PdfParty;
  branding: PdfBranding;
  /** For a credit note: its number, reason, the lines credited and the total; absent for an invoice */
  credit_note?:
    | {
        number: string;
        reason: string;
        memo: string | null;
        created_at: string;
        lines: { description: string; amount: string }[];
        total: string;
      }
    | undefined;
}

// ---------------------------------------------------------------------------------------------------
// Text: what the standard fonts can print

/** Code points WinAnsiEncoding has beyond Latin-1 (pdfkit maps these; anything else would corrupt). */
const WIN_ANSI_EXTRA = new Set(
  [
    0x20ac, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160, 0x2039, 0x0152, 0x017d,
    0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x017e,
    0x0178,
  ].map((code) => String.fromCodePoint(code)),
);

/** Letters Unicode does not decompose into a base letter and an accent. */
const FOLDED: Record<string, string> = {
  "\u0141": "L",
  "\u0142": "l",
  "\u0110": "D",
  "\u0111": "d",
  "\u0126": "H",
  "\u0127": "h",
  "\u0131": "i",
  "\u013f": "L",
  "\u0140": "l",
  "\u0166": "T",
  "\u0167": "t",
  "\u2010": "-",
  "\u2011": "-",
  "\u2012": "-",
  "\u2212": "-",
  "\u2032": "'",
  "\u2033": '"',
};

function printable(ch: string): boolean {
  const code = ch.codePointAt(0) ?? 0;
  return (
    (code >= 0x20 && code <= 0x7e) ||
    (code >= 0xa0 && code <= 0xff && code !== 0xad) ||
    WIN_ANSI_EXTRA.has(ch)
  );
}

/**
 * A string the standard fonts print as written: WinAnsi characters are kept, other accented letters
 * lose their accent, whitespace becomes a space, control characters go and anything else is "?".
 */
function winAnsi(value: string, maxLength = 500): string {
  let out = "";
  for (const ch of value.normalize("NFC")) {
    if (out.length >= maxLength) return `${out.trimEnd()}\u2026`;
    if (printable(ch)) {
      out += ch;
      continue;
    }
    if (/\s/u.test(ch)) {
      out += " ";
      continue;
    }
    if (/[\p{Cc}\p{Cf}\p{M}\u00ad]/u.test(ch)) continue;
    const folded = FOLDED[ch] ?? ch.normalize("NFKD").replace(/\p{M}/gu, "").replace(/\s/gu, " ");
    out += folded !== "" && [...folded].every(printable) ? folded : "?";
  }
  return out;
}

/** Free text that may hold line breaks (the footer): each line made printable. */
function winAnsiLines(value: string, maxLines: number): string[] {
  return value
    .split(/\r\n|\r|\n/)
    .map((line) => winAnsi(line, 300).trim())
    .filter((line) => line !== "")
    .slice(0, maxLines);
}

// ---------------------------------------------------------------------------------------------------
// Numbers, money and dates

function decimal(value: unknown): Decimal | null {
  if (typeof value !== "string" && typeof value !== "number") return null;
  try {
    const d = new Money(value);
    return d.isFinite() ? d : null;
  } catch {
    return null;
  }
}

/** "1234567.5" as "1,234,567.5". */
function grouped(fixed: string): string {
  const negative = fixed.startsWith("-");
  const body = negative ? fixed.slice(1) : fixed;
  const [whole = "0", fraction] = body.split(".");
  const digits = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return `${negative ? "-" : ""}${digits}${fraction !== undefined ? `.${fraction}` : ""}`;
}

/** How a currency's amounts are written in English: "$", "€", "CA$", or the code where the symbol would not print. */
function currencyPrefix(currency: string): string {
  const fallback = `${winAnsi(currency, 8)} `;
  try {
    const parts = new Intl.NumberFormat("en-US", { style: "currency", currency }).formatToParts(1);
    const firstDigit = parts.findIndex((part) => part.type === "integer");
    if (firstDigit <= 0) return fallback;
    const prefix = parts
      .slice(0, firstDigit)
      .filter((part) => part.type === "currency" || part.type === "literal")
      .map((part) => part.value.replace(/\s/gu, " "))
      .join("");
    return prefix !== "" && [...prefix].every(printable) ? prefix : fallback;
  } catch {
    return fallback;
  }
}

class MoneyFormat {
  private readonly prefix: string;
  private readonly digits: number;

  constructor(private readonly currency: string) {
    this.prefix = currencyPrefix(currency);
    this.digits = minorUnitDigits(currency);
  }

  /** An amount at the currency's minor unit ("$1,234.50", "-€12.00", "¥500"); `negate` shows a deduction. */
  amount(value: string, negate = false): string {
    const d = decimal(value);
    if (!d) return winAnsi(value, 40);
    return this.write(formatMoney(negate && !d.isZero() ? d.neg() : d, this.currency));
  }

  /** A price as exact as it was set ("$0.0025"), at least to the minor unit ("$49.00"). */
  exact(value: string): string {
    const d = decimal(value);
    if (!d) return winAnsi(value, 40);
    const places = Math.min(Math.max(d.decimalPlaces(), this.digits), 12);
    return this.write(d.toFixed(places, Money.ROUND_HALF_UP));
  }

  private write(fixed: string): string {
    const negative = fixed.startsWith("-");
    return `${negative ? "-" : ""}${this.prefix}${grouped(negative ? fixed.slice(1) : fixed)}`;
  }
}

/** A quantity with digit grouping; shares of a period (proration) to 4 decimal places. */
function quantityText(value: unknown): string {
  const d = decimal(value);
  if (!d) return "";
  return grouped(plainDecimal(d.decimalPlaces() > 4 ? d.toDecimalPlaces(4, Money.ROUND_HALF_UP) : d));
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

function parseDate(iso: string | null | undefined): Date | null {
  if (!iso) return null;
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** "5 Mar 2025" (UTC). */
function dayText(date: Date): string {
  return `${date.getUTCDate()} ${MONTHS[date.getUTCMonth()]} ${date.getUTCFullYear()}`;
}

function dateText(iso: string | null | undefined): string | null {
  const date = parseDate(iso);
  return date ? dayText(date) : null;
}

/** A half-open period [start, end) as the days it covers: "1 Mar 2025 – 31 Mar 2025". */
function periodText(startIso: string, endIso: string): string | null {
  const start = parseDate(startIso);
  const end = parseDate(endIso);
  if (!start || !end) return null;
  const last = new Date(Math.max(end.getTime() - 1, start.getTime()));
  const first = dayText(start);
  const lastDay = dayText(last);
  return first === lastDay ? first : `${first} \u2013 ${lastDay}`;
}

// ---------------------------------------------------------------------------------------------------
// Images: only well-formed PNG and JPEG data, checked before pdfkit sees it

const MAX_LOGO_BYTES = 2 * 1024 * 1024;
const MAX_LOGO_PIXELS = 4_000_000;
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
const PNG_CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };
const PNG_DEPTHS: Record<number, number[]> = {
  0: [1, 2, 4, 8, 16],
  2: [8, 16],
  3: [1, 2, 4, 8],
  4: [8, 16],
  6: [8, 16],
};

/**
 * Whether pdfkit can embed this PNG without failing. Its PNG reader loops forever on some malformed
 * chunk lengths, and the pixel decoding it does for transparency throws from a zlib callback (out of
 * reach of any try/catch) on corrupt data, so the file is walked and its image data inflated and
 * checked here first. Interlaced images are refused (pdfkit's de-interlacing mishandles small ones).
 */
function isUsablePng(data: Buffer): boolean {
  if (data.length < 8 || !data.subarray(0, 8).equals(PNG_SIGNATURE)) return false;
  let pos = 8;
  let header: { width: number; height: number; depth: number; colorType: number } | null = null;
  let palette = false;
  let indexedTransparency = false;
  const idat: Buffer[] = [];
  let ended = false;
  while (!ended) {
    if (pos + 12 > data.length) return false;
    const length = data.readUInt32BE(pos);
    const type = data.toString("latin1", pos + 4, pos + 8);
    const start = pos + 8;
    const next = start + length + 4;
    if (length > 0x7fffffff || next > data.length) return false;
    if (header === null && type !== "IHDR") return false;
    switch (type) {
      case "IHDR": {
        if (header !== null || length !== 13) return false;
        const width = data.readUInt32BE(start);
        const height = data.readUInt32BE(start + 4);
        const depth = data[start + 8] ?? 0;
        const colorType = data[start + 9] ?? 0;
        const [compression, filter, interlace] = [data[start + 10], data[start + 11], data[start + 12]];
        if (width === 0 || height === 0 || width * height > MAX_LOGO_PIXELS) return false;
        if (!PNG_DEPTHS[colorType]?.includes(depth)) return false;
        if (compression !== 0 || filter !== 0 || interlace !== 0) return false;
        header = { width, height, depth, colorType };
        break;
      }
      case "PLTE":
        if (length === 0 || length % 3 !== 0 || length > 768) return false;
        palette = true;
        break;
      case "tRNS":
        if (header?.colorType === 3) indexedTransparency = true;
        break;
      case "IDAT":
        idat.push(data.subarray(start, start + length));
        break;
      case "IEND":
        ended = true;
        break;
    }
    pos = next;
  }
  if (!header || idat.length === 0) return false;
  if (header.colorType === 3 && !palette) return false;
  // pdfkit decodes pixels for alpha channels and indexed transparency, in whole bytes per pixel only.
  const bits = (PNG_CHANNELS[header.colorType] ?? 1) * header.depth;
  if (indexedTransparency && header.depth !== 8) return false;
  const rowBytes = Math.ceil((header.width * bits) / 8);
  const expected = header.height * (rowBytes + 1);
  let pixels: Buffer;
  try {
    pixels = inflateSync(Buffer.concat(idat), { maxOutputLength: expected + 1024 });
  } catch {
    return false;
  }
  if (pixels.length < expected) return false;
  for (let row = 0; row < header.height; row++) {
    if ((pixels[row * (rowBytes + 1)] ?? 255) > 4) return false;
  }
  return true;
}

/** Start-of-frame markers: the segment that gives a JPEG's dimensions. */
const JPEG_FRAMES = new Set([0xc0, 0xc1, 0xc2, 0xc3, 0xc5, 0xc6, 0xc7, 0xc9, 0xca, 0xcb, 0xcd, 0xce, 0xcf]);

/** Whether this is a JPEG whose frame header pdfkit can read (the image data is the viewer's to decode). */
function isUsableJpeg(data: Buffer): boolean {
  if (data.length < 4 || data[0] !== 0xff || data[1] !== 0xd8) return false;
  let pos = 2;
  while (pos + 4 <= data.length) {
    if (data[pos] !== 0xff) return false;
    const marker = data[pos + 1] ?? 0;
    if (marker === 0xff) {
      pos += 1;
      continue;
    }
    if (marker === 0xd8 || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      pos += 2;
      continue;
    }
    if (marker === 0xd9 || marker === 0xda) return false;
    const length = data.readUInt16BE(pos + 2);
    if (length < 2 || pos + 2 + length > data.length) return false;
    if (JPEG_FRAMES.has(marker)) {
      if (length < 8) return false;
      const height = data.readUInt16BE(pos + 5);
      const width = data.readUInt16BE(pos + 7);
      const components = data[pos + 9];
      return (
        width > 0 &&
        height > 0 &&
        width * height <= MAX_LOGO_PIXELS * 4 &&
        (components === 1 || components === 3 || components === 4)
      );
    }
    pos += 2 + length;
  }
  return false;
}

/** The logo's image bytes, or null when there is none or it is not a well-formed PNG or JPEG data URI. */
function decodeLogo(uri: string | null): Buffer | null {
  if (!uri || uri.length > MAX_LOGO_BYTES * 1.4 + 100) return null;
  const match = /^data:image\/(?:png|jpe?g|pjpeg)(?:;[\w.+-]+=[^;,]*)*;base64,([A-Za-z0-9+/=\s]+)$/i.exec(
    uri.trim(),
  );
  if (!match?.[1]) return null;
  const bytes = Buffer.from(match[1].replace(/\s+/g, ""), "base64");
  if (bytes.length === 0 || bytes.length > MAX_LOGO_BYTES) return null;
  return isUsablePng(bytes) || isUsableJpeg(bytes) ? bytes : null;
}

// ---------------------------------------------------------------------------------------------------
// What the document says, before it is laid out

interface TableRow {
  description: string;
  /** Smaller lines under the description: the tiers, the period. */
  notes: string[];
  quantity: string;
  unitPrice: string;
  amount: string;
}

interface TotalRow {
  label: string;
  value: string;
  strong?: boolean;
}

interface DocumentView {
  title: string;
  number: string;
  issuer: { name: string; email: string | null };
  customer: { name: string; lines: string[] };
  meta: [string, string][];
  badge: { text: string; color: string } | null;
  /** Paragraphs between the header and the table (a credit note's reason and memo). */
  remarks: [string, string][];
  /** Invoices show quantity and unit price; a credit note lists amounts only. */
  detailed: boolean;
  rows: TableRow[];
  totals: TotalRow[];
  closing: string[];
  footer: string[];
  info: { Title: string; Author: string; Subject: string; CreationDate: Date };
}

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value);

/** The lines under a usage line's description: how tiers, packages and bounds made the amount. */
function lineNotes(
  line: InvoiceOutput["lines"][number],
  invoice: InvoiceOutput,
  money: MoneyFormat,
): string[] {
  const notes: string[] = [];
  const details = isRecord(line.details) ? line.details : {};
  if (
    (line.kind === "usage" || line.kind === "minimum_spend") &&
    (line.period_start !== invoice.period_start || line.period_end !== invoice.period_end)
  ) {
    const period = periodText(line.period_start, line.period_end);
    if (period) notes.push(`Period: ${period}`);
  }
  const tiers = Array.isArray(details.tiers) ? details.tiers.filter(isRecord).slice(0, 20) : [];
  for (const tier of tiers) {
    const units = decimal(tier.units);
    const flat = decimal(tier.flat_amount);
    if ((!units || units.isZero()) && (!flat || flat.isZero()) && tiers.length > 1) continue;
    const from = decimal(tier.from);
    const upTo = decimal(tier.up_to);
    const range =
      upTo === null
        ? `over ${quantityText(tier.from)}`
        : from === null || from.isZero()
          ? `up to ${quantityText(tier.up_to)}`
          : `${quantityText(tier.from)} to ${quantityText(tier.up_to)}`;
    const name = typeof tier.tier === "number" ? `Tier ${tier.tier}` : "Tier";
    let price = quantityText(tier.units);
    if (typeof tier.unit_amount === "string" || typeof tier.unit_amount === "number") {
      price += ` \u00d7 ${money.exact(String(tier.unit_amount))}`;
    } else if (typeof tier.rate === "string" || typeof tier.rate === "number") {
      price += ` at ${quantityText(tier.rate)}%`;
    }
    if (flat && !flat.isZero()) price += ` + ${money.exact(plainDecimal(flat))} flat`;
    const amount = decimal(tier.amount);
    notes.push(`${name} (${range}): ${price}${amount ? ` = ${money.exact(plainDecimal(amount))}` : ""}`);
  }
  if (typeof details.packages === "string" || typeof details.packages === "number") {
    notes.push(`${quantityText(details.packages)} package(s)`);
  }
  const percentage = details.percentage;
  if (isRecord(percentage) && typeof percentage.transactions === "number") {
    const paying = typeof percentage.paying_transactions === "number" ? percentage.paying_transactions : null;
    notes.push(
      paying === null
        ? `${grouped(String(percentage.transactions))} transactions`
        : `${grouped(String(paying))} of ${grouped(String(percentage.transactions))} transactions charged`,
    );
  }
  if (details.capped === true) notes.push("Capped at the charge's maximum amount");
  return notes.map((note) => winAnsi(note, 200));
}

function statusBadge(status: string): DocumentView["badge"] {
  switch (status) {
    case "paid":
      return { text: "PAID", color: "#047857" };
    case "void":
      return { text: "VOID", color: "#B91C1C" };
    case "draft":
      return { text: "DRAFT", color: "#6B7280" };
    default:
      return null;
  }
}

function buildView(input: PdfDocumentInput): DocumentView {
  const { invoice, branding, customer } = input;
  const money = new MoneyFormat(invoice.currency);
  const issuerName = winAnsi(branding.display_name, 120) || "Invoice";
  const supportEmail = branding.support_email ? winAnsi(branding.support_email, 120) : null;
  const invoiceNumber = invoice.number ? winAnsi(invoice.number, 60) : null;
  const issued = invoice.finalized_at ?? invoice.created_at;
  const period = periodText(invoice.period_start, invoice.period_end);
  const customerLines = [
    ...(customer.email ? [winAnsi(customer.email, 120)] : []),
    ...(customer.lines ?? []).slice(0, 8).map((line) => winAnsi(line, 120)),
  ].filter((line) => line.trim() !== "");
  const footer = [
    ...winAnsiLines(branding.footer ?? "", 4),
    ...(supportEmail ? [`Questions? ${supportEmail}`] : []),
  ];
  const base = {
    issuer: { name: issuerName, email: supportEmail },
    customer: { name: winAnsi(customer.name, 120) || "-", lines: customerLines },
    footer,
  };

  if (input.kind === "credit_note") {
    const note = input.credit_note;
    if (!note) throw new Error("A credit note PDF needs `credit_note`.");
    const number = winAnsi(note.number, 60);
    const meta: [string, string][] = [["Credit note number", number]];
    const created = dateText(note.created_at);
    if (created) meta.push(["Issue date", created]);
    meta.push(["Original invoice", invoiceNumber ?? "Draft"]);
    const invoiceDate = dateText(issued);
    if (invoiceDate) meta.push(["Invoice date", invoiceDate]);
    if (period) meta.push(["Service period", period]);
    const reason = winAnsi(note.reason.replace(/_/g, " "), 300).trim();
    const remarks: [string, string][] = [["Reason", reason.charAt(0).toUpperCase() + reason.slice(1)]];
    if (note.memo) remarks.push(["Memo", winAnsi(note.memo, 1000)]);
    return {
      ...base,
      title: "Credit note",
      number,
      meta,
      badge: null,
      remarks,
      detailed: false,
      rows: note.lines.map((line) => ({
        description: winAnsi(line.description, 600),
        notes: [],
        quantity: "",
        unitPrice: "",
        amount: money.amount(line.amount),
      })),
      totals: [{ label: "Total credited", value: money.amount(note.total), strong: true }],
      closing: [
        `This credit note reduces the amount of invoice ${invoiceNumber ?? "(draft)"}. All amounts in ${winAnsi(invoice.currency, 8)}.`,
        ...(supportEmail ? [`Questions about this credit note? Contact ${supportEmail}.`] : []),
      ],
      info: {
        Title: `Credit note ${note.number}`,
        Author: branding.display_name,
        Subject: `Credit note ${note.number} for ${customer.name}`,
        CreationDate: parseDate(note.created_at) ?? parseDate(issued) ?? new Date(0),
      },
    };
  }

  const meta: [string, string][] = [["Invoice number", invoiceNumber ?? "Draft"]];
  const issueDate = dateText(issued);
  if (issueDate) meta.push(["Issue date", issueDate]);
  const due = dateText(invoice.due_at);
  if (due && invoice.status !== "void") meta.push(["Due date", due]);
  if (period) meta.push(["Service period", period]);
  const paid = dateText(invoice.paid_at);
  if (invoice.status === "paid" && paid) meta.push(["Paid on", paid]);
  const voided = dateText(invoice.voided_at);
  if (invoice.status === "void" && voided) meta.push(["Voided on", voided]);

  const totals: TotalRow[] = [{ label: "Subtotal", value: money.amount(invoice.subtotal) }];
  for (const discount of invoice.discounts) {
    totals.push({
      label: `Discount (${winAnsi(discount.code, 24)})`,
      value: money.amount(discount.amount, true),
    });
  }
  if (invoice.discounts.length === 0 && !(decimal(invoice.discount)?.isZero() ?? true)) {
    totals.push({ label: "Discount", value: money.amount(invoice.discount, true) });
  }
  totals.push({ label: "Total", value: money.amount(invoice.total), strong: true });
  if (!(decimal(invoice.credits_applied)?.isZero() ?? true)) {
    totals.push({ label: "Credits applied", value: money.amount(invoice.credits_applied, true) });
  }
  totals.push({ label: "Amount due", value: money.amount(invoice.amount_due), strong: true });
  if (!(decimal(invoice.amount_credited)?.isZero() ?? true)) {
    totals.push({ label: "Credit notes", value: money.amount(invoice.amount_credited, true) });
  }
  totals.push({ label: "Amount paid", value: money.amount(invoice.amount_paid) });
  if (invoice.status === "finalized") {
    totals.push({ label: "Left to pay", value: money.amount(invoice.amount_remaining), strong: true });
  }

  const closing = [`All amounts in ${winAnsi(invoice.currency, 8)}. Dates are in UTC.`];
  if (invoice.status === "void") closing.unshift("This invoice has been voided and is not payable.");
  else if (invoice.status === "paid") closing.unshift(`Paid in full${paid ? ` on ${paid}` : ""}. Thank you.`);
  else if (invoice.status === "draft") closing.unshift("This is a draft: its amounts may still change.");
  if (supportEmail) closing.push(`Questions about this invoice? Contact ${supportEmail}.`);

  const label = invoice.number ?? "(draft)";
  return {
    ...base,
    title: "Invoice",
    number: invoiceNumber ?? "Draft",
    meta,
    badge: statusBadge(invoice.status),
    remarks: [],
    detailed: true,
    rows: invoice.lines.map((line) => ({
      description: winAnsi(line.description, 600),
      notes: lineNotes(line, invoice, money),
      quantity: line.kind === "minimum_spend" ? "" : quantityText(line.quantity),
      unitPrice: line.unit_amount === null ? "" : money.exact(line.unit_amount),
      amount: money.amount(line.amount),
    })),
    totals,
    closing,
    info: {
      Title: `Invoice ${label}`,
      Author: branding.display_name,
      Subject: `Invoice ${label} for ${customer.name}`,
      CreationDate: parseDate(issued) ?? new Date(0),
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// Layout

const PAGE_WIDTH = 595.28; // A4, points
const PAGE_HEIGHT = 841.89;
const MARGIN = 48;
const CONTENT_WIDTH = PAGE_WIDTH - 2 * MARGIN;
const RIGHT = PAGE_WIDTH - MARGIN;
const FOOTER_TOP = PAGE_HEIGHT - 66;
const CONTENT_BOTTOM = FOOTER_TOP - 14;

const INK = "#111827";
const MUTED = "#6B7280";
const HAIRLINE = "#E5E7EB";
const REGULAR = "Helvetica";
const BOLD = "Helvetica-Bold";
const FALLBACK_COLOR = "#111827";

const CELL_PAD = 6;
const AMOUNT_WIDTH = 96;
const UNIT_WIDTH = 96;
const QTY_WIDTH = 66;

/** The brand colour, or the neutral default when it is not #RRGGBB. */
function brandColor(value: string): string {
  return /^#[0-9a-f]{6}$/i.test(value.trim()) ? value.trim().toUpperCase() : FALLBACK_COLOR;
}

/** Dark text on a light brand colour, white on a dark one (relative luminance, WCAG). */
function textOn(color: string): string {
  const channel = (offset: number) => {
    const c = Number.parseInt(color.slice(offset, offset + 2), 16) / 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  };
  const luminance = 0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5);
  return luminance > 0.45 ? INK : "#FFFFFF";
}

interface TextStyle {
  font?: string;
  size?: number;
  color?: string;
  align?: "left" | "right" | "center";
}

class Layout {
  private readonly color: string;
  private readonly headerText: string;
  private y = MARGIN;

  constructor(
    private readonly doc: PDFKit.PDFDocument,
    private readonly view: DocumentView,
    private readonly logo: Buffer | null,
    primaryColor: string,
  ) {
    this.color = brandColor(primaryColor);
    this.headerText = textOn(this.color);
  }

  render(): void {
    this.doc.addPage();
    this.firstPageHeader();
    this.remarks();
    this.table();
    this.totals();
    this.closing();
    this.footers();
  }

  // Text helpers: x, y and width always given, so pdfkit never moves to a page on its own.

  private style(style: TextStyle): void {
    this.doc
      .font(style.font ?? REGULAR)
      .fontSize(style.size ?? 9)
      .fillColor(style.color ?? INK);
  }

  private height(value: string, width: number, style: TextStyle = {}): number {
    this.style(style);
    return this.doc.heightOfString(value, { width, lineGap: 1 });
  }

  /** Writes wrapped text; returns its height. */
  private write(value: string, x: number, y: number, width: number, style: TextStyle = {}): number {
    const height = this.height(value, width, style);
    this.doc.text(value, x, y, { width, lineGap: 1, align: style.align ?? "left" });
    return height;
  }

  /** Writes one line, never wrapped (numbers, labels). */
  private line(value: string, x: number, y: number, width: number, style: TextStyle = {}): void {
    this.style(style);
    this.doc.text(value, x, y, { width, lineBreak: false, align: style.align ?? "left" });
  }

  private rule(y: number, color = HAIRLINE, thickness = 0.75): void {
    this.doc
      .save()
      .moveTo(MARGIN, y)
      .lineTo(RIGHT, y)
      .lineWidth(thickness)
      .strokeColor(color)
      .stroke()
      .restore();
  }

  private newPage(): void {
    this.doc.addPage();
    const view = this.view;
    const name =
      view.issuer.name.length > 48 ? `${view.issuer.name.slice(0, 47).trimEnd()}\u2026` : view.issuer.name;
    this.line(name, MARGIN, MARGIN, CONTENT_WIDTH / 2, { font: BOLD, size: 10 });
    this.line(
      `${view.title} ${view.number} (continued)`,
      MARGIN + CONTENT_WIDTH / 2,
      MARGIN,
      CONTENT_WIDTH / 2,
      {
        size: 9,
        color: MUTED,
        align: "right",
      },
    );
    this.rule(MARGIN + 18, this.color, 1.5);
    this.y = MARGIN + 30;
  }

  /** Room for `height` more points on this page, or a new page. Returns whether a page was added. */
  private ensure(height: number): boolean {
    if (this.y + height <= CONTENT_BOTTOM) return false;
    this.newPage();
    return true;
  }

  private firstPageHeader(): void {
    const view = this.view;
    const top = 40;
    let left = top;
    if (this.logo) {
      try {
        this.doc.image(this.logo, MARGIN, top, { fit: [120, 48] });
        left += 56;
      } catch {
        // A logo pdfkit cannot read is left out rather than failing the invoice.
      }
    }
    left += this.write(view.issuer.name, MARGIN, left, 270, { font: BOLD, size: 15 });
    if (view.issuer.email) {
      left += 2 + this.write(view.issuer.email, MARGIN, left + 2, 270, { size: 8.5, color: MUTED });
    }

    const rightX = RIGHT - 220;
    let right = top;
    right += this.write(view.title, rightX, right, 220, {
      font: BOLD,
      size: 22,
      color: this.color,
      align: "right",
    });
    right += 2 + this.write(view.number, rightX, right + 2, 220, { size: 10, color: MUTED, align: "right" });
    if (view.badge) {
      this.style({ font: BOLD, size: 12 });
      const width = this.doc.widthOfString(view.badge.text) + 18;
      const badgeY = right + 8;
      this.doc
        .save()
        .roundedRect(RIGHT - width, badgeY, width, 22, 4)
        .lineWidth(1.5)
        .strokeColor(view.badge.color)
        .stroke()
        .restore();
      this.line(view.badge.text, RIGHT - width, badgeY + 6, width, {
        font: BOLD,
        size: 12,
        color: view.badge.color,
        align: "center",
      });
      right = badgeY + 22;
    }

    const ruleY = Math.max(left, right) + 14;
    this.rule(ruleY, this.color, 2);

    // Billed to (left) and the document's facts (right).
    const blockTop = ruleY + 16;
    let billed = blockTop;
    this.line("BILLED TO", MARGIN, billed, 240, { font: BOLD, size: 7.5, color: MUTED });
    billed += 12;
    billed += this.write(view.customer.name, MARGIN, billed, 240, { font: BOLD, size: 10.5 });
    for (const line of view.customer.lines) {
      billed += 1 + this.write(line, MARGIN, billed + 1, 240, { size: 9, color: "#374151" });
    }

    const labelX = MARGIN + 265;
    const labelWidth = 95;
    const valueX = labelX + labelWidth + 6;
    const valueWidth = RIGHT - valueX;
    let facts = blockTop;
    for (const [label, value] of view.meta) {
      this.line(label, labelX, facts, labelWidth, { size: 8.5, color: MUTED });
      facts += Math.max(
        12,
        this.write(value, valueX, facts, valueWidth, { font: BOLD, size: 9, align: "right" }),
      );
      facts += 3;
    }
    this.y = Math.max(billed, facts) + 22;
  }

  private remarks(): void {
    for (const [label, value] of this.view.remarks) {
      const height = this.height(value, CONTENT_WIDTH - 70, { size: 9 });
      this.ensure(height + 6);
      this.line(label, MARGIN, this.y, 66, { font: BOLD, size: 9, color: MUTED });
      this.y += this.write(value, MARGIN + 70, this.y, CONTENT_WIDTH - 70, { size: 9 }) + 6;
    }
    if (this.view.remarks.length > 0) this.y += 10;
  }

  private get descriptionWidth(): number {
    return this.view.detailed
      ? CONTENT_WIDTH - QTY_WIDTH - UNIT_WIDTH - AMOUNT_WIDTH
      : CONTENT_WIDTH - AMOUNT_WIDTH;
  }

  private tableHeader(): void {
    const y = this.y;
    this.doc.save().rect(MARGIN, y, CONTENT_WIDTH, 20).fillColor(this.color).fill().restore();
    const style: TextStyle = { font: BOLD, size: 8.5, color: this.headerText };
    const textY = y + 6.5;
    const descWidth = this.descriptionWidth;
    this.line("Description", MARGIN + CELL_PAD, textY, descWidth - 2 * CELL_PAD, style);
    if (this.view.detailed) {
      const qtyX = MARGIN + descWidth;
      this.line("Qty", qtyX, textY, QTY_WIDTH - CELL_PAD, { ...style, align: "right" });
      this.line("Unit price", qtyX + QTY_WIDTH, textY, UNIT_WIDTH - CELL_PAD, { ...style, align: "right" });
    }
    this.line("Amount", RIGHT - AMOUNT_WIDTH, textY, AMOUNT_WIDTH - CELL_PAD, { ...style, align: "right" });
    this.y = y + 20;
  }

  private table(): void {
    const descWidth = this.descriptionWidth - 2 * CELL_PAD;
    const noteStyle: TextStyle = { size: 7.5, color: MUTED };
    this.ensure(20 + 40);
    this.tableHeader();
    if (this.view.rows.length === 0) {
      this.line("No charges.", MARGIN + CELL_PAD, this.y + 8, descWidth, { color: MUTED });
      this.y += 26;
      this.rule(this.y);
      return;
    }
    for (const row of this.view.rows) {
      const descHeight = this.height(row.description, descWidth, { size: 9 });
      const notesHeight = row.notes.reduce(
        (sum, note) => sum + 1 + this.height(note, descWidth, noteStyle),
        0,
      );
      const height = Math.max(descHeight + notesHeight, 11) + 2 * CELL_PAD + 1;
      if (this.ensure(height)) this.tableHeader();
      const top = this.y + CELL_PAD + 1;
      let y = top + this.write(row.description, MARGIN + CELL_PAD, top, descWidth, { size: 9 });
      for (const note of row.notes) {
        y += 1 + this.write(note, MARGIN + CELL_PAD, y + 1, descWidth, noteStyle);
      }
      if (this.view.detailed) {
        const qtyX = MARGIN + this.descriptionWidth;
        this.line(row.quantity, qtyX, top, QTY_WIDTH - CELL_PAD, { size: 9, align: "right" });
        this.line(row.unitPrice, qtyX + QTY_WIDTH, top, UNIT_WIDTH - CELL_PAD, { size: 9, align: "right" });
      }
      this.line(row.amount, RIGHT - AMOUNT_WIDTH, top, AMOUNT_WIDTH - CELL_PAD, { size: 9, align: "right" });
      this.y += height;
      this.rule(this.y);
    }
  }

  private totals(): void {
    const rows = this.view.totals;
    const rowHeight = 17;
    this.y += 10;
    this.ensure(rows.length * rowHeight + 10);
    const labelX = RIGHT - 270;
    const labelWidth = 170;
    rows.forEach((row, i) => {
      if (row.strong && i > 0) this.rule(this.y - 3);
      const style: TextStyle = row.strong ? { font: BOLD, size: 10 } : { size: 9, color: "#374151" };
      this.line(row.label, labelX, this.y + 1, labelWidth, style);
      this.line(row.value, labelX + labelWidth, this.y + 1, 270 - labelWidth - CELL_PAD, {
        ...style,
        color: row.strong ? INK : style.color,
        align: "right",
      });
      this.y += rowHeight;
    });
    this.y += 6;
  }

  private closing(): void {
    const lines = this.view.closing;
    if (lines.length === 0) return;
    this.y += 14;
    const height = lines.reduce((sum, line) => sum + 2 + this.height(line, CONTENT_WIDTH, { size: 8.5 }), 0);
    this.ensure(height);
    for (const line of lines) {
      this.y += 2 + this.write(line, MARGIN, this.y, CONTENT_WIDTH, { size: 8.5, color: MUTED });
    }
  }

  /** Every page's footer: the operator's text, the support address, "Page X of Y". */
  private footers(): void {
    const range = this.doc.bufferedPageRange();
    const footer = this.view.footer.join("\n");
    const textWidth = CONTENT_WIDTH - 90;
    for (let i = 0; i < range.count; i++) {
      this.doc.switchToPage(range.start + i);
      this.rule(FOOTER_TOP, HAIRLINE, 0.75);
      if (footer !== "") {
        this.style({ size: 7.5, color: MUTED });
        this.doc.text(footer, MARGIN, FOOTER_TOP + 8, {
          width: textWidth,
          height: PAGE_HEIGHT - FOOTER_TOP - 20,
          lineGap: 1,
          ellipsis: true,
        });
      }
      this.line(`Page ${i + 1} of ${range.count}`, RIGHT - 86, FOOTER_TOP + 8, 86, {
        size: 7.5,
        color: MUTED,
        align: "right",
      });
    }
  }
}

/**
 * An invoice or credit note as a PDF (A4). The logo, when given, must be a PNG or JPEG data URI; one
 * that does not decode is left out. Deterministic: the same input gives the same bytes.
 */
export async function renderInvoicePdf(input: PdfDocumentInput): Promise<Buffer> {
  const view = buildView(input);
  const logo = decodeLogo(input.branding.logo);
  const strip = (value: string) => value.replace(/[\p{Cc}]/gu, " ").slice(0, 300);
  const doc = new PDFDocument({
    size: "A4",
    margin: 0,
    bufferPages: true,
    autoFirstPage: false,
    displayTitle: true,
    lang: "en",
    info: {
      Title: strip(view.info.Title),
      Author: strip(view.info.Author),
      Subject: strip(view.info.Subject),
      Creator: "Tollgate",
      CreationDate: view.info.CreationDate,
      ModDate: view.info.CreationDate,
    },
  });
  const done = new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    doc.on("data", (chunk: Buffer) => chunks.push(chunk));
    doc.on("end", () => resolve(Buffer.concat(chunks)));
    doc.on("error", reject);
  });
  new Layout(doc, view, logo, input.branding.primary_color).render();
  doc.end();
  return done;
}
