/**
 * A deliberately small sentiment scorer (a word list, negation-aware): the example is about how
 * the API is metered, not about the model.
 */

const POSITIVE = new Set(
  "good great love excellent amazing awesome happy nice best fantastic helpful like enjoy win wonderful fast easy recommend perfect cool brilliant".split(
    " ",
  ),
);
const NEGATIVE = new Set(
  "bad terrible hate awful worst poor sad slow broken bug buggy annoying useless angry fail fails failed horrible disappointing expensive hard scam".split(
    " ",
  ),
);
const NEGATIONS = new Set(["not", "no", "never", "isn't", "don't", "doesn't", "wasn't", "can't", "won't"]);

export interface Sentiment {
  /** From -1 (all negative) to 1 (all positive); 0 when no scored word is found. */
  score: number;
  label: "positive" | "negative" | "neutral";
}

export function sentiment(text: string): Sentiment {
  const words = text.toLowerCase().match(/[a-z']+/g) ?? [];
  let positive = 0;
  let negative = 0;
  words.forEach((word, i) => {
    const negated = i > 0 && NEGATIONS.has(words[i - 1] ?? "");
    if (POSITIVE.has(word)) negated ? negative++ : positive++;
    else if (NEGATIVE.has(word)) negated ? positive++ : negative++;
  });
  const scored = positive + negative;
  const score = scored === 0 ? 0 : Math.round(((positive - negative) / scored) * 100) / 100;
  return { score, label: score > 0.2 ? "positive" : score < -0.2 ? "negative" : "neutral" };
}
