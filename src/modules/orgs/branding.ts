import { createRoute, z } from "@hono/zod-openapi";
import { eq } from "drizzle-orm";
import { orgBranding, orgs } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { errorResponses, jsonBody, jsonResponse } from "../../lib/http.js";
import { recordAudit } from "../audit/service.js";
import { createApiRouter } from "../auth/caller.js";
import { Email } from "../auth/schemas.js";
import { accessOf, OrgParam, orgAccess } from "./access.js";

/**
 * White-label branding: `GET|PUT /v1/orgs/:org/branding`. The name, colour, logo, support address and
 * footer an org's invoices (and, later, its e-mails and dashboard) carry. Unset fields fall back to
 * the org's name and Tollgate's defaults. The logo is a data: URI (PNG or JPEG, at most 256 KiB):
 * Tollgate never fetches images from elsewhere, so a branding update cannot make it call out.
 */

export const DEFAULT_COLOR = "#1a56db";
const MAX_LOGO_CHARS = Math.ceil((256 * 1024 * 4) / 3) + 32;

export const BrandingInput = z
  .strictObject({
    display_name: z.string().trim().min(1).max(120).nullable().optional(),
    primary_color: z
      .string()
      .regex(/^#[0-9a-fA-F]{6}$/, "must be a colour like #1a56db")
      .nullable()
      .optional(),
    logo: z
      .string()
      .max(MAX_LOGO_CHARS, "must be at most 256 KiB")
      .regex(/^data:image\/(png|jpeg);base64,[A-Za-z0-9+/]+={0,2}$/, "must be a data: URI of a PNG or JPEG")
      .nullable()
      .optional(),
    support_email: Email.nullable().optional(),
    footer: z.string().max(500).nullable().optional(),
  })
  .openapi("BrandingUpdate");

export const Branding = z
  .object({
    display_name: z.string(),
    primary_color: z.string(),
    logo: z.string().nullable(),
    support_email: z.string().nullable(),
    footer: z.string(),
    custom: z.boolean().openapi({ description: "False while the org has set nothing (all defaults)." }),
  })
  .openapi("Branding");

export type BrandingOut = z.infer<typeof Branding>;

export async function brandingOf(deps: Deps, orgId: string): Promise<BrandingOut> {
  const [row] = await deps.database.db
    .select({ branding: orgBranding, name: orgs.name })
    .from(orgs)
    .leftJoin(orgBranding, eq(orgBranding.orgId, orgs.id))
    .where(eq(orgs.id, orgId));
  if (!row) throw new AppError("not_found", `No organization ${orgId}.`);
  const b = row.branding;
  return {
    display_name: b?.displayName ?? row.name,
    primary_color: b?.primaryColor ?? DEFAULT_COLOR,
    logo: b?.logo ?? null,
    support_email: b?.supportEmail ?? null,
    footer: b?.footer ?? "",
    custom: Boolean(b),
  };
}

const security: Record<string, string[]>[] = [{ bearer: [] }, { operator: [] }];

export function brandingRoutes() {
  const router = createApiRouter();
  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/branding",
      tags: ["Orgs"],
      summary: "The org's white-label branding",
      security,
      middleware: orgAccess("org:read"),
      request: { params: OrgParam },
      responses: { 200: jsonResponse(Branding, "The branding in force"), ...errorResponses(401, 403, 404) },
    }),
    async (c) => c.json(await brandingOf(c.get("deps"), accessOf(c).orgId), 200),
  );
  router.openapi(
    createRoute({
      method: "put",
      path: "/v1/orgs/{org}/branding",
      tags: ["Orgs"],
      summary: "Set the org's white-label branding (fields left out are kept; null resets one)",
      security,
      middleware: orgAccess("org:update"),
      request: { params: OrgParam, body: jsonBody(BrandingInput) },
      responses: {
        200: jsonResponse(Branding, "The branding in force"),
        ...errorResponses(400, 401, 403, 404),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const access = accessOf(c);
      const input = c.req.valid("json");
      const set: Partial<typeof orgBranding.$inferInsert> = {};
      if (input.display_name !== undefined) set.displayName = input.display_name;
      if (input.primary_color !== undefined) set.primaryColor = input.primary_color?.toLowerCase() ?? null;
      if (input.logo !== undefined) set.logo = input.logo;
      if (input.support_email !== undefined) set.supportEmail = input.support_email;
      if (input.footer !== undefined) set.footer = input.footer;
      const now = deps.clock.now();
      await deps.database.db.transaction(async (tx) => {
        await tx
          .insert(orgBranding)
          .values({ orgId: access.orgId, ...set, updatedAt: now })
          .onConflictDoUpdate({ target: orgBranding.orgId, set: { ...set, updatedAt: now } });
        await recordAudit(tx, {
          orgId: access.orgId,
          actor: access.caller,
          action: "org.branding_updated",
          // The logo itself is not copied into the audit trail.
          metadata: { fields: Object.keys(input) },
        });
      });
      return c.json(await brandingOf(deps, access.orgId), 200);
    },
  );
  return router;
}
