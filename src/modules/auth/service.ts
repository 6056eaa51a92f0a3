import { and, eq, isNull } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { memberships, orgs, users } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { AppError, isUniqueViolation } from "../../lib/errors.js";
import { newId } from "../../lib/ids.js";
import { recordAudit, recordUserAudit } from "../audit/service.js";
import { sendWelcomeEmail } from "../notifications/emails.js";
import { insertDefaultSubscription } from "../plans/subscriptions.js";
import { guardAttempt } from "./abuse.js";
import { sendVerificationEmail } from "./email-flows.js";
import { hashPassword, verifyDecoy, verifyPassword } from "./passwords.js";
import { type SessionUser, startSession } from "./sessions.js";
import { checkSecondFactor } from "./two-factor.js";

type User = typeof users.$inferSelect;

/**
 * What every new account gets, in one transaction: the user, their personal org (they own it) and
 * the `user.registered` audit entry. `within` adds rows to the same transaction (an SSO identity).
 * A taken e-mail address answers 409.
 */
export async function createAccount(
  deps: Deps,
  input: { email: string; name: string; passwordHash: string | null; emailVerified: boolean },
  ip: string,
  options: { metadata?: Record<string, unknown>; within?: (tx: Database, user: User) => Promise<void> } = {},
) {
  const now = deps.clock.now();
  const user: User = {
    id: newId("user"),
    email: input.email,
    name: input.name,
    passwordHash: input.passwordHash,
    emailVerifiedAt: input.emailVerified ? now : null,
    totpSecret: null,
    totpEnabledAt: null,
    createdAt: now,
    updatedAt: now,
    erasedAt: null,
  };
  const org = { id: newId("org"), name: `${input.name}'s organization`, personal: true, createdAt: now };
  try {
    await deps.database.db.transaction(async (tx) => {
      await tx.insert(users).values(user);
      await tx.insert(orgs).values(org);
      await tx.insert(memberships).values({ orgId: org.id, userId: user.id, role: "owner", createdAt: now });
      await insertDefaultSubscription(tx, deps, org.id, now);
      await recordAudit(tx, {
        orgId: org.id,
        actor: { kind: "user", userId: user.id },
        action: "user.registered",
        ...(options.metadata ? { metadata: options.metadata } : {}),
        ip,
      });
      await options.within?.(tx, user);
    });
  } catch (error) {
    // Said plainly: registration cannot hide whether an address has an account (the attempt budget
    // limits how fast anyone can ask).
    if (isUniqueViolation(error))
      throw new AppError("conflict", "An account with this e-mail address already exists.");
    throw error;
  }
  return { user, org };
}

/**
 * Creates the user, their personal org (they own it) and a session, in one transaction; the
 * verification and welcome e-mails go out after it commits.
 */
export async function register(
  deps: Deps,
  input: { email: string; password: string; name: string },
  ip: string,
  userAgent?: string,
) {
  await guardAttempt(deps, "register", input.email, ip);
  const passwordHash = await hashPassword(input.password);
  const { user, org } = await createAccount(
    deps,
    { email: input.email, name: input.name, passwordHash, emailVerified: false },
    ip,
  );
  await sendVerificationEmail(deps, user);
  // A welcome is a courtesy: the account exists whatever happens to it.
  try {
    await sendWelcomeEmail(deps, { userId: user.id, orgId: org.id });
  } catch (error) {
    deps.logger.warn({ err: (error as Error).message, user: user.id }, "welcome e-mail not recorded");
  }
  const tokens = await startSession(deps, user, { userAgent });
  return { user, org, tokens };
}

/**
 * Signs in. Every failure is the same 401 with the same wording and about the same cost (an unknown
 * e-mail is checked against a decoy hash), so responses do not reveal which accounts exist.
 */
export async function login(
  deps: Deps,
  input: {
    email: string;
    password: string;
    totp_code?: string | undefined;
    recovery_code?: string | undefined;
  },
  ip: string,
  userAgent?: string,
) {
  await guardAttempt(deps, "login", input.email, ip);
  const { db } = deps.database;
  const [user] = await db.select().from(users).where(eq(users.email, input.email));
  const passwordOk = user?.passwordHash
    ? await verifyPassword(user.passwordHash, input.password)
    : await verifyDecoy(input.password);
  // An erased account has no password, so it fails above already; said again for whoever changes that.
  if (!user || !passwordOk || user.erasedAt)
    throw new AppError("unauthenticated", "The e-mail address or password is not correct.");
  if (user.totpEnabledAt) {
    if (!input.totp_code && !input.recovery_code) {
      throw new AppError(
        "unauthenticated",
        "Enter the code from your authenticator app (or a recovery code).",
        {
          two_factor_required: true,
        },
      );
    }
    if (!(await checkSecondFactor(deps, user, input))) {
      throw new AppError("unauthenticated", "The two-factor code is not correct.", {
        two_factor_required: true,
      });
    }
  }
  // The session remembers whether this sign-in used a second factor (orgs may require it).
  const tokens = await startSession(deps, user, { secondFactor: Boolean(user.totpEnabledAt), userAgent });
  await recordUserAudit(db, user.id, { action: "user.signed_in", ip });
  return { user, tokens };
}

export async function loadSessionUser(deps: Deps, userId: string): Promise<SessionUser | undefined> {
  const [user] = await deps.database.db
    .select({ id: users.id, email: users.email, emailVerifiedAt: users.emailVerifiedAt })
    .from(users)
    .where(and(eq(users.id, userId), isNull(users.erasedAt)));
  return user;
}
