import { randomFillSync } from "node:crypto";

/**
 * The API key format, after GitHub's tokens: `tg_` + 43 random base62 characters + a 6-character
 * base62 CRC32 of those 43 characters.
 *
 * - 43 characters drawn uniformly from 62 carry 256 bits, as much as 32 random bytes; drawing
 *   characters rather than encoding a 256-bit number keeps the first one uniform too (a 32-byte
 *   number in 43 base62 digits nearly always starts with 0 or 1), so display prefixes differ.
 * - The checksum lets a mistyped or made-up key be rejected without touching storage (CRC32 catches
 *   every single-character change), and lets secret scanners recognise a leaked key with few false
 *   positives. It is not a secret and proves nothing about authenticity: storage does that.
 */
export const KEY_PREFIX = "tg_";
const BODY_LENGTH = 43;
const CHECKSUM_LENGTH = 6;
/** The whole key's length: 52. */
export const KEY_LENGTH = KEY_PREFIX.length + BODY_LENGTH + CHECKSUM_LENGTH;
/** How much of a key lists show so a user can tell keys apart (`tg_` + 9 random characters). */
export const DISPLAY_PREFIX_LENGTH = 12;

const BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/** A regular expression secret scanners can use. */
export const KEY_PATTERN = /^tg_[0-9A-Za-z]{49}$/;

export type ParsedKey = { ok: true; key: string } | { ok: false; reason: "malformed" };

/** A new key and the prefix lists show. The key is shown once and stored only as its hash. */
export function generateKey(): { key: string; prefix: string } {
  let body = "";
  // 248 = 4 × 62: bytes at or above it are redrawn, so every character is uniform.
  while (body.length < BODY_LENGTH) {
    for (const byte of randomFillSync(new Uint8Array(64))) {
      if (byte < 248 && body.length < BODY_LENGTH) body += BASE62[byte % 62];
    }
  }
  const key = KEY_PREFIX + body + checksum(body);
  return { key, prefix: displayPrefix(key) };
}

/** The first characters of a key, as lists show them. */
export function displayPrefix(key: string): string {
  return key.slice(0, DISPLAY_PREFIX_LENGTH);
}

/**
 * Checks prefix, length, alphabet and checksum, from the string alone: the hot path calls it before
 * any cache or storage lookup. Cheap: one pass over 52 characters.
 */
export function parseKey(presented: string): ParsedKey {
  if (presented.length !== KEY_LENGTH || !KEY_PATTERN.test(presented)) return MALFORMED;
  const body = presented.slice(KEY_PREFIX.length, KEY_PREFIX.length + BODY_LENGTH);
  if (presented.slice(KEY_PREFIX.length + BODY_LENGTH) !== checksum(body)) return MALFORMED;
  return { ok: true, key: presented };
}

const MALFORMED: ParsedKey = { ok: false, reason: "malformed" };

/** CRC32 (IEEE, as zlib) of an ASCII string, as 6 base62 characters (62^6 > 2^32, so one-to-one). */
export function checksum(body: string): string {
  let value = crc32(body);
  let out = "";
  for (let i = 0; i < CHECKSUM_LENGTH; i++) {
    out = BASE62[value % 62] + out;
    value = Math.floor(value / 62);
  }
  return out;
}

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC32 of an ASCII string (zlib.crc32 arrived in Node 20.15; we support 20.10). */
export function crc32(ascii: string): number {
  let crc = 0xffffffff;
  for (let i = 0; i < ascii.length; i++) {
    crc = (CRC_TABLE[(crc ^ ascii.charCodeAt(i)) & 0xff] as number) ^ (crc >>> 8);
  }
  return (crc ^ 0xffffffff) >>> 0;
}
