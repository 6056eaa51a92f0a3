import { describe, expect, it } from "vitest";
import { decrypt, deriveKey, encrypt, randomToken, safeEqual, sha256Hex } from "./crypto.js";

describe("crypto helpers", () => {
  const key = deriveKey("a-secret-of-at-least-32-characters-long", "test");

  it("encrypts so that only the same key decrypts, and tampering is detected", () => {
    const sealed = encrypt(key, "JBSWY3DPEHPK3PXP");
    expect(sealed).not.toContain("JBSWY3DPEHPK3PXP");
    expect(decrypt(key, sealed)).toBe("JBSWY3DPEHPK3PXP");
    expect(encrypt(key, "x")).not.toBe(encrypt(key, "x")); // fresh IV each time
    expect(() => decrypt(deriveKey("a-secret-of-at-least-32-characters-long", "other"), sealed)).toThrow();
    const [v, iv, tag, body] = sealed.split(".");
    const flipped = `${v}.${iv}.${tag}.${(body ?? "").slice(0, -2)}AA`;
    expect(() => decrypt(key, flipped)).toThrow();
  });

  it("derives different keys per purpose", () => {
    expect(deriveKey("s".repeat(32), "jwt").equals(deriveKey("s".repeat(32), "totp"))).toBe(false);
  });

  it("makes long random tokens and compares in constant time", () => {
    expect(randomToken()).toMatch(/^[\w-]{43}$/);
    expect(randomToken()).not.toBe(randomToken());
    expect(sha256Hex("abc")).toBe("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    expect(safeEqual("abc", "abc")).toBe(true);
    expect(safeEqual("abc", "abcd")).toBe(false);
  });
});
