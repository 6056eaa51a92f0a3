import { and, eq, isNull } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { refreshTokens } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { randomToken, sha256Hex } from "../../lib/crypto.js";
import { AppError } from "../../lib/errors.js";
import { newId } from "../../lib/ids.js";
import { recordAudit } from "../audit/service.js";
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
  totpEnabledAt: Date | null;
}

const invalidRefresh = () => new AppError("unauthenticated", "The refresh token is not valid.");

function isPlatformAdmin(deps: Deps, email: string): boolean {
  return deps.env.platformAdmins.includes(email.toLowerCase());
}

async function issue(
  deps: Deps,
  db: Database,
  user: SessionUser,
  familyId: string,
  userAgent?: string,
): Promise<SessionTokens> {
  const refresh = `tgr_${randomToken(32)}`;
  await db.insert(refreshTokens).values({
    id: newId("session"),
    familyId,
    userId: user.id,
    tokenHash: sha256Hex(refresh),
    expiresAt: new Date(deps.clock.nowMs() + REFRESH_TOKEN_DAYS * 86_400_000),
    userAgent: userAgent?.slice(0, 300) ?? null,
  });
  const access = await issueAccessToken(deps, {
    userId: user.id,
    sessionId: familyId,
    platformAdmin: isPlatformAdmin(deps, user.email),
    twoFactor: Boolean(user.totpEnabledAt),
  });
  return {
    access_token: access,
    refresh_token: refresh,
    token_type: "Bearer",
    expires_in: ACCESS_TOKEN_SECONDS,
  };
}

/** Starts a session (a new refresh-token family) for a user who has just proved who they are. */
export function startSession(
  deps: Deps,
  user: SessionUser,
  userAgent?: string,
  db: Database = deps.database.db,
) {
  return issue(deps, db, user, newId("session"), userAgent);
}

/**
 * Exchanges a refresh token for a new pair. A token can be exchanged once: presenting one that was
 * already rotated means it was copied, so the whole family is revoked and everyone holding any of
 * its tokens must sign in again.
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
  // Claim it: only one exchange of a token can win, even when two arrive at once.
  const claimed = await db
    .update(refreshTokens)
    .set({ usedAt: deps.clock.now() })
    .where(and(eq(refreshTokens.id, row.id), isNull(refreshTokens.usedAt), isNull(refreshTokens.revokedAt)))
    .returning({ id: refreshTokens.id });
  if (claimed.length === 0) {
    await revokeFamily(deps, row.familyId);
    await recordAudit(db, {
      orgId: null,
      actor: { kind: "user", userId: row.userId },
      action: "session.refresh_token_reused",
      target: { type: "session", id: row.familyId },
    });
    throw invalidRefresh();
  }
  const user = await loadUser(row.userId);
  if (!user) throw invalidRefresh();
  return issue(deps, db, user, row.familyId, userAgent);
}

/** Ends a session: every refresh token of the family, and (through the check in resolveCaller) its access tokens. */
export async function revokeFamily(deps: Deps, familyId: string): Promise<void> {
  await deps.database.db
    .update(refreshTokens)
    .set({ revokedAt: deps.clock.now() })
    .where(and(eq(refreshTokens.familyId, familyId), isNull(refreshTokens.revokedAt)));
}

/** True while the session has a live (unrevoked, unexpired) token. */
export async function sessionIsLive(deps: Deps, familyId: string): Promise<boolean> {
  const rows = await deps.database.db
    .select({ expiresAt: refreshTokens.expiresAt })
    .from(refreshTokens)
    .where(and(eq(refreshTokens.familyId, familyId), isNull(refreshTokens.revokedAt)));
  return rows.some((r) => r.expiresAt.getTime() > deps.clock.nowMs());
}
