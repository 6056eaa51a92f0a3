import type { Deps } from "../deps.js";
import { type BrandingOut, brandingOf, DEFAULT_COLOR, instanceBranding } from "../modules/orgs/branding.js";

/**
 * The one layout every e-mail shares: the sender's brand (logo and name, a rule in its colour), a
 * greeting, a few paragraphs, an optional action button, a sign-off and the brand's footer (its text
 * and support address), as plain text and as HTML. Modules write the words (see modules/auth/emails.ts);
 * this file owns escaping, so a user's or an org's name can never become markup in someone's inbox.
 *
 * Whose brand: an org's own branding for mail about that org (invitations, billing, quotas, webhooks),
 * the instance's (the seller running Tollgate) for mail about an account (verification, password
 * reset, broadcasts). Tollgate's own name is never put into an e-mail by this layout.
 */

const HTML_ESCAPES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#39;",
};

/** Escapes text for HTML element content and quoted attribute values. */
export function escapeHtml(value: string): string {
  return value.replace(/[&<>"']/g, (ch) => HTML_ESCAPES[ch] ?? ch);
}

/** The branding fields an e-mail uses (an org's or the instance's; see modules/orgs/branding.ts). */
export type EmailBrand = Pick<
  BrandingOut,
  "display_name" | "primary_color" | "logo" | "support_email" | "footer"
>;

/** The org's branding when the mail is about an org, else the instance's (the seller's). */
export async function brandFor(deps: Deps, orgId?: string | null): Promise<BrandingOut> {
  return orgId ? brandingOf(deps, orgId) : instanceBranding(deps);
}

export interface ActionEmail {
  subject: string;
  /** Whose e-mail this is: name (header and sign-off), colour, logo, footer, support address. */
  brand: EmailBrand;
  /** Shown first, e.g. "Hi Ada,"; may contain user input (escaped in HTML). */
  greeting: string;
  /** Paragraphs before the action. Plain text: escaped in HTML. */
  intro: string[];
  /** The button (and its link spelled out); left out, the e-mail has none (a broadcast). */
  action?: { label: string; url: string } | null | undefined;
  /** Paragraphs after the action (expiry, "if this wasn't you"). */
  outro: string[];
  /** Extra lines at the very end of the footer (why the recipient gets this). */
  footnote?: string[] | undefined;
}

export interface RenderedEmail {
  subject: string;
  text: string;
  html: string;
  /** The sender's display name (the brand's), for the From header. */
  fromName: string;
}

/** Stored branding is validated on input; checked again here, since it ends up inside attributes. */
const COLOR = /^#[0-9a-fA-F]{6}$/;
const LOGO = /^data:image\/(png|jpeg);base64,[A-Za-z0-9+/]+={0,2}$/;

const paragraphs = (text: string) =>
  text
    .split(/\r?\n/)
    .map((line) => escapeHtml(line))
    .join("<br>");

/** Renders the shared layout. Everything given is treated as text; nothing is trusted as HTML. */
export function renderActionEmail(email: ActionEmail): RenderedEmail {
  const { brand, action } = email;
  const name = brand.display_name;
  const color = COLOR.test(brand.primary_color) ? brand.primary_color.toLowerCase() : DEFAULT_COLOR;
  const logo = brand.logo && LOGO.test(brand.logo) ? brand.logo : null;
  const footerLines = [
    ...(brand.footer.trim() ? [brand.footer.trim()] : []),
    ...(brand.support_email ? [`Questions? Write to ${brand.support_email}.`] : []),
    ...(email.footnote ?? []),
  ];

  const text = [
    name,
    email.greeting,
    ...email.intro,
    ...(action ? [`${action.label}: ${action.url}`] : []),
    ...email.outro,
    `— ${name}`,
    ...(footerLines.length > 0 ? [`--\n${footerLines.join("\n")}`] : []),
  ]
    .join("\n\n")
    .concat("\n");

  const paragraph = (content: string) => `<p style="margin:0 0 16px">${paragraphs(content)}</p>`;
  const escapedName = escapeHtml(name);
  const header = `<div style="border-bottom:3px solid ${color};padding-bottom:12px;margin-bottom:24px">${
    logo
      ? `<img src="${escapeHtml(logo)}" alt="${escapedName}" height="40" style="display:block;max-height:40px;max-width:200px;margin-bottom:8px;border:0">`
      : ""
  }<span style="font-size:18px;font-weight:600;color:#1f2328">${escapedName}</span></div>`;
  const url = action ? escapeHtml(action.url) : "";
  const button = action
    ? `<p style="margin:24px 0"><a href="${url}" style="display:inline-block;background:${color};color:#ffffff;text-decoration:none;padding:10px 18px;border-radius:6px">${escapeHtml(action.label)}</a></p>
<p style="margin:0 0 16px;font-size:13px;color:#57606a">If the button does not work, paste this link into your browser:<br><a href="${url}" style="color:${color};word-break:break-all">${url}</a></p>
`
    : "";
  const footer: string[] = [];
  if (brand.footer.trim()) footer.push(`<p style="margin:0 0 8px">${paragraphs(brand.footer.trim())}</p>`);
  if (brand.support_email) {
    const address = escapeHtml(brand.support_email);
    footer.push(
      `<p style="margin:0 0 8px">Questions? Write to <a href="mailto:${address}" style="color:${color}">${address}</a>.</p>`,
    );
  }
  for (const line of email.footnote ?? []) footer.push(`<p style="margin:0 0 8px">${paragraphs(line)}</p>`);

  const html = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>${escapeHtml(email.subject)}</title></head>
<body style="margin:0;padding:24px;background:#f6f7f9;font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;font-size:15px;line-height:1.5;color:#1f2328">
<div style="max-width:520px;margin:0 auto;background:#ffffff;border-radius:8px;padding:32px">
${header}
${[email.greeting, ...email.intro].map(paragraph).join("\n")}
${button}${email.outro.map(paragraph).join("\n")}
<p style="margin:24px 0 0">— ${escapedName}</p>
</div>
${
  footer.length > 0
    ? `<div style="max-width:520px;margin:16px auto 0;font-size:12px;color:#57606a;text-align:center">
${footer.join("\n")}
</div>
`
    : ""
}</body>
</html>
`;
  return { subject: email.subject, text, html, fromName: name };
}
