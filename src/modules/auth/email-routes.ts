import { createRoute, z } from "@hono/zod-openapi";
import { sha256Hex } from "../../lib/crypto.js";
import { AppError } from "../../lib/errors.js";
import { createRouter, errorResponses, jsonBody, jsonResponse, requestLogger } from "../../lib/http.js";
import { guardAttempt } from "./abuse.js";
import { requireCaller } from "./caller.js";
import { clientIp } from "./client-ip.js";
import { requestPasswordReset, resendVerificationEmail, resetPassword, verifyEmail } from "./email-flows.js";
import { Email, Password } from "./schemas.js";

/** A one-time token from an e-mail link: 32 random bytes, base64url (43 characters). */
const Token = z
  .string()
  .min(1)
  .max(200)
  .openapi({ description: "The token from the e-mail's link", example: "q3Yv…" });

/**
 * The token's own budget key. Hashed, so the counter store never holds a usable token; per token, so
 * it stops replays of one link, while the per-address budget is what stops guessing.
 */
const tokenKey = (token: string) => `token:${sha256Hex(token)}`;

/** The same answer for a wrong, used or expired token: which one it was helps only an attacker. */
const invalidToken = (what: string) =>
  new AppError(
    "validation_failed",
    `This ${what} link is invalid, already used or expired. Ask for a new one.`,
    {
      errors: [
        {
          field: "token",
          message: "is invalid, already used or expired",
          code: "invalid_token",
          location: "body",
        },
      ],
    },
  );

const userSecurity = [{ bearer: [] }];

/** E-mail verification and password reset. */
export function emailFlowRoutes() {
  const router = createRouter();

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/auth/verify-email",
      tags: ["Auth"],
      summary: "Verify an e-mail address with the token from the verification e-mail",
      request: { body: jsonBody(z.strictObject({ token: Token }).openapi("VerifyEmailRequest")) },
      responses: {
        200: jsonResponse(
          z.object({ verified: z.literal(true) }).openapi("EmailVerified"),
          "The address is verified",
        ),
        ...errorResponses(400, 429),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const { token } = c.req.valid("json");
      const ip = clientIp(c);
      await guardAttempt(deps, "verify", tokenKey(token), ip);
      if (!(await verifyEmail(deps, token, ip))) throw invalidToken("verification");
      return c.json({ verified: true as const }, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/auth/verify-email/resend",
      tags: ["Auth"],
      summary: "Send the signed-in user a new verification e-mail",
      security: userSecurity,
      responses: {
        200: jsonResponse(
          z
            .object({
              sent: z.boolean().openapi({ description: "False when the address is verified already" }),
            })
            .openapi("VerificationResent"),
          "Whether a new e-mail went out",
        ),
        ...errorResponses(401, 403, 429),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const caller = await requireCaller(c, "user");
      await guardAttempt(deps, "verify", `user:${caller.userId}`, clientIp(c));
      const outcome = await resendVerificationEmail(deps, caller.userId);
      return c.json({ sent: outcome === "sent" }, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/auth/forgot-password",
      tags: ["Auth"],
      summary: "E-mail a password reset link",
      description:
        "Always answers 202, whether or not an account has this address, so the endpoint cannot be used to find out who has an account. When one does, a link valid for one hour is e-mailed to it.",
      request: { body: jsonBody(z.strictObject({ email: Email }).openapi("ForgotPasswordRequest")) },
      responses: {
        202: jsonResponse(
          z.object({ accepted: z.literal(true) }).openapi("ForgotPasswordAccepted"),
          "Accepted",
        ),
        ...errorResponses(400, 429),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const { email } = c.req.valid("json");
      await guardAttempt(deps, "reset", email, clientIp(c));
      // Not awaited: see requestPasswordReset. It never rejects; the catch is belt and braces.
      requestPasswordReset(deps, email).catch((error: Error) =>
        requestLogger(c).error({ err: error.message }, "password reset failed"),
      );
      return c.json({ accepted: true as const }, 202);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/auth/reset-password",
      tags: ["Auth"],
      summary: "Set a new password with the token from the reset e-mail",
      description:
        "Signs the account out everywhere (every refresh token is revoked) and marks its e-mail address verified.",
      request: {
        body: jsonBody(z.strictObject({ token: Token, password: Password }).openapi("ResetPasswordRequest")),
      },
      responses: {
        200: jsonResponse(
          z.object({ reset: z.literal(true) }).openapi("PasswordReset"),
          "The password is changed",
        ),
        ...errorResponses(400, 429),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const { token, password } = c.req.valid("json");
      const ip = clientIp(c);
      await guardAttempt(deps, "reset", tokenKey(token), ip);
      if (!(await resetPassword(deps, token, password, ip))) throw invalidToken("password reset");
      return c.json({ reset: true as const }, 200);
    },
  );

  return router;
}
