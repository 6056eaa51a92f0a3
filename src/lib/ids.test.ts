import { describe, expect, it } from "vitest";
import { isId, newId } from "./ids.js";

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
});
