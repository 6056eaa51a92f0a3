import { createRoute, z } from "@hono/zod-openapi";
import { AppError } from "../../lib/errors.js";
import { errorResponses, jsonBody, jsonResponse } from "../../lib/http.js";
import { recordUserAudit } from "../audit/service.js";
import { guardAttempt } from "../auth/abuse.js";
import { createApiRouter, requireCaller } from "../auth/caller.js";
import { clientIp } from "../auth/client-ip.js";
import { currentUser, reauthenticate } from "../auth/reauth.js";
import { checkSecondFactor } from "../auth/two-factor.js";
import { assertErasable, eraseAccount, planErasure } from "./erase.js";
import { buildExport, PersonalDataExport } from "./export.js";

const userSecurity: Record<string, string[]>[] = [{ bearer: [] }];
const tags = ["Privacy"];

const fieldError = (field: string, message: string, code: string) =>
  new AppError("validation_failed", `${field} ${message}.`, {
    errors: [{ field, message, code, location: "body" }],
  });

/**
 * The data-protection rights of a signed-in user over their own account: a copy of everything held
 * about them (GET /v1/me/export) and erasure (DELETE /v1/me). See docs/privacy.md.
 */
export function privacyRoutes() {
  const router = createApiRouter();

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/me/export",
      tags,
      summary: "Everything held about the signed-in user, as one JSON file",
      description:
        "The account, memberships, linked sign-in providers, sessions, API keys created, invitations sent and received, the user's own audit-log entries and the mail addressed to them. Never a password hash, key hash, token or TOTP secret. Lists are not paged: each keeps its newest entries up to a cap (audit_log 10 000, emails 1 000, sessions 1 000, identities 1 000, the others 10 000), and `truncated` names those that reached it. Served as an attachment (`tollgate-export-<yyyy-mm-dd>.json`), never cached. Recorded in the audit log as `user.data_exported`.",
      security: userSecurity,
      responses: {
        200: {
          ...jsonResponse(PersonalDataExport, "The export"),
          headers: {
            "Content-Disposition": {
              description: 'attachment; filename="tollgate-export-<yyyy-mm-dd>.json"',
              schema: { type: "string" },
            },
          },
        },
        ...errorResponses(401, 403),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const caller = await requireCaller(c, "user");
      const user = await currentUser(c);
      const data = await buildExport(deps, user.id, caller.sessionId);
      await recordUserAudit(deps.database.db, user.id, { action: "user.data_exported", ip: clientIp(c) });
      const day = data.generated_at.slice(0, 10);
      c.header("content-disposition", `attachment; filename="tollgate-export-${day}.json"`);
      c.header("cache-control", "no-store");
      return c.json(data, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "delete",
      path: "/v1/me",
      tags,
      summary: "Erase the signed-in user's account and personal data",
      description:
        "Confirm with the account's e-mail address, the password (an account without one: a sign-in within the last 10 minutes) and, when two-factor authentication is on, a current code or a recovery code. Orgs where the user is the last member are deleted; other orgs are left. Refused with 409 (nothing changed, `orgs` lists them) while the user is the only owner of an org that others still belong to. The account is anonymised, every session ends (this one too), and the address is removed from invitations, mail, audit details, webhook payloads and branding. Invoices, credit notes and payments are kept, as the law requires, with the org and the amounts only.",
      security: userSecurity,
      request: {
        body: jsonBody(
          z
            .strictObject({
              confirm_email: z.string().max(254).openapi({
                description: "The account's e-mail address, typed again",
                example: "ada@example.com",
              }),
              password: z
                .string()
                .max(1024)
                .optional()
                .openapi({ description: "The account's password (required when it has one)" }),
              code: z.string().trim().min(1).max(40).optional().openapi({
                description:
                  "With two-factor authentication on: a current code from the authenticator app, or a recovery code",
                example: "123456",
              }),
            })
            .openapi("AccountErasureRequest"),
        ),
      },
      responses: {
        204: { description: "The account is erased; every session has ended" },
        ...errorResponses(400, 401, 403, 409, 429),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const user = await currentUser(c);
      const body = c.req.valid("json");
      const ip = clientIp(c);
      if (body.confirm_email.trim().toLowerCase() !== user.email.toLowerCase()) {
        throw fieldError("confirm_email", "is not this account's e-mail address", "mismatch");
      }
      await reauthenticate(c, user, body.password, "delete your account");
      // Before the second factor: a refused erasure must not use up a recovery code.
      assertErasable(await planErasure(deps.database.db, user.id));
      if (user.totpEnabledAt) {
        if (!body.code) throw fieldError("code", "is required", "required");
        await guardAttempt(deps, "login", `2fa:${user.id}`, ip);
        const proof = /^\d{6}$/.test(body.code) ? { totp_code: body.code } : { recovery_code: body.code };
        if (!(await checkSecondFactor(deps, user, proof))) {
          throw fieldError("code", "is not correct", "invalid_code");
        }
      }
      await eraseAccount(deps, user.id);
      return c.body(null, 204);
    },
  );

  return router;
}
