import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { formatThread, length, TEMPLATES, THREADS_LIMIT, templateByKey } from "../src/format.js";

const template = (key: string) => {
  const found = templateByKey(key);
  if (!found) throw new Error(`no template ${key}`);
  return found;
};
const plain = template("plain");
const numbered = template("numbered");

const sentence = (i: number, words = 12) =>
  `${Array.from({ length: words }, (_, w) => (w === 0 ? `Word${i}` : `word${i}x${w}`)).join(" ")}.`;

describe("formatThread", () => {
  it("keeps a short text as one post", () => {
    expect(formatThread("Hello there. How are you?", numbered).posts).toEqual([
      "1/1 Hello there. How are you?",
    ]);
  });

  it("numbers the posts and cuts only between sentences", () => {
    const text = Array.from({ length: 40 }, (_, i) => sentence(i)).join(" ");
    const { posts } = formatThread(text, numbered);
    expect(posts.length).toBeGreaterThan(1);
    posts.forEach((post, i) => {
      expect(post.startsWith(`${i + 1}/${posts.length} `)).toBe(true);
      expect(length(post)).toBeLessThanOrEqual(THREADS_LIMIT);
      expect(post.endsWith(".")).toBe(true);
    });
    const bodies = posts.map((p) => p.replace(/^\d+\/\d+ /, ""));
    expect(bodies.join(" ")).toBe(text);
  });

  it("cuts a sentence longer than a post between words, and a word longer than a post inside it", () => {
    const long = `${"lorem ipsum ".repeat(80).trim()}. ${"x".repeat(1200)}`;
    const { posts } = formatThread(long, plain);
    for (const post of posts) expect(length(post)).toBeLessThanOrEqual(THREADS_LIMIT);
    expect(posts.join(" ").replaceAll(" ", "")).toBe(long.replaceAll(" ", ""));
  });

  it("counts an emoji with its modifiers as one character, and never splits one", () => {
    const family = "👨‍👩‍👧‍👦";
    const { posts } = formatThread(family.repeat(1200), plain);
    expect(posts.map(length)).toEqual([500, 500, 200]);
    expect(posts.join("")).toBe(family.repeat(1200));
  });

  it("widens the numbering when the thread reaches ten posts, and still fits", () => {
    // Sentences sized so that nine posts fit with "i/9 " but not with "i/10 ".
    const text = Array.from({ length: 120 }, (_, i) => sentence(i, 5)).join(" ");
    const { posts } = formatThread(text, numbered);
    expect(posts.length).toBeGreaterThanOrEqual(10);
    for (const post of posts) expect(length(post)).toBeLessThanOrEqual(THREADS_LIMIT);
    expect(posts.at(-1)).toMatch(new RegExp(`^${posts.length}/${posts.length} `));
  });

  it("keeps paragraph breaks inside a post and collapses other whitespace", () => {
    const { posts } = formatThread("First   line\nstill first.\n\n\nSecond paragraph.", plain);
    expect(posts).toEqual(["First line still first.\n\nSecond paragraph."]);
  });

  it("gives nothing for a blank text", () => {
    expect(formatThread(" \n\n ", numbered).posts).toEqual([]);
  });

  it("holds for any text and every template: each post fits, and no text is lost or reordered", () => {
    const word = fc.stringMatching(/^[a-zA-Z0-9éü]{1,30}$/);
    const text = fc
      .array(fc.tuple(fc.array(word, { minLength: 1, maxLength: 40 }), fc.constantFrom(".", "!", "?")), {
        minLength: 1,
        maxLength: 60,
      })
      .map((ss) => ss.map(([words, end]) => `${words.join(" ")}${end}`).join(" "));
    fc.assert(
      fc.property(text, fc.constantFrom(...TEMPLATES), (t, template) => {
        const { posts } = formatThread(t, template);
        for (const post of posts) expect(length(post)).toBeLessThanOrEqual(THREADS_LIMIT);
        // Every word of the text appears, in order, across the posts.
        const words = t.split(/\s+/);
        const published = posts.join(" ");
        let from = 0;
        for (const w of words) {
          const at = published.indexOf(w, from);
          expect(at).toBeGreaterThanOrEqual(0);
          from = at + w.length;
        }
      }),
      { numRuns: 200 },
    );
  });

  it("has five basic and five premium templates", () => {
    expect(TEMPLATES.filter((t) => !t.premium)).toHaveLength(5);
    expect(TEMPLATES.filter((t) => t.premium)).toHaveLength(5);
  });
});
