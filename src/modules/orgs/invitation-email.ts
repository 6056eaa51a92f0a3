import type { Deps } from "../../deps.js";
import { brandFor, renderActionEmail } from "../../lib/email-templates.js";

/**
 * The invitation e-mail, in the inviting org's branding: the link carries the single-use token.
 * The product is named by the org's brand (its display name), never as Tollgate; when the brand's
 * name is the org's own, it is not said twice.
 */
export async function invitationEmail(
  deps: Deps,
  org: { id: string; name: string },
  role: string,
  token: string,
) {
  const brand = await brandFor(deps, org.id);
  const on = brand.display_name === org.name ? "" : ` on ${brand.display_name}`;
  return {
    ...renderActionEmail({
      subject: `You are invited to ${org.name}${on}`,
      brand,
      greeting: "Hello,",
      intro: [`You have been invited to join ${org.name}${on} as ${role}.`],
      action: {
        label: "Accept the invitation",
        url: `${deps.env.publicUrl}/invitations/${encodeURIComponent(token)}`,
      },
      outro: ["The link works once and expires in 7 days. If you did not expect it, ignore this e-mail."],
    }),
    template: "invitation",
  };
}
