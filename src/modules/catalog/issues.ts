import type { z } from "zod";
import { chargeSchema, percentTier, priceTier } from "./charges.js";
import { catalogShellSchema, featureSchema, meterSchema, planSchema } from "./schema.js";

/**
 * Turning zod issues into the messages a catalog author reads: one per problem, with a readable path
 * (`plans[1].entitlements.kolekts.limit`) and a plain-language reason.
 */

/** A problem found in a catalog, with the path of the offending value. */
export interface CatalogIssue {
  path: PropertyKey[];
  message: string;
}

/** Renders a path as `plans[1].entitlements.kolekts.limit`; the top level is `(root)`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const segment of path) {
    if (typeof segment === "number") out += `[${segment}]`;
    else if (typeof segment === "string" && /^[A-Za-z_][A-Za-z0-9_]*$/.test(segment))
      out += out ? `.${segment}` : segment;
    else out += `[${JSON.stringify(String(segment))}]`;
  }
  return out || "(root)";
}

/** Every field name the format knows, for "did you mean" hints on misspelt fields. */
const KNOWN_FIELDS = [
  ...Object.keys(catalogShellSchema.shape),
  ...Object.keys(meterSchema.shape),
  ...featureSchema.options.flatMap((option) => Object.keys(option.shape)),
  ...Object.keys(planSchema.shape),
  ...chargeSchema.options.flatMap((option) => Object.keys(option.shape)),
  ...Object.keys(priceTier.shape),
  ...Object.keys(percentTier.shape),
  "month",
  "year",
  "limit",
  "overage",
  "window",
];

/** Edit distance counting a swap of neighbours as one edit ("pirce" is one edit from "price"). */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  const at = (i: number, j: number) => d[i]?.[j] ?? Number.POSITIVE_INFINITY;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        best = Math.min(best, at(i - 2, j - 2) + 1);
      (d[i] as number[])[j] = best;
    }
  }
  return at(a.length, b.length);
}

/** Why a field is unknown: a field of some other element, or a likely typo of a known one. */
function unknownField(field: string): string {
  const fields = new Set(KNOWN_FIELDS);
  if (fields.has(field)) return "is not a field of this element";
  let best: string | undefined;
  let bestDistance = Math.max(1, Math.floor(field.length / 3));
  for (const known of fields) {
    const distance = editDistance(field, known);
    if (distance <= bestDistance && distance < field.length) {
      best = known;
      bestDistance = distance;
    }
  }
  return best ? `unknown field (did you mean "${best}"?)` : "unknown field";
}

/** A short description of a value for messages: `"abc"`, `12`, `a list`. */
export function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "a mapping";
  if (typeof value === "string") return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  return String(value);
}

const EXPECTED: Record<string, string> = {
  string: "text",
  number: "a number",
  int: "a whole number",
  boolean: "true or false",
  object: "a mapping",
  array: "a list",
};

/** Converts zod issues (parsed with `reportInput: true`) under `prefix` into catalog issues. */
export function fromZod(issues: readonly z.core.$ZodIssue[], prefix: PropertyKey[] = []): CatalogIssue[] {
  const out: CatalogIssue[] = [];
  for (const issue of issues) {
    const path = [...prefix, ...issue.path];
    switch (issue.code) {
      case "unrecognized_keys":
        for (const key of issue.keys) out.push({ path: [...path, key], message: unknownField(key) });
        break;
      case "invalid_type":
        if (issue.input === undefined) out.push({ path, message: "is required" });
        else if (issue.message.startsWith("Invalid input")) {
          const expected = EXPECTED[issue.expected] ?? issue.expected;
          out.push({ path, message: `must be ${expected} (got ${describe(issue.input)})` });
        } else out.push({ path, message: issue.message });
        break;
      case "invalid_value":
        out.push({
          path,
          message: issue.message.startsWith("Invalid")
            ? `must be one of ${issue.values.map(String).join(", ")} (got ${describe(issue.input)})`
            : issue.message,
        });
        break;
      default:
        out.push({ path, message: issue.message });
    }
  }
  return out;
}
