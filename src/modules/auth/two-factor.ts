import { and, eq, isNull } from "drizzle-orm";
import { generateSecret, generateURI, verify } from "otplib";
import { recoveryCodes, type users } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { decrypt, deriveKey, encrypt, randomToken, sha256Hex } from "../../lib/crypto.js";

/** TOTP secrets are encrypted at rest with a key derived from TOLLGATE_SECRET. */
const totpKey = (deps: Deps) => deriveKey(deps.secrets.secret, "totp-secret");

export function newTotpSecret(deps: Deps, email: string): { sealed: string; secret: string; uri: string } {
  const secret = generateSecret();
  return {
    sealed: encrypt(totpKey(deps), secret),
    secret,
    uri: generateURI({ issuer: "Tollgate", label: email, secret }),
  };
}

/** Checks a 6-digit code against the sealed secret at the app's clock, allowing one step of drift. */
export async function verifyTotp(deps: Deps, sealed: string, code: string): Promise<boolean> {
  if (!/^\d{6}$/.test(code)) return false;
  try {
    const secret = decrypt(totpKey(deps), sealed);
    const result = await verify({
      secret,
      token: code,
      epoch: Math.floor(deps.clock.nowMs() / 1000),
      epochTolerance: 30,
    });
    return result.valid;
  } catch {
    return false;
  }
}

/** Ten single-use recovery codes, shown once; only their hashes are kept. */
export function newRecoveryCodes(): string[] {
  return Array.from({ length: 10 }, () => {
    const raw = randomToken(8).replace(/[-_]/g, "x").slice(0, 10).toLowerCase();
    return `${raw.slice(0, 5)}-${raw.slice(5, 10)}`;
  });
}

export const hashRecoveryCode = (code: string) => sha256Hex(code.trim().toLowerCase());

/** Uses up a recovery code if it is one of the user's unused codes (atomically: once only). */
export async function consumeRecoveryCode(deps: Deps, userId: string, code: string): Promise<boolean> {
  const used = await deps.database.db
    .update(recoveryCodes)
    .set({ usedAt: deps.clock.now() })
    .where(
      and(
        eq(recoveryCodes.userId, userId),
        eq(recoveryCodes.codeHash, hashRecoveryCode(code)),
        isNull(recoveryCodes.usedAt),
      ),
    )
    .returning({ id: recoveryCodes.id });
  return used.length > 0;
}

/** The second factor of a sign-in: a current TOTP code, or an unused recovery code. */
export async function checkSecondFactor(
  deps: Deps,
  user: typeof users.$inferSelect,
  proof: { totp_code?: string | undefined; recovery_code?: string | undefined },
): Promise<boolean> {
  if (!user.totpEnabledAt || !user.totpSecret) return true;
  if (proof.totp_code) return verifyTotp(deps, user.totpSecret, proof.totp_code);
  if (proof.recovery_code) return consumeRecoveryCode(deps, user.id, proof.recovery_code);
  return false;
}
