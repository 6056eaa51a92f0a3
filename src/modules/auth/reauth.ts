import { eq, min } from "drizzle-orm";
import type { Context } from "hono";
import { refreshTokens, users } from "../../db/schema.js";
import type { AppEnv } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { guardAttempt } from "./abuse.js";
import { requireCaller } from "./caller.js";
import { clientIp } from "./client-ip.js";
import { verifyPassword } from "./passwords.js";

/** The signed-in user's row (a session whose user has gone is unauthenticated). */
export async function currentUser(c: Context<AppEnv>) {
  const caller = await requireCaller(c, "user");
  const [user] = await c.get("deps").database.db.select().from(users).where(eq(users.id, caller.userId));
  if (!user) throw new AppError("unauthenticated", "This account no longer exists.");
  return user;
}

/** SSO-only accounts (no password) prove themselves by having signed in within this long. */
export const RECENT_SIGN_IN_MS = 10 * 60_000;

/**
 * Asks for the password again (or, without one, a sign-in moments ago) before sensitive changes:
 * a stolen session alone must not be able to take over or destroy the account. `purpose` finishes
 * the sentence "Sign in again (within the last 10 minutes) to …"; `field` names the body's password field.
 */
export async function reauthenticate(
  c: Context<AppEnv>,
  user: typeof users.$inferSelect,
  password: string | undefined,
  purpose: string,
  field = "password",
) {
  const deps = c.get("deps");
  if (user.passwordHash) {
    if (!password) {
      throw new AppError("validation_failed", "Confirm with your password.", {
        errors: [{ field, message: "is required", code: "required", location: "body" }],
      });
    }
    await guardAttempt(deps, "login", user.email, clientIp(c));
    if (!(await verifyPassword(user.passwordHash, password))) {
      throw new AppError("forbidden", "The password is not correct.");
    }
    return;
  }
  const caller = await requireCaller(c, "user");
  const [started] = await deps.database.db
    .select({ at: min(refreshTokens.createdAt) })
    .from(refreshTokens)
    .where(eq(refreshTokens.familyId, caller.sessionId));
  if (!started?.at || deps.clock.nowMs() - started.at.getTime() > RECENT_SIGN_IN_MS) {
    throw new AppError("forbidden", `Sign in again (within the last 10 minutes) to ${purpose}.`);
  }
}
