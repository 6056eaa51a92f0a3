import { describe, expect, it } from "vitest";
import { isOperatorKey } from "./auth.js";
import { sha256 } from "./secrets.js";

describe("isOperatorKey", () => {
  it("accepts exactly the key whose hash is stored, before and after it is cached", () => {
    const key = "tg_admin_0123456789abcdefghijklmnopqrstuvwxyz";
    const hash = sha256(key);
    const others = ["", "tg_admin_", `${key}x`, key.slice(0, -1), `${key.slice(0, -1)}Z`, `${key}\u0000`];
    for (const other of others) expect(isOperatorKey(other, hash), JSON.stringify(other)).toBe(false);
    expect(isOperatorKey(undefined, hash)).toBe(false);
    expect(isOperatorKey(key, hash)).toBe(true); // verified by hash, now cached
    expect(isOperatorKey(key, hash)).toBe(true);
    // A longer key used in between leaves no bytes behind in the shared slot.
    expect(isOperatorKey(`${key}${key}`, hash)).toBe(false);
    for (const other of others) expect(isOperatorKey(other, hash), JSON.stringify(other)).toBe(false);
    expect(isOperatorKey(key, hash)).toBe(true);
  });

  it("keeps each stored hash's key apart", () => {
    const [a, b] = ["key-a-0123456789", "key-b-0123456789"];
    const [hashA, hashB] = [sha256(a), sha256(b)];
    expect(isOperatorKey(a, hashA)).toBe(true);
    expect(isOperatorKey(b, hashB)).toBe(true);
    expect(isOperatorKey(a, hashB)).toBe(false);
    expect(isOperatorKey(b, hashA)).toBe(false);
  });

  it("compares as the hash does: by UTF-8 bytes, and keys too long for the cache by hash", () => {
    const key = "clé-ünïcode-🔑";
    const hash = sha256(key);
    expect(isOperatorKey(key, hash)).toBe(true);
    expect(isOperatorKey(key, hash)).toBe(true);
    expect(isOperatorKey("cle-unicode-", hash)).toBe(false);
    // A lone surrogate is hashed as U+FFFD; so is it compared.
    const surrogate = sha256("a\ud800");
    expect(isOperatorKey("a\ufffd", surrogate)).toBe(true);
    expect(isOperatorKey("a\ud800", surrogate)).toBe(true);
    const long = "k".repeat(500);
    expect(isOperatorKey(long, sha256(long))).toBe(true);
    expect(isOperatorKey(long, sha256(long))).toBe(true);
    expect(isOperatorKey(`${long}x`, sha256(long))).toBe(false);
  });
});
