import { randomBytes, randomFillSync } from "node:crypto";

/**
 * Prefixed, time-sortable ids (`org_01jd…`): a ULID (48-bit millisecond time + 80 random bits,
 * monotonic within a millisecond) in lower case behind a resource prefix. Sorting ids sorts by
 * creation time; the prefix says what an id names, so a key id pasted where an org id belongs fails
 * validation instead of silently matching nothing.
 */
export const ID_PREFIXES = {
  org: "org",
  user: "usr",
  key: "key",
  invoice: "inv",
  subscription: "sub",
  event: "evt",
  job: "job",
  request: "req",
  session: "ses",
  webhook: "whe",
  delivery: "dlv",
  coupon: "cpn",
  credit: "crd",
  audit: "aud",
  invitation: "ivt",
  email: "eml",
  oneTimeToken: "ott",
  recoveryCode: "rcv",
  threshold: "thr",
  journal: "jrn",
  checkout: "chk",
  payment: "pay",
  redemption: "rdm",
  ledger: "cle",
  portal: "bps",
  creditNote: "crn",
  creditNoteLine: "cnl",
  refund: "rfd",
  outbox: "obx",
  message: "msg",
  attempt: "att",
  broadcast: "bct",
} as const;

export type IdKind = keyof typeof ID_PREFIXES;

/** Crockford's base32, lower case: no i, l, o, u — unambiguous when read aloud or retyped. */
const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz";
const POOL_SIZE = 4096;
let pool = new Uint8Array(0);
let poolOffset = POOL_SIZE;
let lastMs = -1;
let lastTime = "";
const lastRandom = new Uint8Array(16);

/**
 * A ULID: 10 characters of millisecond time, then 16 of randomness (80 bits), monotonic within a
 * millisecond (the random part is incremented) and across a clock that steps back. Random bytes come
 * from a pool refilled 4 KiB at a time: ids are minted on every request, and one crypto call per id
 * cost a measurable share of a trivial route's throughput.
 */
function ulid(): string {
  const now = Date.now();
  if (now > lastMs) {
    lastMs = now;
    let time = "";
    let t = now;
    for (let i = 0; i < 10; i++) {
      time = ALPHABET[t % 32] + time;
      t = Math.floor(t / 32);
    }
    lastTime = time;
    if (poolOffset + 16 > POOL_SIZE) {
      pool = randomFillSync(new Uint8Array(POOL_SIZE));
      poolOffset = 0;
    }
    // 256 is a multiple of 32, so masking keeps every character uniform.
    for (let i = 0; i < 16; i++) lastRandom[i] = (pool[poolOffset + i] as number) & 31;
    poolOffset += 16;
  } else {
    // Same millisecond (or the clock stepped back): the next value after the last one.
    let i = 15;
    while (i >= 0 && lastRandom[i] === 31) lastRandom[i--] = 0;
    if (i < 0) throw new Error("ulid: 2^80 ids in one millisecond");
    lastRandom[i] = (lastRandom[i] as number) + 1;
  }
  let random = "";
  for (let i = 0; i < 16; i++) random += ALPHABET[lastRandom[i] as number];
  return lastTime + random;
}

export function newId(kind: IdKind): string {
  return `${ID_PREFIXES[kind]}_${ulid()}`;
}

const ID_BODY = /^[0-9a-hjkmnp-tv-z]{26}$/;

/** True when `value` is a well-formed id of this kind. */
export function isId(kind: IdKind, value: string): boolean {
  const prefix = `${ID_PREFIXES[kind]}_`;
  return value.startsWith(prefix) && ID_BODY.test(value.slice(prefix.length));
}

/**
 * An id that is also a bearer capability (a checkout page, a portal link): the prefix and 32
 * characters of fresh randomness (160 bits), with no time part and nothing shared with other ids, so
 * seeing any number of ids tells nothing about the next.
 */
export function secretId(kind: IdKind): string {
  const bytes = randomBytes(20);
  let out = "";
  let buffer = 0;
  let bits = 0;
  for (const byte of bytes) {
    buffer = (buffer << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += ALPHABET[(buffer >> bits) & 31];
    }
  }
  return `${ID_PREFIXES[kind]}_${out}`;
}
