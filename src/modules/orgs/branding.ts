import { createRoute, z } from "@hono/zod-openapi";
import { eq } from "drizzle-orm";
import { instanceSettings, orgBranding, orgs } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { errorResponses, jsonBody, jsonResponse } from "../../lib/http.js";
import { recordAudit } from "../audit/service.js";
import { createApiRouter, operatorOnly, requireCaller } from "../auth/caller.js";
import { Email } from "../auth/schemas.js";
import { accessOf, OrgParam, orgAccess } from "./access.js";

/**
 * White-label branding, at two levels, with the same fields (name, colour, logo, support address,
 * footer):
 * - **the instance's** (`GET|PUT /v1/admin/branding`, operator): the seller — the SaaS running
 *   Tollgate. Invoices, credit notes and receipts are issued in its name; Tollgate's own name never
 *   shows. Unset, the name is TOLLGATE_PUBLIC_URL's host.
 * - **an org's** (`GET|PUT /v1/orgs/:org/branding`): how the org's own surfaces look to its members
 *   (the dashboard, e-mails to them). It never changes who issued an invoice: a customer cannot
 *   rewrite the seller's name or legal footer on the invoices addressed to it.
 * The logo is a data: URI (PNG or JPEG, at most 256 KiB): Tollgate never fetches images from
 * elsewhere, so a branding update cannot make it call out.
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

type Stored = {
  display_name?: string | null;
  primary_color?: string | null;
  logo?: string | null;
  support_email?: string | null;
  footer?: string | null;
};

/** Applies an update to stored fields: fields left out are kept, null resets one. */
function merged(stored: Stored, input: z.output<typeof BrandingInput>): Stored {
  const out: Stored = { ...stored };
  for (const [field, value] of Object.entries(input) as [keyof Stored, string | null | undefined][]) {
    if (value === undefined) continue;
    out[field] = field === "primary_color" && value ? value.toLowerCase() : value;
  }
  return out;
}

const INSTANCE_KEY = "branding";

/** The seller's branding: what invoices, credit notes and receipts carry. */
export async function instanceBranding(deps: Deps): Promise<BrandingOut> {
  const [row] = await deps.database.db
    .select({ value: instanceSettings.value })
    .from(instanceSettings)
    .where(eq(instanceSettings.key, INSTANCE_KEY));
  const stored = (row ? JSON.parse(row.value) : {}) as Stored;
  return {
    display_name: stored.display_name ?? new URL(deps.env.publicUrl).hostname,
    primary_color: stored.primary_color ?? DEFAULT_COLOR,
    logo: stored.logo ?? null,
    support_email: stored.support_email ?? null,
    footer: stored.footer ?? "",
    custom: Boolean(row),
  };
}

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
  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/admin/branding",
      tags: ["Admin"],
      summary: "The instance's branding: the seller named on every invoice",
      security: [{ operator: [] }],
      middleware: operatorOnly,
      responses: { 200: jsonResponse(Branding, "The branding in force"), ...errorResponses(401, 403) },
    }),
    async (c) => c.json(await instanceBranding(c.get("deps")), 200),
  );
  router.openapi(
    createRoute({
      method: "put",
      path: "/v1/admin/branding",
      tags: ["Admin"],
      summary: "Set the instance's branding (the seller: name, colour, logo, legal footer)",
      security: [{ operator: [] }],
      middleware: operatorOnly,
      request: { body: jsonBody(BrandingInput) },
      responses: { 200: jsonResponse(Branding, "The branding in force"), ...errorResponses(400, 401, 403) },
    }),
    async (c) => {
      const deps = c.get("deps");
      const input = c.req.valid("json");
      await deps.database.db.transaction(async (tx) => {
        const [row] = await tx
          .select({ value: instanceSettings.value })
          .from(instanceSettings)
          .where(eq(instanceSettings.key, INSTANCE_KEY))
          .for("update");
        const value = JSON.stringify(merged(row ? (JSON.parse(row.value) as Stored) : {}, input));
        const now = deps.clock.now();
        await tx
          .insert(instanceSettings)
          .values({ key: INSTANCE_KEY, value, createdAt: now, updatedAt: now })
          .onConflictDoUpdate({ target: instanceSettings.key, set: { value, updatedAt: now } });
        await recordAudit(tx, {
          orgId: null,
          actor: await requireCaller(c),
          action: "instance.branding_updated",
          metadata: { fields: Object.keys(input) },
        });
      });
      return c.json(await instanceBranding(deps), 200);
    },
  );
  return router;
}
