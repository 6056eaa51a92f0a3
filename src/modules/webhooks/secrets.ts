import { randomBytes } from "node:crypto";
import type { Deps } from "../../deps.js";
import { decrypt, deriveKey, encrypt } from "../../lib/crypto.js";

/**
 * Endpoint signing secrets: `whsec_` and 32 random bytes in base64, the Standard Webhooks format that
 * every verifier library accepts. Stored encrypted (AES-GCM, key derived from TOLLGATE_SECRET): a
 * database dump alone cannot forge deliveries.
 */

const keyOf = (deps: Deps) => deriveKey(deps.secrets.secret, "webhook-endpoint-secret");

export function newEndpointSecret(): string {
  return `whsec_${randomBytes(32).toString("base64")}`;
}

export const sealSecret = (deps: Deps, secret: string) => encrypt(keyOf(deps), secret);
export const openSecret = (deps: Deps, sealed: string) => decrypt(keyOf(deps), sealed);
