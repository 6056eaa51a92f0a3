import { describe, expect, it } from "vitest";
import { sha256Hex, sha256Key } from "../src/sha256.js";

/** The key cache's synchronous SHA-256 gives what Web Crypto gives, for every length and alphabet. */
async function webCrypto(text: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

describe("sha256Hex", () => {
  it("matches the FIPS 180-4 examples", () => {
    expect(sha256Hex("")).toBe("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    expect(sha256Hex("abc")).toBe("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    expect(sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")).toBe(
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    );
  });

  it("matches Web Crypto at every length around the block boundaries, ASCII or not", async () => {
    const alphabet = "abcXYZ0189_-é€😀";
    for (let length = 0; length <= 300; length++) {
      let text = "";
      for (let i = 0; i < length; i++) text += alphabet[(i * 7 + length) % alphabet.length];
      expect(sha256Hex(text), `length ${length}`).toBe(await webCrypto(text));
    }
    const key = `tg_${"Ab3".repeat(14)}x${"c".repeat(6)}`;
    expect(sha256Hex(key)).toBe(await webCrypto(key));
    // The Map-key form holds the same 32 bytes, two per character.
    const packed = sha256Key(key);
    expect(packed).toHaveLength(16);
    const bytes = packed
      .split("")
      .map((c) => c.charCodeAt(0))
      .flatMap((u) => [u >>> 8, u & 0xff]);
    expect(bytes.map((b) => b.toString(16).padStart(2, "0")).join("")).toBe(await webCrypto(key));
  });
});
