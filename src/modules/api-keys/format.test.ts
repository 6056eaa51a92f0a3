import zlib from "node:zlib";
import { describe, expect, it } from "vitest";
import { checksum, crc32, displayPrefix, generateKey, KEY_LENGTH, KEY_PATTERN, parseKey } from "./format.js";

const ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

describe("API key format", () => {
  it("generates tg_ keys of 52 base62 characters that parse, with a 12-character display prefix", () => {
    const { key, prefix } = generateKey();
    expect(key).toHaveLength(KEY_LENGTH);
    expect(KEY_LENGTH).toBe(52);
    expect(key).toMatch(KEY_PATTERN);
    expect(key.startsWith("tg_")).toBe(true);
    expect(prefix).toBe(key.slice(0, 12));
    expect(displayPrefix(key)).toBe(prefix);
    expect(parseKey(key)).toEqual({ ok: true, key });
  });

  it("never repeats, and draws every position uniformly (the first character too)", () => {
    const keys = Array.from({ length: 2000 }, () => generateKey().key);
    expect(new Set(keys).size).toBe(keys.length);
    const firstChars = new Set(keys.map((key) => key[3]));
    expect(firstChars.size).toBeGreaterThan(55);
  });

  it("ends with the base62 CRC32 of the random part", () => {
    const { key } = generateKey();
    const body = key.slice(3, 46);
    expect(key.slice(46)).toBe(checksum(body));
    expect(checksum(body)).toHaveLength(6);
  });

  it("computes the same CRC32 as zlib", () => {
    const nodeCrc = (zlib as unknown as { crc32?: (data: string) => number }).crc32;
    for (const sample of ["", "a", "tollgate", generateKey().key]) {
      if (nodeCrc) expect(crc32(sample)).toBe(nodeCrc(sample));
    }
    expect(crc32("123456789")).toBe(0xcbf43926);
  });

  it("rejects every single-character change as malformed", () => {
    const { key } = generateKey();
    for (let i = 0; i < key.length; i++) {
      for (const replacement of ALPHABET) {
        if (replacement === key[i]) continue;
        const typo = key.slice(0, i) + replacement + key.slice(i + 1);
        expect(parseKey(typo), `position ${i} → ${replacement}`).toEqual({ ok: false, reason: "malformed" });
      }
    }
  });

  it("rejects swapped neighbours, a dropped or an extra character", () => {
    const { key } = generateKey();
    for (let i = 3; i < key.length - 1; i++) {
      if (key[i] === key[i + 1]) continue;
      const swapped = key.slice(0, i) + key[i + 1] + key[i] + key.slice(i + 2);
      expect(parseKey(swapped).ok).toBe(false);
    }
    expect(parseKey(key.slice(0, -1)).ok).toBe(false);
    expect(parseKey(`${key}0`).ok).toBe(false);
  });

  it("rejects other prefixes, other alphabets and other things entirely", () => {
    const { key } = generateKey();
    const samples = [
      "",
      "tg_",
      `TG_${key.slice(3)}`,
      `tk_${key.slice(3)}`,
      `${key.slice(0, 10)}-${key.slice(11)}`,
      `${key.slice(0, 10)}_${key.slice(11)}`,
      ` ${key.slice(1)}`,
      "tg_admin_this-is-not-the-key-0000000000000000000000",
      "Bearer token",
    ];
    for (const sample of samples)
      expect(parseKey(sample), sample).toEqual({ ok: false, reason: "malformed" });
  });
});
