import type { Deps } from "../../deps.js";
import { renderActionEmail } from "../../lib/email-templates.js";

/** The invitation e-mail: the link carries the single-use token. */
export function invitationEmail(deps: Deps, orgName: string, role: string, token: string) {
  return {
    ...renderActionEmail({
      subject: `You are invited to ${orgName} on Tollgate`,
      greeting: "Hello,",
      intro: [`You have been invited to join ${orgName} as ${role}.`],
      action: {
        label: "Accept the invitation",
        url: `${deps.env.publicUrl}/invitations/${encodeURIComponent(token)}`,
      },
      outro: ["The link works once and expires in 7 days. If you did not expect it, ignore this e-mail."],
    }),
    template: "invitation",
  };
}
