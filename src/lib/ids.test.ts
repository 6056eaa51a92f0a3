import { afterEach, describe, expect, it, vi } from "vitest";
import { isId, newId, secretId } from "./ids.js";

describe("ids", () => {
  it("are prefixed by kind", () => {
    expect(newId("org")).toMatch(/^org_[0-9a-z]{26}$/);
    expect(newId("user")).toMatch(/^usr_/);
    expect(newId("invoice")).toMatch(/^inv_/);
  });

  it("sort in creation order, even within one millisecond", () => {
    const ids = Array.from({ length: 1000 }, () => newId("event"));
    expect([...ids].sort()).toEqual(ids);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it("are recognised by kind, and a foreign prefix is not", () => {
    const id = newId("key");
    expect(isId("key", id)).toBe(true);
    expect(isId("org", id)).toBe(false);
    expect(isId("key", `${id}x`)).toBe(false);
    expect(isId("key", "key_../../etc/passwd")).toBe(false);
  });

  afterEach(() => vi.restoreAllMocks());

  const decodeTime = (id: string) =>
    [...(id.split("_")[1] ?? "").slice(0, 10)].reduce(
      (t, ch) => t * 32 + "0123456789abcdefghjkmnpqrstvwxyz".indexOf(ch),
      0,
    );

  it("carry their creation millisecond in the first ten characters", () => {
    vi.spyOn(Date, "now").mockReturnValue(Date.UTC(2032, 10, 23, 18, 0, 0, 123));
    expect(decodeTime(newId("org"))).toBe(Date.UTC(2032, 10, 23, 18, 0, 0, 123));
  });

  it("stay in order when the system clock steps back", () => {
    const now = vi.spyOn(Date, "now").mockReturnValue(Date.UTC(2030, 0, 1));
    const before = newId("event");
    now.mockReturnValue(Date.UTC(2029, 0, 1));
    const after = newId("event");
    expect(after > before).toBe(true);
  });

  it("draw fresh randomness each millisecond", () => {
    const now = vi.spyOn(Date, "now");
    const randoms = new Set<string>();
    for (let i = 0; i < 500; i++) {
      now.mockReturnValue(Date.UTC(2031, 0, 1) + i);
      randoms.add(newId("key").slice(14));
    }
    expect(randoms.size).toBe(500);
  });
});

describe("secretId", () => {
  it("is the prefix and 32 random base32 characters, with nothing in common between consecutive ids", () => {
    const ids = Array.from({ length: 1000 }, () => secretId("portal"));
    for (const id of ids) expect(id).toMatch(/^bps_[0-9abcdefghjkmnpqrstvwxyz]{32}$/);
    expect(new Set(ids).size).toBe(ids.length);
    // No shared time prefix (as a ULID's) and no counter: consecutive ids differ early.
    const samePrefix = ids.slice(1).filter((id, i) => id.slice(0, 10) === ids[i]?.slice(0, 10));
    expect(samePrefix.length).toBeLessThan(3);
  });
});
