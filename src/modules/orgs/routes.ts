import { createRoute, z } from "@hono/zod-openapi";
import { and, desc, eq, isNull } from "drizzle-orm";
import type { Context } from "hono";
import { memberships, orgs, ROLES } from "../../db/schema.js";
import type { AppEnv } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { errorResponses, jsonBody, jsonResponse } from "../../lib/http.js";
import { createApiRouter, requireCaller } from "../auth/caller.js";
import { Email } from "../auth/schemas.js";
import { accessOf, OrgParam, orgAccess } from "./access.js";
import type { Permission } from "./permissions.js";
import {
  acceptInvitation,
  changeRole,
  createOrg,
  deleteOrg,
  getOrg,
  invite,
  listMembers,
  orgOut,
  readAuditLog,
  removeMember,
  updateOrg,
} from "./service.js";

const security: Record<string, string[]>[] = [{ bearer: [] }, { operator: [] }];
const Role = z.enum(ROLES);
const MemberParam = OrgParam.extend({
  user: z
    .string()
    .max(64)
    .openapi({ param: { name: "user", in: "path" } }),
});

const Org = z
  .object({
    id: z.string(),
    name: z.string(),
    personal: z.boolean(),
    require_two_factor: z.boolean(),
    created_at: z.string(),
  })
  .openapi("Org");
const Member = z
  .object({ user_id: z.string(), email: z.string(), name: z.string(), role: Role, joined_at: z.string() })
  .openapi("Member");
const OrgName = z.string().trim().min(1).max(200);

/** Leaving an org needs only membership; removing someone else needs members:manage. */
async function leaveOrManage(c: Context<AppEnv>): Promise<Permission> {
  const caller = await requireCaller(c);
  return caller.kind === "user" && caller.userId === c.req.param("user") ? "org:read" : "members:manage";
}

