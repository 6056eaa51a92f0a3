import { createRoute, z } from "@hono/zod-openapi";
import { eq } from "drizzle-orm";
import { users } from "../../db/schema.js";
import { errorResponses, jsonBody, jsonResponse } from "../../lib/http.js";
import { recordUserAudit } from "../audit/service.js";
import { createApiRouter, requireCaller } from "./caller.js";
import { clientIp } from "./client-ip.js";
import { hashPassword } from "./passwords.js";
import { currentUser, reauthenticate } from "./reauth.js";
import { Password, UserOut, userOut } from "./schemas.js";
import { revokeUserSessions } from "./sessions.js";

const userSecurity: Record<string, string[]>[] = [{ bearer: [] }];

/** Well-known providers' names as people write them; any other key is shown capitalised. */
const PROVIDER_NAMES: Record<string, string> = {
  github: "GitHub",
  gitlab: "GitLab",
  google: "Google",
  microsoft: "Microsoft",
  okta: "Okta",
  auth0: "Auth0",
  keycloak: "Keycloak",
};

export const providerLabel = (key: string) =>
  PROVIDER_NAMES[key] ?? `${key.charAt(0).toUpperCase()}${key.slice(1)}`;

/** The signed-in user's own profile and password, and the sign-in providers the login page offers. */
export function profileRoutes() {
  const router = createApiRouter();

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/auth/providers",
      tags: ["Auth"],
      summary: "The single sign-on providers this instance offers",
      description:
        "Each is started at `/v1/auth/oauth/{key}/start`. Public: the sign-in page lists them before anyone is signed in.",
      responses: {
        200: jsonResponse(
          z
            .object({
              providers: z.array(
                z.object({
                  key: z.string().openapi({ example: "google" }),
                  name: z.string().openapi({ example: "Google" }),
                }),
              ),
            })
            .openapi("SignInProviders"),
          "The providers, by key",
        ),
      },
    }),
    (c) => {
      const providers = c
        .get("deps")
        .env.oidcProviders.map((p) => ({ key: p.key, name: providerLabel(p.key) }));
      return c.json({ providers }, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "patch",
      path: "/v1/auth/me",
      tags: ["Auth"],
      summary: "Change the signed-in user's profile (the name)",
      description:
        "The e-mail address is the account's identity for sign-in, invitations and SSO linking; it is not changed here.",
      security: userSecurity,
      request: {
        body: jsonBody(z.strictObject({ name: z.string().trim().min(1).max(200) }).openapi("ProfileUpdate")),
      },
      responses: { 200: jsonResponse(UserOut, "The updated user"), ...errorResponses(400, 401) },
    }),
    async (c) => {
      const deps = c.get("deps");
      const user = await currentUser(c);
      const { name } = c.req.valid("json");
      const [updated] = await deps.database.db.transaction(async (tx) => {
        const rows = await tx
          .update(users)
          .set({ name, updatedAt: deps.clock.now() })
          .where(eq(users.id, user.id))
          .returning();
        if (name !== user.name) {
          await recordUserAudit(tx, user.id, { action: "user.profile_updated", ip: clientIp(c) });
        }
        return rows;
      });
      return c.json(userOut(updated ?? user), 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/auth/password",
      tags: ["Auth"],
      summary: "Change (or, for an SSO-only account, set) the password",
      description:
        "Needs the current password; an account without one needs a sign-in within the last 10 minutes. Every other session of the account ends; this one stays.",
      security: userSecurity,
      request: {
        body: jsonBody(
          z
            .strictObject({
              current_password: z.string().max(1024).optional(),
              new_password: Password,
            })
            .openapi("PasswordChange"),
        ),
      },
      responses: {
        204: { description: "The password is changed" },
        ...errorResponses(400, 401, 403, 429),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const user = await currentUser(c);
      const body = c.req.valid("json");
      await reauthenticate(c, user, body.current_password, "set a password", "current_password");
      const passwordHash = await hashPassword(body.new_password);
      await deps.database.db.transaction(async (tx) => {
        await tx
          .update(users)
          .set({ passwordHash, updatedAt: deps.clock.now() })
          .where(eq(users.id, user.id));
        await recordUserAudit(tx, user.id, {
          action: user.passwordHash ? "user.password_changed" : "user.password_set",
          ip: clientIp(c),
        });
      });
      await revokeUserSessions(deps, user.id, (await requireCaller(c, "user")).sessionId);
      return c.body(null, 204);
    },
  );

  return router;
}
