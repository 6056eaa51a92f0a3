import { createRoute, z } from "@hono/zod-openapi";
import { and, eq, isNull } from "drizzle-orm";
import { recoveryCodes, users } from "../../db/schema.js";
import { AppError } from "../../lib/errors.js";
import { errorResponses, jsonBody, jsonResponse } from "../../lib/http.js";
import { newId } from "../../lib/ids.js";
import { recordUserAudit } from "../audit/service.js";
import { guardAttempt } from "./abuse.js";
import { createApiRouter, requireCaller } from "./caller.js";
import { clientIp } from "./client-ip.js";
import { currentUser, reauthenticate } from "./reauth.js";
import { revokeUserSessions } from "./sessions.js";
import {
  checkSecondFactor,
  hashRecoveryCode,
  newRecoveryCodes,
  newTotpSecret,
  verifyTotp,
} from "./two-factor.js";

const userSecurity: Record<string, string[]>[] = [{ bearer: [] }];

const TotpCode = z.string().trim().min(1).max(10).openapi({ example: "123456" });

const wrongCode = (field: string) =>
  new AppError("validation_failed", "The code is not correct.", {
    errors: [{ field, message: "is not correct", code: "invalid_code", location: "body" }],
  });

/**
 * Two-factor authentication (TOTP, with ten single-use recovery codes): set up, confirm with a
 * code to turn it on, turn it off with a code. Sessions started before it was on keep their
 * (one-factor) standing: orgs that require it ask their members to sign in again.
 */
export function twoFactorRoutes() {
  const router = createApiRouter();

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/auth/2fa/setup",
      tags: ["Auth"],
      summary: "Start setting up two-factor authentication (a new TOTP secret, not yet on)",
      security: userSecurity,
      request: {
        body: jsonBody(
          z
            .strictObject({
              password: z
                .string()
                .max(1024)
                .optional()
                .openapi({ description: "The account's password (required when it has one)" }),
            })
            .openapi("TwoFactorSetupRequest"),
        ),
      },
      responses: {
        200: jsonResponse(
          z
            .object({
              secret: z.string().openapi({ description: "Base32, for typing into an authenticator app" }),
              otpauth_url: z
                .string()
                .openapi({ description: "The same secret as an otpauth:// URI (QR code)" }),
            })
            .openapi("TwoFactorSetup"),
          "The pending secret; confirm it with /v1/auth/2fa/enable",
        ),
        ...errorResponses(401, 403, 409),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const user = await currentUser(c);
      if (user.totpEnabledAt) {
        throw new AppError(
          "conflict",
          "Two-factor authentication is already on; turn it off first to replace it.",
        );
      }
      // A stolen session must not be able to put its own authenticator on the account.
      await reauthenticate(c, user, c.req.valid("json").password, "change two-factor authentication");
      const { sealed, secret, uri } = newTotpSecret(deps, user.email);
      await deps.database.db
        .update(users)
        .set({ totpSecret: sealed, updatedAt: deps.clock.now() })
        .where(and(eq(users.id, user.id), isNull(users.totpEnabledAt)));
      c.header("cache-control", "no-store");
      return c.json({ secret, otpauth_url: uri }, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/auth/2fa/enable",
      tags: ["Auth"],
      summary: "Turn two-factor authentication on with a current code; returns the recovery codes once",
      security: userSecurity,
      request: { body: jsonBody(z.strictObject({ code: TotpCode }).openapi("TwoFactorEnableRequest")) },
      responses: {
        200: jsonResponse(
          z
            .object({
              recovery_codes: z
                .array(z.string())
                .openapi({ description: "Ten single-use codes, shown only now; keep them safe" }),
            })
            .openapi("TwoFactorEnabled"),
          "Two-factor authentication is on",
        ),
        ...errorResponses(400, 401, 403, 409, 429),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const user = await currentUser(c);
      const ip = clientIp(c);
      if (user.totpEnabledAt) throw new AppError("conflict", "Two-factor authentication is already on.");
      if (!user.totpSecret) {
        throw new AppError("conflict", "Start with POST /v1/auth/2fa/setup to get a secret first.");
      }
      await guardAttempt(deps, "login", `2fa:${user.id}`, ip);
      if (!(await verifyTotp(deps, user.totpSecret, c.req.valid("json").code))) throw wrongCode("code");
      const codes = newRecoveryCodes();
      const now = deps.clock.now();
      await deps.database.db.transaction(async (tx) => {
        const turnedOn = await tx
          .update(users)
          .set({ totpEnabledAt: now, updatedAt: now })
          .where(
            and(
              eq(users.id, user.id),
              eq(users.totpSecret, user.totpSecret ?? ""),
              isNull(users.totpEnabledAt),
            ),
          )
          .returning({ id: users.id });
        // Another request turned it on (or replaced the secret) meanwhile.
        if (turnedOn.length === 0)
          throw new AppError("conflict", "Two-factor authentication changed meanwhile; try again.");
        await tx.delete(recoveryCodes).where(eq(recoveryCodes.userId, user.id));
        await tx.insert(recoveryCodes).values(
          codes.map((code) => ({
            // Internal rows, never shown: lib/ids.ts has no public kind for them.
            id: newId("recoveryCode"),
            userId: user.id,
            codeHash: hashRecoveryCode(code),
            createdAt: now,
          })),
        );
        await recordUserAudit(tx, user.id, { action: "user.two_factor_enabled", ip });
      });
      // Every other session of the account ends; this one stays, still one-factor until the next sign-in.
      await revokeUserSessions(deps, user.id, (await requireCaller(c, "user")).sessionId);
      c.header("cache-control", "no-store");
      return c.json({ recovery_codes: codes }, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/auth/2fa/disable",
      tags: ["Auth"],
      summary: "Turn two-factor authentication off, with a current code or a recovery code",
      security: userSecurity,
      request: {
        body: jsonBody(
          z
            .strictObject({
              code: TotpCode.optional(),
              recovery_code: z.string().trim().min(1).max(40).optional(),
            })
            .refine((b) => (b.code === undefined) !== (b.recovery_code === undefined), {
              message: "give either code or recovery_code",
            })
            .openapi("TwoFactorDisableRequest"),
        ),
      },
      responses: {
        204: { description: "Two-factor authentication is off" },
        ...errorResponses(400, 401, 403, 409, 429),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const user = await currentUser(c);
      const ip = clientIp(c);
      if (!user.totpEnabledAt) throw new AppError("conflict", "Two-factor authentication is not on.");
      await guardAttempt(deps, "login", `2fa:${user.id}`, ip);
      const body = c.req.valid("json");
      const ok = await checkSecondFactor(deps, user, {
        totp_code: body.code,
        recovery_code: body.recovery_code,
      });
      if (!ok) throw wrongCode(body.code !== undefined ? "code" : "recovery_code");
      const now = deps.clock.now();
      await deps.database.db.transaction(async (tx) => {
        await tx
          .update(users)
          .set({ totpSecret: null, totpEnabledAt: null, updatedAt: now })
          .where(eq(users.id, user.id));
        await tx.delete(recoveryCodes).where(eq(recoveryCodes.userId, user.id));
        await recordUserAudit(tx, user.id, { action: "user.two_factor_disabled", ip });
      });
      return c.body(null, 204);
    },
  );

  return router;
}
