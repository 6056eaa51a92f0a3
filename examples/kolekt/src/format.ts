/**
 * Kolekt's own feature: a long text becomes a thread of numbered posts, each at most 500
 * characters, cut at sentence boundaries (at word boundaries only when a single sentence is too
 * long, and inside a word only when a single word is). Characters are counted as people see them
 * (grapheme clusters: an emoji with its modifiers is one), which is how Threads counts.
 */

export const THREADS_LIMIT = 500;

export interface Template {
  key: string;
  name: string;
  /** Premium templates need the plan's `premium_templates` feature. */
  premium: boolean;
  /** The post as published: the body dressed with the template's numbering and decoration. */
  render(body: string, index: number, total: number): string;
}

const numbered = (index: number, total: number) => `${index}/${total}`;

/** Five basic templates (every plan) and five premium ones. */
export const TEMPLATES: readonly Template[] = [
  { key: "plain", name: "Plain", premium: false, render: (b) => b },
  {
    key: "numbered",
    name: "Numbered",
    premium: false,
    render: (b, i, n) => `${numbered(i, n)} ${b}`,
  },
  {
    key: "numbered-end",
    name: "Numbered at the end",
    premium: false,
    render: (b, i, n) => `${b} (${numbered(i, n)})`,
  },
  { key: "thread", name: "Thread", premium: false, render: (b, i, n) => `🧵 ${numbered(i, n)}\n\n${b}` },
  {
    key: "continued",
    name: "Continued",
    premium: false,
    render: (b, i, n) => (i < n ? `${b} …` : b),
  },
  {
    key: "hook",
    name: "Hook",
    premium: true,
    render: (b, i, n) => (i === 1 ? `${b}\n\nA thread 👇` : `${numbered(i, n)} ${b}`),
  },
  {
    key: "bold-count",
    name: "Bold count",
    premium: true,
    render: (b, i, n) => `【${i}/${n}】 ${b}`,
  },
  {
    key: "arrows",
    name: "Arrows",
    premium: true,
    render: (b, i, n) => (i < n ? `${b} ↓ ${numbered(i, n)}` : `${b} ■ ${numbered(i, n)}`),
  },
  {
    key: "recap",
    name: "Recap",
    premium: true,
    render: (b, i, n) => (i === n ? `${numbered(i, n)} ${b}\n\n— end of thread —` : `${numbered(i, n)} ${b}`),
  },
  {
    key: "quote",
    name: "Quote",
    premium: true,
    render: (b, i, n) => `“${b}” — ${numbered(i, n)}`,
  },
];

export const templateByKey = (key: string) => TEMPLATES.find((t) => t.key === key);

const graphemes = new Intl.Segmenter(undefined, { granularity: "grapheme" });
const sentences = new Intl.Segmenter("en", { granularity: "sentence" });

/** Characters as a reader counts them. */
export function length(text: string): number {
  let n = 0;
  for (const _ of graphemes.segment(text)) n++;
  return n;
}

/** The text cut after `max` characters (never inside a grapheme cluster). */
function take(text: string, max: number): [string, string] {
  let n = 0;
  for (const { index } of graphemes.segment(text)) {
    if (n === max) return [text.slice(0, index), text.slice(index)];
    n++;
  }
  return [text, ""];
}

/**
 * The pieces a post can be made of: sentences, or for a sentence longer than `max`, its words, or
 * for a word longer than `max`, slices of it. Each piece keeps its trailing space.
 */
function pieces(text: string, max: number): string[] {
  const out: string[] = [];
  for (const { segment } of sentences.segment(text)) {
    if (length(segment.trimEnd()) <= max) {
      out.push(segment);
      continue;
    }
    for (const word of segment.split(/(?<=\s)/)) {
      let rest = word;
      while (length(rest.trimEnd()) > max) {
        const [head, tail] = take(rest, max);
        out.push(head);
        rest = tail;
      }
      if (rest) out.push(rest);
    }
  }
  return out;
}

/** Packs the pieces into bodies of at most `max` characters each (greedy: as full as possible). */
function pack(parts: string[], max: number): string[] {
  const bodies: string[] = [];
  let current = "";
  for (const part of parts) {
    const joined = current + part;
    if (current && length(joined.trimEnd()) > max) {
      bodies.push(current.trimEnd());
      current = part.trimStart();
    } else current = joined;
  }
  if (current.trim()) bodies.push(current.trimEnd());
  return bodies;
}

/**
 * The most characters the template adds to any post of a thread as many digits long as `total`
 * (the count the packing ends with may be any such number): templates may differ for the first,
 * second, next-to-last and last post, and the numbers are widest for the biggest count.
 */
function overhead(template: Template, total: number): number {
  const digits = String(total).length;
  const counts = new Set([total, Math.max(2, 10 ** (digits - 1)), 10 ** digits - 1]);
  let most = 0;
  for (const count of counts) {
    for (const index of new Set([1, 2, count - 1, count])) {
      if (index >= 1 && index <= count) most = Math.max(most, length(template.render("", index, count)));
    }
  }
  return most;
}

export interface Thread {
  template: string;
  posts: string[];
}

/**
 * Splits `text` into a thread. Whitespace runs collapse to one space and paragraph breaks are kept
 * as sentence boundaries. The numbering's width depends on how many posts there are, so the text is
 * packed again until the count settles (it can only grow, so this ends).
 */
export function formatThread(text: string, template: Template, limit = THREADS_LIMIT): Thread {
  const clean = text
    .replace(/\r\n?/g, "\n")
    .split(/\n\s*\n/)
    .map((paragraph) => paragraph.replace(/\s+/g, " ").trim())
    .filter(Boolean)
    .join("\n\n");
  if (!clean) return { template: template.key, posts: [] };
  let total = 1;
  for (;;) {
    const room = limit - overhead(template, total);
    if (room < 20) throw new RangeError("The template leaves too little room for text.");
    const bodies = pack(
      clean.split("\n\n").flatMap((paragraph, i) => {
        const parts = pieces(paragraph, room);
        // A paragraph break is a place to cut; inside a post it stays a line break.
        if (i > 0 && parts[0] !== undefined) parts[0] = `\n\n${parts[0]}`;
        return parts;
      }),
      room,
    ).map((body) => body.replace(/^\n+/, ""));
    // The room was worked out for numbers as wide as `total`'s: right when the count is as wide.
    if (String(bodies.length).length === String(total).length) {
      return {
        template: template.key,
        posts: bodies.map((b, i) => template.render(b, i + 1, bodies.length)),
      };
    }
    total = bodies.length;
  }
}
