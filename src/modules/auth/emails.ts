import type { EmailMessage } from "../../infra/mailer/types.js";
import { type EmailBrand, renderActionEmail } from "../../lib/email-templates.js";

/**
 * The auth e-mails' words. Links point at the dashboard's pages on TOLLGATE_PUBLIC_URL, which post
 * the token to the API; the token is only ever in the link, never in a subject or a log line. They
 * carry the instance's branding (the seller's, see brandFor): an account is not about any one org.
 */

type AuthEmail = Omit<EmailMessage, "to" | "orgId">;

export const verifyEmailLink = (publicUrl: string, token: string) =>
  `${publicUrl}/verify-email?token=${encodeURIComponent(token)}`;

export const resetPasswordLink = (publicUrl: string, token: string) =>
  `${publicUrl}/reset-password?token=${encodeURIComponent(token)}`;

const greeting = (name: string) => (name.trim() ? `Hi ${name.trim()},` : "Hi,");

export function verifyEmailMessage(input: {
  publicUrl: string;
  name: string;
  token: string;
  validHours: number;
  brand: EmailBrand;
}): AuthEmail {
  return {
    template: "verify_email",
    ...renderActionEmail({
      subject: "Verify your e-mail address",
      brand: input.brand,
      greeting: greeting(input.name),
      intro: [
        "Please confirm that this is your e-mail address, so that we can reach you about your account.",
      ],
      action: { label: "Verify e-mail address", url: verifyEmailLink(input.publicUrl, input.token) },
      outro: [
        `The link works once and expires in ${input.validHours} hours.`,
        "If you did not create an account, you can ignore this message.",
      ],
    }),
  };
}

export function resetPasswordMessage(input: {
  publicUrl: string;
  name: string;
  token: string;
  validMinutes: number;
  brand: EmailBrand;
}): AuthEmail {
  return {
    template: "reset_password",
    ...renderActionEmail({
      subject: "Reset your password",
      brand: input.brand,
      greeting: greeting(input.name),
      intro: ["Someone asked to reset the password of your account. If it was you, choose a new one here:"],
      action: { label: "Choose a new password", url: resetPasswordLink(input.publicUrl, input.token) },
      outro: [
        `The link works once and expires in ${input.validMinutes} minutes. Setting a new password signs you out everywhere.`,
        "If you did not ask for this, ignore this message: your password stays as it is.",
      ],
    }),
  };
}
