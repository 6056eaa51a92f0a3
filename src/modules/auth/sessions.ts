import { and, eq, isNull, ne, type SQL } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { refreshTokens } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { randomToken, sha256Hex } from "../../lib/crypto.js";
import { AppError } from "../../lib/errors.js";
import { newId } from "../../lib/ids.js";
import { recordUserAudit } from "../audit/service.js";
import { ACCESS_TOKEN_SECONDS, issueAccessToken } from "./tokens.js";

/** A session lasts 30 days without use; each refresh rotates the token and renews that window. */
export const REFRESH_TOKEN_DAYS = 30;

export interface SessionTokens {
  access_token: string;
  refresh_token: string;
  token_type: "Bearer";
  expires_in: number;
}

export interface SessionUser {
  id: string;
  email: string;
  emailVerifiedAt?: Date | null;
}

const invalidRefresh = () => new AppError("unauthenticated", "The refresh token is not valid.");

/** Platform admins are named by e-mail in configuration, and count only once that address is verified. */
function isPlatformAdmin(deps: Deps, user: SessionUser): boolean {
  return Boolean(user.emailVerifiedAt) && deps.env.platformAdmins.includes(user.email.toLowerCase());
}

async function issue(
  deps: Deps,
  db: Database,
  user: SessionUser,
  family: { id: string; secondFactor: boolean },
  userAgent?: string,
): Promise<SessionTokens> {
  const refresh = `tgr_${randomToken(32)}`;
  await db.insert(refreshTokens).values({
    id: newId("session"),
    familyId: family.id,
    userId: user.id,
    tokenHash: sha256Hex(refresh),
    expiresAt: new Date(deps.clock.nowMs() + REFRESH_TOKEN_DAYS * 86_400_000),
    secondFactor: family.secondFactor,
    userAgent: userAgent?.slice(0, 300) ?? null,
  });
  const access = await issueAccessToken(deps, {
    userId: user.id,
    sessionId: family.id,
    platformAdmin: isPlatformAdmin(deps, user),
    twoFactor: family.secondFactor,
  });
  return {
    access_token: access,
    refresh_token: refresh,
    token_type: "Bearer",
    expires_in: ACCESS_TOKEN_SECONDS,
  };
}

/**
 * Starts a session (a new refresh-token family) for a user who has just proved who they are.
 * `secondFactor` says whether that proof included a second factor; it stays with the session.
 */
export function startSession(
  deps: Deps,
  user: SessionUser,
  options: { secondFactor?: boolean; userAgent?: string | undefined } = {},
  db: Database = deps.database.db,
) {
  return issue(
    deps,
    db,
    user,
    { id: newId("session"), secondFactor: options.secondFactor ?? false },
    options.userAgent,
  );
}

/**
 * Exchanges a refresh token for a new pair. A token can be exchanged once: presenting one that was
 * already rotated means it was copied, so the whole family is revoked and everyone holding any of
 * its tokens must sign in again. The exchange holds a lock on the family, so a revocation (logout,
 * password reset, reuse detected elsewhere) either happens first and wins, or waits for it.
 */
export async function rotateRefreshToken(
  deps: Deps,
  presented: string,
  loadUser: (userId: string) => Promise<SessionUser | undefined>,
  userAgent?: string,
): Promise<SessionTokens> {
  const { db } = deps.database;
  const [row] = await db
    .select()
    .from(refreshTokens)
    .where(eq(refreshTokens.tokenHash, sha256Hex(presented)));
  if (!row || row.revokedAt || row.expiresAt.getTime() <= deps.clock.nowMs()) throw invalidRefresh();
  // Read before the transaction: embedded PGlite has one connection, which the transaction holds.
  const user = await loadUser(row.userId);
  if (!user) throw invalidRefresh();
  const outcome = await db.transaction(async (tx) => {
    const family = await tx
      .select({ id: refreshTokens.id, usedAt: refreshTokens.usedAt, revokedAt: refreshTokens.revokedAt })
      .from(refreshTokens)
      .where(eq(refreshTokens.familyId, row.familyId))
      .for("update");
    const current = family.find((t) => t.id === row.id);
    // Deleted meanwhile (the account was erased): as dead as a revoked one.
    if (!current || family.some((t) => t.revokedAt)) return "revoked" as const;
    if (current.usedAt) return "reused" as const;
    await tx.update(refreshTokens).set({ usedAt: deps.clock.now() }).where(eq(refreshTokens.id, row.id));
    return issue(deps, tx, user, { id: row.familyId, secondFactor: row.secondFactor }, userAgent);
  });
  if (outcome === "revoked") throw invalidRefresh();
  if (outcome === "reused") {
    await revokeFamily(deps, row.familyId);
    await recordUserAudit(db, row.userId, {
      action: "session.refresh_token_reused",
      target: { type: "session", id: row.familyId },
    });
    throw invalidRefresh();
  }
  return outcome;
}

/**
 * Revokes refresh tokens matching `where`. Twice: a rotation that held the family's lock may commit
 * a new token after the first pass's snapshot; the second pass sees and revokes it.
 */
async function revokeTokens(deps: Deps, where: SQL | undefined): Promise<void> {
  for (let pass = 0; pass < 2; pass++) {
    await deps.database.db
      .update(refreshTokens)
      .set({ revokedAt: deps.clock.now() })
      .where(and(where, isNull(refreshTokens.revokedAt)));
  }
}

/** Ends every session of a user (password reset), or every one but `keep` (two-factor turned on). */
export function revokeUserSessions(deps: Deps, userId: string, keep?: string): Promise<void> {
  return revokeTokens(
    deps,
    keep
      ? and(eq(refreshTokens.userId, userId), ne(refreshTokens.familyId, keep))
      : eq(refreshTokens.userId, userId),
  );
}

/** Ends a session: every refresh token of the family, and (through the check in resolveCaller) its access tokens. */
export function revokeFamily(deps: Deps, familyId: string): Promise<void> {
  return revokeTokens(deps, eq(refreshTokens.familyId, familyId));
}

/** True while the session has a live (unrevoked, unexpired) token. */
export async function sessionIsLive(deps: Deps, familyId: string): Promise<boolean> {
  const rows = await deps.database.db
    .select({ expiresAt: refreshTokens.expiresAt })
    .from(refreshTokens)
    .where(and(eq(refreshTokens.familyId, familyId), isNull(refreshTokens.revokedAt)));
  return rows.some((r) => r.expiresAt.getTime() > deps.clock.nowMs());
}
