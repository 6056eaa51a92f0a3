import { timingSafeEqual } from "node:crypto";
import { createMiddleware } from "hono/factory";
import type { AppEnv } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { sha256 } from "./secrets.js";

/** The bearer token of a request, or undefined. */
export function bearerToken(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match?.[1];
}

/**
 * Keys up to this many characters are compared from the verified-key cache below; longer ones are
 * hashed every time. Every byte of a padded slot is compared: 2 for the length, then up to 3 bytes
 * of UTF-8 per character (what the hash hashes for a string).
 */
const CACHED_KEY_CHARS = 128;
const SLOT_BYTES = 2 + 3 * CACHED_KEY_CHARS;

/** Per stored hash, the key that matched it, length-prefixed and zero-padded to SLOT_BYTES. */
const verified = new WeakMap<Buffer, Buffer>();
const presentedSlot = Buffer.alloc(SLOT_BYTES);

/** `key` as a slot: its UTF-8 length, its bytes, then zeros (for keys of at most CACHED_KEY_CHARS). */
function fillSlot(slot: Buffer, key: string): Buffer {
  const length = slot.write(key, 2, "utf8");
  slot.writeUInt16BE(length, 0);
  slot.fill(0, 2 + length);
  return slot;
}

/**
 * Constant-time comparison of a presented operator key with the stored hash.
 *
 * Every `POST /v1/check` presents the key, and hashing it was 3% of a check's CPU
 * (docs/benchmarks.md). So once a key has matched the hash, it is kept, padded to a fixed-size slot,
 * and later keys are compared with it directly. Still constant-time with respect to the secret:
 * timingSafeEqual compares the whole slot — the length prefix and the zero padding make slots of
 * different keys differ without a length check — and what varies with the presented key (copying
 * it in, or hashing one too long for a slot) is the caller's own input. It accepts exactly what the
 * hash accepts: slots are equal exactly when the UTF-8 bytes are, and those bytes are what is hashed.
 * The cost: after the first operator request the process holds the key itself, as it holds each
 * request's headers for a while (and `TOLLGATE_ADMIN_KEY` in its environment when configured so).
 */
export function isOperatorKey(presented: string | undefined, adminKeyHash: Buffer): boolean {
  if (!presented) return false;
  const cacheable = presented.length <= CACHED_KEY_CHARS;
  const known = cacheable ? verified.get(adminKeyHash) : undefined;
  if (known) return timingSafeEqual(fillSlot(presentedSlot, presented), known);
  // Hashing first makes both sides the same length, so timingSafeEqual never short-circuits on length.
  const matches = timingSafeEqual(sha256(presented), adminKeyHash);
  if (matches && cacheable) verified.set(adminKeyHash, fillSlot(Buffer.alloc(SLOT_BYTES), presented));
  return matches;
}

/** Admits only the operator (`Authorization: Bearer <TOLLGATE_ADMIN_KEY>`); 401 otherwise. */
export const requireOperator = createMiddleware<AppEnv>(async (c, next) => {
  const token = bearerToken(c.req.header("authorization"));
  if (!isOperatorKey(token, c.get("deps").secrets.adminKeyHash)) {
    throw new AppError(
      "unauthenticated",
      token ? "The credentials are not valid." : "This endpoint needs the operator key as a Bearer token.",
      { headers: { "www-authenticate": 'Bearer realm="tollgate"' } },
    );
  }
  await next();
});
