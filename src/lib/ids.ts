import { monotonicFactory } from "ulid";

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
} as const;

export type IdKind = keyof typeof ID_PREFIXES;

const ulid = monotonicFactory();

export function newId(kind: IdKind): string {
  return `${ID_PREFIXES[kind]}_${ulid().toLowerCase()}`;
}

const ID_BODY = /^[0-9a-hjkmnp-tv-z]{26}$/;

/** True when `value` is a well-formed id of this kind. */
export function isId(kind: IdKind, value: string): boolean {
  const prefix = `${ID_PREFIXES[kind]}_`;
  return value.startsWith(prefix) && ID_BODY.test(value.slice(prefix.length));
}