/** Organizations, their members, invitations and audit log. Every org route passes requireOrgAccess first. */
export function orgRoutes() {
  const router = createApiRouter();

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs",
      tags: ["Orgs"],
      summary: "Organizations the caller can see",
      security,
      responses: { 200: jsonResponse(z.object({ data: z.array(Org) }), "Orgs"), ...errorResponses(401) },
    }),
    async (c) => {
      const caller = await requireCaller(c);
      const { db } = c.get("deps").database;
      const live = isNull(orgs.deletedAt);
      const rows =
        caller.kind === "user"
          ? (
              await db
                .select({ org: orgs })
                .from(memberships)
                .innerJoin(orgs, eq(orgs.id, memberships.orgId))
                .where(and(eq(memberships.userId, caller.userId), live))
                .orderBy(orgs.createdAt)
            ).map((r) => r.org)
          : caller.kind === "api_key"
            ? caller.scopes.includes("org:read")
              ? [await getOrg(db, caller.orgId)]
              : []
            : await db.select().from(orgs).where(live).orderBy(desc(orgs.createdAt)).limit(100);
      return c.json({ data: rows.map(orgOut) }, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/orgs",
      tags: ["Orgs"],
      summary: "Create an organization (a user becomes its owner)",
      security,
      request: { body: jsonBody(z.strictObject({ name: OrgName }).openapi("CreateOrg")) },
      responses: { 201: jsonResponse(Org, "The new org"), ...errorResponses(400, 401, 403) },
    }),
    async (c) => {
      const caller = await requireCaller(c, "user", "operator");
      const org = await createOrg(c.get("deps"), caller, c.req.valid("json").name);
      return c.json(orgOut(org), 201);
    },
  );

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}",
      tags: ["Orgs"],
      summary: "An organization",
      security,
      request: { params: OrgParam },
      middleware: [orgAccess("org:read")],
      responses: { 200: jsonResponse(Org, "The org"), ...errorResponses(401, 403, 404) },
    }),
    async (c) => {
      const access = accessOf(c);
      return c.json(orgOut(await getOrg(c.get("deps").database.db, access.orgId)), 200);
    },
  );

  router.openapi(
    createRoute({
      method: "patch",
      path: "/v1/orgs/{org}",
      tags: ["Orgs"],
      summary: "Rename an organization, or require two-factor authentication of its members",
      security,
      request: {
        params: OrgParam,
        body: jsonBody(
          z
            .strictObject({ name: OrgName.optional(), require_two_factor: z.boolean().optional() })
            .openapi("UpdateOrg"),
        ),
      },
      middleware: [orgAccess("org:update")],
      responses: { 200: jsonResponse(Org, "The updated org"), ...errorResponses(400, 401, 403, 404) },
    }),
    async (c) => {
      const access = accessOf(c);
      return c.json(orgOut(await updateOrg(c.get("deps"), access, c.req.valid("json"))), 200);
    },
  );

  router.openapi(
    createRoute({
      method: "delete",
      path: "/v1/orgs/{org}",
      tags: ["Orgs"],
      summary: "Delete an organization (owner only)",
      security,
      request: { params: OrgParam },
      middleware: [orgAccess("org:delete")],
      responses: { 204: { description: "Deleted" }, ...errorResponses(401, 403, 404) },
    }),
    async (c) => {
      const access = accessOf(c);
      await deleteOrg(c.get("deps"), access);
      return c.body(null, 204);
    },
  );

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/members",
      tags: ["Members"],
      summary: "Members and their roles",
      security,
      request: { params: OrgParam },
      middleware: [orgAccess("members:read")],
      responses: {
        200: jsonResponse(z.object({ data: z.array(Member) }), "Members"),
        ...errorResponses(401, 403, 404),
      },
    }),
    async (c) => {
      const access = accessOf(c);
      return c.json({ data: await listMembers(c.get("deps").database.db, access.orgId) }, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "patch",
      path: "/v1/orgs/{org}/members/{user}",
      tags: ["Members"],
      summary: "Change a member's role",
      security,
      request: { params: MemberParam, body: jsonBody(z.strictObject({ role: Role }).openapi("ChangeRole")) },
      middleware: [orgAccess("members:manage")],
      responses: {
        200: jsonResponse(z.object({ data: z.array(Member) }), "Members"),
        ...errorResponses(400, 401, 403, 404, 409),
      },
    }),
    async (c) => {
      const { user } = c.req.valid("param");
      const access = accessOf(c);
      await changeRole(c.get("deps"), access, user, c.req.valid("json").role);
      return c.json({ data: await listMembers(c.get("deps").database.db, access.orgId) }, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "delete",
      path: "/v1/orgs/{org}/members/{user}",
      tags: ["Members"],
      summary: "Remove a member (or leave, for yourself)",
      security,
      middleware: [orgAccess(leaveOrManage)],
      request: { params: MemberParam },
      responses: { 204: { description: "Removed" }, ...errorResponses(401, 403, 404, 409) },
    }),
    async (c) => {
      await removeMember(c.get("deps"), accessOf(c), c.req.valid("param").user);
      return c.body(null, 204);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/orgs/{org}/invitations",
      tags: ["Members"],
      summary: "Invite someone by e-mail",
      security,
      request: {
        params: OrgParam,
        body: jsonBody(z.strictObject({ email: Email, role: Role }).openapi("Invite")),
      },
      middleware: [orgAccess("members:manage")],
      responses: {
        201: jsonResponse(
          z
            .object({ id: z.string(), email: z.string(), role: Role, expires_at: z.string() })
            .openapi("Invitation"),
          "Sent; the link is in the e-mail only",
        ),
        ...errorResponses(400, 401, 403, 404),
      },
    }),
    async (c) => {
      const access = accessOf(c);
      const { email, role } = c.req.valid("json");
      const invitation = await invite(c.get("deps"), access, email, role);
      return c.json({ id: invitation.id, email, role, expires_at: invitation.expiresAt.toISOString() }, 201);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/invitations/{token}/accept",
      tags: ["Members"],
      summary: "Accept an invitation (signed in as the invited e-mail address)",
      security: [{ bearer: [] }],
      request: {
        params: z.object({
          token: z
            .string()
            .max(200)
            .openapi({ param: { name: "token", in: "path" } }),
        }),
      },
      responses: {
        200: jsonResponse(
          z.object({ org_id: z.string(), role: Role }).openapi("InvitationAccepted"),
          "Joined",
        ),
        ...errorResponses(401, 403, 404),
      },
    }),
    async (c) => {
      const caller = await requireCaller(c, "user");
      const joined = await acceptInvitation(c.get("deps"), caller.userId, c.req.valid("param").token);
      return c.json({ org_id: joined.orgId, role: joined.role }, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/audit-log",
      tags: ["Orgs"],
      summary: "Who did what in this organization, newest first",
      security,
      request: {
        params: OrgParam,
        query: z.object({
          limit: z.coerce.number().int().min(1).max(200).default(50),
          before: z.string().max(64).optional().openapi({ description: "An entry id: return older entries" }),
        }),
      },
      middleware: [orgAccess("audit:read")],
      responses: {
        200: jsonResponse(
          z.object({ data: z.array(z.record(z.string(), z.unknown())) }).openapi("AuditLog"),
          "Entries",
        ),
        ...errorResponses(400, 401, 403, 404),
      },
    }),
    async (c) => {
      const access = accessOf(c);
      const { limit, before } = c.req.valid("query");
      if (before !== undefined && !/^aud_[0-9a-z]{26}$/.test(before)) {
        throw new AppError("validation_failed", "before must be an audit entry id.", {
          errors: [
            {
              field: "before",
              message: "must be an audit entry id (aud_…)",
              code: "invalid_format",
              location: "query",
            },
          ],
        });
      }
      return c.json(
        { data: await readAuditLog(c.get("deps").database.db, access.orgId, limit, before) },
        200,
      );
    },
  );

  return router;
}
