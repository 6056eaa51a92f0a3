import { createRoute, z } from "@hono/zod-openapi";
import { eq } from "drizzle-orm";
import { memberships, orgs, users } from "../../db/schema.js";
import { AppError } from "../../lib/errors.js";
import { errorResponses, jsonBody, jsonResponse } from "../../lib/http.js";
import { createApiRouter, requireCaller } from "./caller.js";
import { clientIp } from "./client-ip.js";
import { AuthTokens, Email, LoginRequest, Me, Password, UserOut, userOut } from "./schemas.js";
import { loadSessionUser, login, register } from "./service.js";
import { revokeFamily, rotateRefreshToken } from "./sessions.js";

const userSecurity: Record<string, string[]>[] = [{ bearer: [] }];

/** Accounts and sessions: register, login, refresh, logout, me. */
export function authRoutes() {
  const router = createApiRouter();

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/auth/register",
      tags: ["Auth"],
      summary: "Create an account (and its personal organization)",
      request: {
        body: jsonBody(
          z
            .strictObject({ email: Email, password: Password, name: z.string().trim().min(1).max(200) })
            .openapi("RegisterRequest"),
        ),
      },
      responses: {
        201: jsonResponse(
          AuthTokens.extend({
            user: UserOut,
            org: z.object({ id: z.string(), name: z.string() }),
          }).openapi("Registered"),
          "The account, its personal org and a session",
        ),
        ...errorResponses(400, 409, 429),
      },
    }),
    async (c) => {
      const body = c.req.valid("json");
      const result = await register(c.get("deps"), body, clientIp(c), c.req.header("user-agent"));
      return c.json(
        { user: userOut(result.user), org: { id: result.org.id, name: result.org.name }, ...result.tokens },
        201,
      );
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/auth/login",
      tags: ["Auth"],
      summary: "Sign in with e-mail and password (and a second factor when enabled)",
      request: { body: jsonBody(LoginRequest) },
      responses: {
        200: jsonResponse(AuthTokens.extend({ user: UserOut }).openapi("LoggedIn"), "A new session"),
        ...errorResponses(400, 401, 429),
      },
    }),
    async (c) => {
      const result = await login(c.get("deps"), c.req.valid("json"), clientIp(c), c.req.header("user-agent"));
      return c.json({ user: userOut(result.user), ...result.tokens }, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/auth/refresh",
      tags: ["Auth"],
      summary: "Exchange a refresh token for a new pair (rotation; reuse revokes the session)",
      request: {
        body: jsonBody(
          z.strictObject({ refresh_token: z.string().min(1).max(200) }).openapi("RefreshRequest"),
        ),
      },
      responses: { 200: jsonResponse(AuthTokens, "A new token pair"), ...errorResponses(400, 401) },
    }),
    async (c) => {
      const deps = c.get("deps");
      const tokens = await rotateRefreshToken(
        deps,
        c.req.valid("json").refresh_token,
        (id) => loadSessionUser(deps, id),
        c.req.header("user-agent"),
      );
      return c.json(tokens, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/auth/logout",
      tags: ["Auth"],
      summary: "End this session (its refresh and access tokens stop working at once)",
      security: userSecurity,
      responses: { 204: { description: "Signed out" }, ...errorResponses(401, 403) },
    }),
    async (c) => {
      const caller = await requireCaller(c, "user");
      await revokeFamily(c.get("deps"), caller.sessionId);
      return c.body(null, 204);
    },
  );

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/auth/me",
      tags: ["Auth"],
      summary: "The signed-in user and their organizations",
      security: userSecurity,
      responses: { 200: jsonResponse(Me, "The user"), ...errorResponses(401, 403) },
    }),
    async (c) => {
      const caller = await requireCaller(c, "user");
      const { db } = c.get("deps").database;
      const [user] = await db.select().from(users).where(eq(users.id, caller.userId));
      if (!user) throw new AppError("unauthenticated", "This account no longer exists.");
      const rows = await db
        .select({
          id: orgs.id,
          name: orgs.name,
          personal: orgs.personal,
          role: memberships.role,
          deletedAt: orgs.deletedAt,
        })
        .from(memberships)
        .innerJoin(orgs, eq(orgs.id, memberships.orgId))
        .where(eq(memberships.userId, user.id))
        .orderBy(orgs.createdAt);
      return c.json(
        {
          user: userOut(user),
          platform_admin: caller.platformAdmin,
          orgs: rows.filter((r) => !r.deletedAt).map(({ deletedAt: _, ...org }) => org),
        },
        200,
      );
    },
  );

  return router;
}
