import { createRoute, z } from "@hono/zod-openapi";
import { sql } from "drizzle-orm";
import { errorResponses, jsonResponse } from "../../lib/http.js";
import { createApiRouter, platformAdminOnly } from "../auth/caller.js";

/**
 * The instance's orgs and users for the operator's pages, newest first, with a search over names,
 * e-mail addresses and ids, paged by `next_before` (the last id of a page). Deleted orgs are left out.
 */

const security: Record<string, string[]>[] = [{ operator: [] }, { bearer: [] }];

const Query = z.object({
  q: z
    .string()
    .trim()
    .max(200)
    .optional()
    .openapi({ description: "Part of a name, an e-mail address or an id." }),
  before: z.string().max(64).optional().openapi({ description: "A page's `next_before`." }),
  limit: z.coerce.number().int().min(1).max(200).default(50),
});

const AdminOrg = z
  .object({
    id: z.string(),
    name: z.string(),
    personal: z.boolean(),
    plan: z.string().nullable(),
    status: z.string().nullable(),
    members: z.number().int(),
    created_at: z.string(),
  })
  .openapi("AdminOrg");

const AdminUser = z
  .object({
    id: z.string(),
    email: z.string(),
    name: z.string(),
    email_verified: z.boolean(),
    two_factor: z.boolean(),
    orgs: z.number().int(),
    created_at: z.string(),
  })
  .openapi("AdminUser");

/** `%q%` for ILIKE, with the pattern characters of the search taken literally. */
const pattern = (q: string) => `%${q.replace(/[\\%_]/g, (ch) => `\\${ch}`)}%`;
const iso = (value: unknown) => new Date(value as string).toISOString();

export function directoryRoutes() {
  const router = createApiRouter();

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/admin/orgs",
      tags: ["Admin"],
      summary: "Organizations, newest first, with search",
      security,
      middleware: platformAdminOnly,
      request: { query: Query },
      responses: {
        200: jsonResponse(z.object({ data: z.array(AdminOrg), next_before: z.string().nullable() }), "Orgs"),
        ...errorResponses(400, 401, 403),
      },
    }),
    async (c) => {
      const { q, before, limit } = c.req.valid("query");
      const rows = await c.get("deps").database.query<{
        id: string;
        name: string;
        personal: boolean;
        plan_key: string | null;
        status: string | null;
        members: number;
        created_at: string;
      }>(sql`
        select o.id, o.name, o.personal, s.plan_key, s.status, o.created_at,
          (select count(*)::int from memberships m where m.org_id = o.id) as members
        from orgs o left join subscriptions s on s.org_id = o.id
        where o.deleted_at is null
          ${q ? sql`and (o.name ilike ${pattern(q)} or o.id = ${q})` : sql``}
          ${before ? sql`and o.id < ${before}` : sql``}
        order by o.id desc limit ${limit + 1}`);
      const page = rows.slice(0, limit);
      return c.json(
        {
          data: page.map((row) => ({
            id: row.id,
            name: row.name,
            personal: row.personal,
            plan: row.plan_key,
            status: row.status,
            members: row.members,
            created_at: iso(row.created_at),
          })),
          next_before: rows.length > limit ? (page.at(-1)?.id ?? null) : null,
        },
        200,
      );
    },
  );

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/admin/users",
      tags: ["Admin"],
      summary: "Users, newest first, with search",
      security,
      middleware: platformAdminOnly,
      request: { query: Query },
      responses: {
        200: jsonResponse(
          z.object({ data: z.array(AdminUser), next_before: z.string().nullable() }),
          "Users",
        ),
        ...errorResponses(400, 401, 403),
      },
    }),
    async (c) => {
      const { q, before, limit } = c.req.valid("query");
      const rows = await c.get("deps").database.query<{
        id: string;
        email: string;
        name: string;
        verified: boolean;
        two_factor: boolean;
        orgs: number;
        created_at: string;
      }>(sql`
        select u.id, u.email, u.name, u.email_verified_at is not null as verified,
          u.totp_enabled_at is not null as two_factor, u.created_at,
          (select count(*)::int from memberships m where m.user_id = u.id) as orgs
        from users u
        where true
          ${q ? sql`and (u.email ilike ${pattern(q)} or u.name ilike ${pattern(q)} or u.id = ${q})` : sql``}
          ${before ? sql`and u.id < ${before}` : sql``}
        order by u.id desc limit ${limit + 1}`);
      const page = rows.slice(0, limit);
      return c.json(
        {
          data: page.map((row) => ({
            id: row.id,
            email: row.email,
            name: row.name,
            email_verified: row.verified,
            two_factor: row.two_factor,
            orgs: row.orgs,
            created_at: iso(row.created_at),
          })),
          next_before: rows.length > limit ? (page.at(-1)?.id ?? null) : null,
        },
        200,
      );
    },
  );

  return router;
}
