/**
 * The one layout every e-mail shares: a greeting, a few paragraphs and one action link, as plain
 * text and as HTML. Modules write the words (see modules/auth/emails.ts); this file owns escaping,
 * so a user's name can never become markup in someone's inbox.
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

export interface ActionEmail {
  subject: string;
  /** Shown first, e.g. "Hi Ada,"; may contain user input (escaped in HTML). */
  greeting: string;
  /** Paragraphs before the action. Plain text: escaped in HTML. */
  intro: string[];
  action: { label: string; url: string };
  /** Paragraphs after the action (expiry, "if this wasn't you"). */
  outro: string[];
}

export interface RenderedEmail {
  subject: string;
  text: string;
  html: string;
}

/** Renders the shared layout. Everything given is treated as text; nothing is trusted as HTML. */
export function renderActionEmail(email: ActionEmail): RenderedEmail {
  const text = [email.greeting, ...email.intro, `${email.action.label}: ${email.action.url}`, ...email.outro]
    .join("\n\n")
    .concat("\n");

  const paragraph = (content: string) => `<p style="margin:0 0 16px">${escapeHtml(content)}</p>`;
  const url = escapeHtml(email.action.url);
  const html = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>${escapeHtml(email.subject)}</title></head>
<body style="margin:0;padding:24px;background:#f6f7f9;font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;font-size:15px;line-height:1.5;color:#1f2328">
<div style="max-width:520px;margin:0 auto;background:#ffffff;border-radius:8px;padding:32px">
${[email.greeting, ...email.intro].map(paragraph).join("\n")}
<p style="margin:24px 0"><a href="${url}" style="display:inline-block;background:#1f6feb;color:#ffffff;text-decoration:none;padding:10px 18px;border-radius:6px">${escapeHtml(email.action.label)}</a></p>
<p style="margin:0 0 16px;font-size:13px;color:#57606a">If the button does not work, paste this link into your browser:<br><a href="${url}" style="color:#1f6feb;word-break:break-all">${url}</a></p>
${email.outro.map(paragraph).join("\n")}
</div>
</body>
</html>
`;
  return { subject: email.subject, text, html };
}
