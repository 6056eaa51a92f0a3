import { and, eq, gt, isNull, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { oneTimeTokens, recoveryCodes, refreshTokens, users } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { randomToken, sha256Hex } from "../../lib/crypto.js";
import { brandFor } from "../../lib/email-templates.js";
import { newId } from "../../lib/ids.js";
import { recordAudit } from "../audit/service.js";
import { resetPasswordMessage, verifyEmailMessage } from "./emails.js";
import { hashPassword } from "./passwords.js";
import { revokeUserSessions } from "./sessions.js";

/**
 * E-mail verification and password reset by one-time token. A token is 32 random bytes sent only in
 * the e-mail's link; the database keeps its SHA-256 (the token is high-entropy, so a fast hash is
 * right). Tokens are single-use and expire by the app's clock.
 */

/** Long enough for someone who reads mail once a day. */
export const VERIFY_EMAIL_TTL_MS = 24 * 60 * 60_000;
/** Short: a reset link takes over the account, and anyone who can read the mailbox can use it. */
export const RESET_PASSWORD_TTL_MS = 60 * 60_000;

type Purpose = (typeof oneTimeTokens.$inferSelect)["purpose"];

const newTokenId = () => newId("oneTimeToken");

async function issueToken(deps: Deps, userId: string, purpose: Purpose, ttlMs: number): Promise<string> {
  const token = randomToken(32);
  const now = deps.clock.nowMs();
  await deps.database.db.insert(oneTimeTokens).values({
    id: newTokenId(),
    userId,
    purpose,
    tokenHash: sha256Hex(token),
    expiresAt: new Date(now + ttlMs),
    createdAt: new Date(now),
  });
  return token;
}

/**
 * Uses up a token: marks it used if it is this purpose's, unused and unexpired, atomically, so two
 * requests racing with one token cannot both win. Returns the user it belongs to.
 */
async function consumeToken(
  db: Database,
  purpose: Purpose,
  token: string,
  now: Date,
): Promise<string | undefined> {
  const [claimed] = await db
    .update(oneTimeTokens)
    .set({ usedAt: now })
    .where(
      and(
        eq(oneTimeTokens.tokenHash, sha256Hex(token)),
        eq(oneTimeTokens.purpose, purpose),
        isNull(oneTimeTokens.usedAt),
        gt(oneTimeTokens.expiresAt, now),
      ),
    )
    .returning({ userId: oneTimeTokens.userId });
  return claimed?.userId;
}

/** Sets email_verified_at unless it already is (the first proof's time is the one kept). */
const verifiedNow = (now: Date) => sql`coalesce(${users.emailVerifiedAt}, ${now.toISOString()}::timestamptz)`;

/**
 * Sends the "verify your e-mail" message with a fresh 24-hour token. Called by registration (after
 * its transaction commits) and by the resend route. Earlier tokens stay valid until they expire.
 */
export async function sendVerificationEmail(
  deps: Deps,
  user: { id: string; email: string; name: string },
): Promise<void> {
  const token = await issueToken(deps, user.id, "verify_email", VERIFY_EMAIL_TTL_MS);
  const message = verifyEmailMessage({
    publicUrl: deps.env.publicUrl,
    name: user.name,
    token,
    validHours: VERIFY_EMAIL_TTL_MS / 3_600_000,
    brand: await brandFor(deps),
  });
  await deps.mailer.send({ to: user.email, ...message });
}

/** Sends a new verification e-mail to a signed-in user, unless the address is verified already. */
export async function resendVerificationEmail(
  deps: Deps,
  userId: string,
): Promise<"sent" | "already_verified"> {
  const [user] = await deps.database.db
    .select({ id: users.id, email: users.email, name: users.name, verifiedAt: users.emailVerifiedAt })
    .from(users)
    .where(eq(users.id, userId));
  if (!user) return "already_verified"; // erased since the token was issued: nothing to send
  if (user.verifiedAt) return "already_verified";
  await sendVerificationEmail(deps, user);
  return "sent";
}

/** Marks the token's owner verified. False when the token is wrong, used or expired (not told apart). */
export async function verifyEmail(deps: Deps, token: string, ip: string): Promise<boolean> {
  const now = deps.clock.now();
  return deps.database.db.transaction(async (tx) => {
    const userId = await consumeToken(tx, "verify_email", token, now);
    if (!userId) return false;
    await tx
      .update(users)
      .set({ emailVerifiedAt: verifiedNow(now), updatedAt: now })
      .where(eq(users.id, userId));
    await recordAudit(tx, {
      orgId: null,
      actor: { kind: "user", userId },
      action: "user.email_verified",
      ip,
    });
    return true;
  });
}

/**
 * Starts a password reset for whoever owns `email`, if anyone, and mails them a one-hour link.
 *
 * The route does not wait for this: its answer (always 202) and its timing are then the same whether
 * or not the account exists — even with SMTP, whose round trips would otherwise tell them apart. An
 * unknown address still costs a lookup and a token hash. Never rejects: failures are logged.
 */
export async function requestPasswordReset(deps: Deps, email: string): Promise<void> {
  try {
    const [user] = await deps.database.db
      .select({ id: users.id, email: users.email, name: users.name })
      .from(users)
      .where(and(eq(users.email, email), isNull(users.erasedAt)));
    if (!user) {
      sha256Hex(randomToken(32));
      return;
    }
    const token = await issueToken(deps, user.id, "reset_password", RESET_PASSWORD_TTL_MS);
    const message = resetPasswordMessage({
      publicUrl: deps.env.publicUrl,
      name: user.name,
      token,
      validMinutes: RESET_PASSWORD_TTL_MS / 60_000,
      brand: await brandFor(deps),
    });
    await deps.mailer.send({ to: user.email, ...message });
  } catch (error) {
    deps.logger.error({ err: error }, "password reset e-mail could not be prepared");
  }
}

/**
 * Sets a new password with a reset token. In one transaction: the token (and every other unused reset
 * token of the user) is used up, the argon2id hash replaced, the address marked verified (the link
 * proved control of it), every refresh token revoked (every session ends), and the audit entry
 * written. False when the token is wrong, used or expired (not told apart).
 */
export async function resetPassword(
  deps: Deps,
  token: string,
  password: string,
  ip: string,
): Promise<boolean> {
  const now = deps.clock.now();
  const { db } = deps.database;
  // Look first, hash after: argon2 costs ~100 ms of CPU and 64 MiB, not to be spent on wrong tokens.
  const [found] = await db
    .select({ id: oneTimeTokens.id })
    .from(oneTimeTokens)
    .where(
      and(
        eq(oneTimeTokens.tokenHash, sha256Hex(token)),
        eq(oneTimeTokens.purpose, "reset_password"),
        isNull(oneTimeTokens.usedAt),
        gt(oneTimeTokens.expiresAt, now),
      ),
    );
  if (!found) return false;
  const passwordHash = await hashPassword(password);
  const resetUser = await db.transaction(async (tx) => {
    // Claimed again inside the transaction: of two requests racing with one token, one wins.
    const userId = await consumeToken(tx, "reset_password", token, now);
    if (!userId) return undefined;
    // Whoever registered an address before proving it may have set up an authenticator on it: the
    // person who proves the address now gets the account without it (as single sign-on does).
    const [before] = await tx
      .select({ verified: users.emailVerifiedAt })
      .from(users)
      .where(eq(users.id, userId));
    if (before && !before.verified) {
      await tx.update(users).set({ totpSecret: null, totpEnabledAt: null }).where(eq(users.id, userId));
      await tx.delete(recoveryCodes).where(eq(recoveryCodes.userId, userId));
    }
    await tx
      .update(oneTimeTokens)
      .set({ usedAt: now })
      .where(
        and(
          eq(oneTimeTokens.userId, userId),
          eq(oneTimeTokens.purpose, "reset_password"),
          isNull(oneTimeTokens.usedAt),
        ),
      );
    await tx
      .update(users)
      .set({ passwordHash, emailVerifiedAt: verifiedNow(now), updatedAt: now })
      .where(eq(users.id, userId));
    await tx
      .update(refreshTokens)
      .set({ revokedAt: now })
      .where(and(eq(refreshTokens.userId, userId), isNull(refreshTokens.revokedAt)));
    await recordAudit(tx, {
      orgId: null,
      actor: { kind: "user", userId },
      action: "user.password_reset",
      target: { type: "user", id: userId },
      ip,
    });
    return userId;
  });
  if (!resetUser) return false;
  // Again after commit: a refresh racing with the reset may have added a token to a session.
  await revokeUserSessions(deps, resetUser);
  return true;
}
