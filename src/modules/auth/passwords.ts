import argon2 from "argon2";

/** Minimum password length (the floor; no composition rules, per NIST SP 800-63B). */
export const MIN_PASSWORD_LENGTH = 10;

/** argon2id with the library's defaults (64 MiB, 3 passes): OWASP's recommended family. */
export function hashPassword(password: string): Promise<string> {
  return argon2.hash(password, { type: argon2.argon2id });
}

export async function verifyPassword(hash: string, password: string): Promise<boolean> {
  try {
    return await argon2.verify(hash, password);
  } catch {
    return false;
  }
}

/**
 * A real hash to verify against when the account does not exist, so a login for an unknown e-mail
 * takes as long as one for a known e-mail with a wrong password.
 */
let decoy: Promise<string> | undefined;
export async function verifyDecoy(password: string): Promise<false> {
  decoy ??= hashPassword("decoy-password-that-matches-nothing");
  await verifyPassword(await decoy, password);
  return false;
}
