/**
 * SHA-256 (FIPS 180-4) of a string's UTF-8 bytes, synchronously: as lowercase hex, or as a compact
 * Map key.
 *
 * The key cache hashes the API key of every request it sees so that keys are never held in memory as
 * map keys. Web Crypto's `crypto.subtle.digest` is asynchronous and, on Node, runs each digest as a
 * job on the thread pool: 15–45 µs per call, more than a whole bare request takes. API keys are short
 * (about 50 bytes: one block), which this does in under a microsecond, in plain JavaScript
 * (no Node API: the core stays web-standard). test/sha256.test.ts checks it against Web Crypto.
 */

// Int32Array throughout: every value stays a 32-bit integer in optimized code (a Uint32Array reads
// words of 2^31 and more as doubles, which made the rounds several times slower).
const K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
  0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
  0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
  0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
  0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
  0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
  0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
  0xc67178f2,
]);

const W = new Int32Array(64);
/** The message as big-endian words, padded: reused by every call (two blocks hold 119 bytes). */
let M = new Int32Array(32);
const encoder = new TextEncoder();
const HEX: string[] = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

/**
 * Writes the string's UTF-8 bytes into M as big-endian words, padded to whole 64-byte blocks with
 * the message length at the end; returns the number of blocks.
 */
function load(text: string): number {
  let ascii = true;
  for (let i = 0; i < text.length; i++) {
    if (text.charCodeAt(i) > 0x7f) {
      ascii = false;
      break;
    }
  }
  const bytes = ascii ? undefined : encoder.encode(text);
  const length = bytes ? bytes.length : text.length;
  const blocks = Math.ceil((length + 9) / 64);
  const words = blocks * 16;
  if (M.length < words) M = new Int32Array(words);
  const whole = length >>> 2;
  if (bytes === undefined) {
    // Four characters to a word (ASCII: one byte each).
    for (let w = 0, i = 0; w < whole; w++, i += 4) {
      M[w] =
        (text.charCodeAt(i) << 24) |
        (text.charCodeAt(i + 1) << 16) |
        (text.charCodeAt(i + 2) << 8) |
        text.charCodeAt(i + 3);
    }
  } else {
    for (let w = 0, i = 0; w < whole; w++, i += 4) {
      M[w] =
        ((bytes[i] as number) << 24) |
        ((bytes[i + 1] as number) << 16) |
        ((bytes[i + 2] as number) << 8) |
        (bytes[i + 3] as number);
    }
  }
  // The last partial word, the 0x80 that ends the message, zeros, and the length in bits.
  let last = 0;
  for (let i = whole * 4; i < length; i++) {
    last |= (bytes ? (bytes[i] as number) : text.charCodeAt(i)) << (24 - 8 * (i & 3));
  }
  M[whole] = last | (0x80 << (24 - 8 * (length & 3)));
  M.fill(0, whole + 1, words);
  const bits = length * 8;
  M[words - 2] = Math.floor(bits / 2 ** 32);
  M[words - 1] = bits | 0;
  return blocks;
}

/** The digest as lowercase hex. */
export function sha256Hex(text: string): string {
  digest(text);
  let out = "";
  for (let i = 0; i < 8; i++) out += hex(H[i] as number);
  return out;
}

/**
 * The digest as a 16-character string (two bytes per character): a flat string that is quick to
 * hash and compare as a Map key (the hex form is a rope of 32 pieces that a lookup must flatten).
 */
export function sha256Key(text: string): string {
  digest(text);
  return String.fromCharCode(
    (H[0] as number) >>> 16,
    (H[0] as number) & 0xffff,
    (H[1] as number) >>> 16,
    (H[1] as number) & 0xffff,
    (H[2] as number) >>> 16,
    (H[2] as number) & 0xffff,
    (H[3] as number) >>> 16,
    (H[3] as number) & 0xffff,
    (H[4] as number) >>> 16,
    (H[4] as number) & 0xffff,
    (H[5] as number) >>> 16,
    (H[5] as number) & 0xffff,
    (H[6] as number) >>> 16,
    (H[6] as number) & 0xffff,
    (H[7] as number) >>> 16,
    (H[7] as number) & 0xffff,
  );
}

/** The digest's eight words, of the last call (as signed integers: read them with `>>> 0`). */
const H = new Int32Array(8);

function digest(text: string): void {
  const blocks = load(text);
  let h0 = 0x6a09e667;
  let h1 = 0xbb67ae85;
  let h2 = 0x3c6ef372;
  let h3 = 0xa54ff53a;
  let h4 = 0x510e527f;
  let h5 = 0x9b05688c;
  let h6 = 0x1f83d9ab;
  let h7 = 0x5be0cd19;
  for (let block = 0; block < blocks; block++) {
    const offset = block * 16;
    for (let t = 0; t < 16; t++) W[t] = M[offset + t] as number;
    for (let t = 16; t < 64; t++) {
      const w15 = W[t - 15] as number;
      const w2 = W[t - 2] as number;
      const s0 = ((w15 >>> 7) | (w15 << 25)) ^ ((w15 >>> 18) | (w15 << 14)) ^ (w15 >>> 3);
      const s1 = ((w2 >>> 17) | (w2 << 15)) ^ ((w2 >>> 19) | (w2 << 13)) ^ (w2 >>> 10);
      W[t] = ((W[t - 16] as number) + s0 + (W[t - 7] as number) + s1) | 0;
    }
    let a = h0;
    let b = h1;
    let c = h2;
    let d = h3;
    let e = h4;
    let f = h5;
    let g = h6;
    let h = h7;
    for (let t = 0; t < 64; t++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (h + S1 + ch + (K[t] as number) + (W[t] as number)) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (S0 + maj) | 0;
      h = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    h0 = (h0 + a) | 0;
    h1 = (h1 + b) | 0;
    h2 = (h2 + c) | 0;
    h3 = (h3 + d) | 0;
    h4 = (h4 + e) | 0;
    h5 = (h5 + f) | 0;
    h6 = (h6 + g) | 0;
    h7 = (h7 + h) | 0;
  }
  H[0] = h0;
  H[1] = h1;
  H[2] = h2;
  H[3] = h3;
  H[4] = h4;
  H[5] = h5;
  H[6] = h6;
  H[7] = h7;
}

function hex(word: number): string {
  return (
    (HEX[(word >>> 24) & 0xff] as string) +
    (HEX[(word >>> 16) & 0xff] as string) +
    (HEX[(word >>> 8) & 0xff] as string) +
    (HEX[word & 0xff] as string)
  );
}
