import { z } from "@hono/zod-openapi";
import type { users } from "../../db/schema.js";
import { MIN_PASSWORD_LENGTH } from "./passwords.js";

/** E-mail addresses are compared and stored lower-cased. */
export const Email = z
  .string()
  .trim()
  .max(254)
  .pipe(z.email("must be an e-mail address"))
  .transform((e) => e.toLowerCase())
  .openapi({ example: "ada@example.com" });

export const Password = z
  .string()
  .min(MIN_PASSWORD_LENGTH, `must be at least ${MIN_PASSWORD_LENGTH} characters`)
  .max(1024, "must be at most 1024 characters")
  .openapi({ example: "correct horse battery staple" });

export const LoginRequest = z
  .strictObject({
    email: Email,
    password: z.string().min(1).max(1024),
    totp_code: z.string().max(10).optional(),
    recovery_code: z.string().max(40).optional(),
  })
  .openapi("LoginRequest");

export const AuthTokens = z
  .object({
    access_token: z.string(),
    refresh_token: z.string(),
    token_type: z.literal("Bearer"),
    expires_in: z.number().int().openapi({ description: "Seconds until the access token expires" }),
  })
  .openapi("AuthTokens");

export const UserOut = z
  .object({
    id: z.string(),
    email: z.string(),
    name: z.string(),
    email_verified: z.boolean(),
    two_factor_enabled: z.boolean(),
    has_password: z
      .boolean()
      .openapi({ description: "False for accounts that only sign in through single sign-on" }),
    created_at: z.string(),
  })
  .openapi("User");

export const Me = z
  .object({
    user: UserOut,
    platform_admin: z.boolean(),
    orgs: z.array(
      z.object({
        id: z.string(),
        name: z.string(),
        personal: z.boolean(),
        role: z.enum(["owner", "admin", "member", "billing"]),
      }),
    ),
  })
  .openapi("Me");

export function userOut(user: typeof users.$inferSelect): z.infer<typeof UserOut> {
  return {
    id: user.id,
    email: user.email,
    name: user.name,
    email_verified: user.emailVerifiedAt !== null,
    two_factor_enabled: user.totpEnabledAt !== null,
    has_password: user.passwordHash !== null,
    created_at: user.createdAt.toISOString(),
  };
}
