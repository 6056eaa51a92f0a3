import { z } from "@hono/zod-openapi";
import { and, eq, isNull } from "drizzle-orm";
import type { Context, MiddlewareHandler } from "hono";
import { memberships, orgs, type Role } from "../../db/schema.js";
import type { AppEnv } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { type Caller, requireCaller } from "../auth/caller.js";
import { type Permission, roleAllows } from "./permissions.js";

export interface OrgAccess {
  orgId: string;
  caller: Caller;
  /** The caller's role when the caller is a member; undefined for the operator and API keys. */
  role: Role | undefined;
}

const notFound = (orgId: string) => new AppError("not_found", `No organization ${orgId}.`);

/**
 * The one gate for everything an org owns. Every tenant-scoped route calls it first with the
 * permission it needs, and then scopes its queries by the returned orgId.
 *
 * - Another tenant's org answers 404, exactly like an org that does not exist, so ids cannot be probed.
 * - A member whose role lacks the permission gets 403; so does an API key without the scope.
 * - An org that requires two-factor authentication refuses members whose session did not have it.
 */
export async function requireOrgAccess(
  c: Context<AppEnv>,
  orgId: string,
  permission: Permission,
): Promise<OrgAccess> {
  const caller = await requireCaller(c);
  const { db } = c.get("deps").database;
  // No org has such an id (and Postgres could not even compare a NUL): answered like any unknown org.
  if (orgId.length > 64 || orgId.includes("\u0000"))
    throw notFound(orgId.slice(0, 64).replaceAll("\u0000", ""));

  if (caller.kind === "api_key") {
    if (caller.orgId !== orgId) throw notFound(orgId);
    if (!caller.scopes.includes(permission)) {
      throw new AppError("forbidden", `This API key does not have the ${permission} scope.`);
    }
    return { orgId, caller, role: undefined };
  }

  if (caller.kind === "operator") {
    const [org] = await db
      .select({ id: orgs.id })
      .from(orgs)
      .where(and(eq(orgs.id, orgId), isNull(orgs.deletedAt)));
    if (!org) throw notFound(orgId);
    return { orgId, caller, role: undefined };
  }

  const [row] = await db
    .select({ role: memberships.role, requireTwoFactor: orgs.requireTwoFactor })
    .from(memberships)
    .innerJoin(orgs, eq(orgs.id, memberships.orgId))
    .where(and(eq(memberships.orgId, orgId), eq(memberships.userId, caller.userId), isNull(orgs.deletedAt)));
  if (!row) throw notFound(orgId);
  if (row.requireTwoFactor && !caller.twoFactor) {
    throw new AppError(
      "forbidden",
      "This organization requires two-factor authentication: turn it on, then sign in again.",
    );
  }
  if (!roleAllows(row.role, permission)) {
    throw new AppError("forbidden", `Your role (${row.role}) does not allow ${permission}.`);
  }
  return { orgId, caller, role: row.role };
}

/**
 * requireOrgAccess as route middleware, for the `:org` path parameter: tenancy and role are checked
 * before the request body is validated (a stranger gets 404, a member without the right 403, whatever
 * they send). The handler reads the result with {@link accessOf}.
 */
export function orgAccess(
  permission: Permission | ((c: Context<AppEnv>) => Permission | Promise<Permission>),
): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const needed = typeof permission === "function" ? await permission(c) : permission;
    c.set("orgAccess", await requireOrgAccess(c, c.req.param("org") ?? "", needed));
    await next();
  };
}

/** The access granted by the route's {@link orgAccess} middleware. */
export function accessOf(c: Context<AppEnv>): OrgAccess {
  const access = c.get("orgAccess");
  if (!access) throw new Error(`${c.req.method} ${c.req.path}: handler expects orgAccess middleware`);
  return access;
}

/** The `{org}` path parameter of every org-scoped route. */
export const OrgParam = z.object({
  org: z
    .string()
    .max(64)
    .refine((value) => !value.includes("\u0000"), "must not contain NUL characters")
    .openapi({ param: { name: "org", in: "path" }, example: "org_01jd…" }),
});
