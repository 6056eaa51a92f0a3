import { readFileSync } from "node:fs";
import { extname } from "node:path";
import { fileURLToPath } from "node:url";
import { parseDocument } from "yaml";
import { formatPath } from "./issues.js";
import { checkCatalogData } from "./refs.js";
import type { Catalog } from "./schema.js";

/**
 * Reading and validating catalog files: what the server runs at boot and `tollgate catalog validate`
 * runs on demand. Every problem is reported, each with a readable path such as
 * `plans[1].entitlements.kolekts.limit` (list positions in brackets, fields after dots, `(root)` for the
 * top level, `(file)` / `(syntax)` when the file cannot be read or parsed).
 */

/** One problem in a catalog: where it is and what is wrong. */
export interface CatalogError {
  path: string;
  message: string;
}

/** The outcome of validating a catalog: the parsed catalog and a one-line summary, or every problem. */
export type CatalogResult =
  | { ok: true; catalog: Catalog; summary: string }
  | { ok: false; errors: CatalogError[] };

/** Catalog file formats. */
export type CatalogFormat = "yaml" | "json";

/** The bundled demo catalog (Kolekt); the same depth below the root from src/ and from dist/. */
export const DEFAULT_CATALOG_PATH = fileURLToPath(new URL("../../../catalogs/kolekt.yaml", import.meta.url));

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

/** Line and column (1-based) of a character offset. */
function lineColumn(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, offset).split("\n");
  return { line: before.length, column: (before.at(-1)?.length ?? 0) + 1 };
}

function readYaml(text: string): { data: unknown } | { error: CatalogError } {
  // Duplicate mapping keys are errors (uniqueKeys), not a silent "last one wins".
  const document = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  const first = document.errors[0];
  if (first) {
    const reason = (first.message.split("\n")[0] ?? "").replace(/ at line \d+, column \d+:?$/, "");
    const at = first.linePos?.[0];
    const where = at ? ` at line ${at.line}, column ${at.col}` : "";
    return { error: { path: "(syntax)", message: `YAML syntax error${where}: ${reason}` } };
  }
  return { data: document.toJS() };
}

function readJson(text: string): { data: unknown } | { error: CatalogError } {
  try {
    return { data: JSON.parse(text) };
  } catch (error) {
    const reason = (error as Error).message.replace(/\s+/g, " "); // its quoted excerpt may hold newlines
    const position = /at position (\d+)/.exec(reason);
    // Node 20 often gives no position; JSON is YAML, so the YAML parser can usually locate the problem.
    const where = position ? lineColumn(text, Number(position[1])) : yamlErrorPosition(text);
    const at = where ? ` at line ${where.line}, column ${where.column}` : "";
    return { error: { path: "(syntax)", message: `JSON syntax error${at}: ${reason}` } };
  }
}

function yamlErrorPosition(text: string): { line: number; column: number } | undefined {
  const at = parseDocument(text).errors[0]?.linePos?.[0];
  return at ? { line: at.line, column: at.col } : undefined;
}

/** Validates catalog data already in memory (an object read from YAML or JSON). */
export function checkCatalog(data: unknown): CatalogResult {
  const { catalog, issues } = checkCatalogData(data);
  if (!catalog || issues.length > 0) {
    return {
      ok: false,
      errors: issues.map((issue) => ({ path: formatPath(issue.path), message: issue.message })),
    };
  }
  const summary = [
    plural(catalog.meters.length, "meter"),
    plural(catalog.features.length, "feature"),
    plural(catalog.plans.length, "plan"),
  ].join(", ");
  return { ok: true, catalog, summary };
}

/** Parses and validates catalog text. Numbers in decimal fields become exact decimal strings. */
export function parseCatalog(text: string, format: CatalogFormat): CatalogResult {
  const read = format === "json" ? readJson(text) : readYaml(text);
  if ("error" in read) return { ok: false, errors: [read.error] };
  return checkCatalog(read.data);
}

/** Reads and validates a catalog file; the format follows the extension (.json, else YAML). */
export function validateCatalogFile(file: string): CatalogResult {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const reason =
      code === "ENOENT" ? "no such file" : code === "EISDIR" ? "is a directory" : (error as Error).message;
    return { ok: false, errors: [{ path: "(file)", message: `cannot read ${file}: ${reason}` }] };
  }
  // JSON is a subset of YAML, so YAML is the safe guess for unknown extensions.
  return parseCatalog(text, extname(file).toLowerCase() === ".json" ? "json" : "yaml");
}

/**
 * Loads a catalog for the server; throws an Error listing every problem (one per line) so a bad
 * catalog stops the boot with everything that needs fixing.
 */
export function loadCatalog(file: string = DEFAULT_CATALOG_PATH): Catalog {
  const result = validateCatalogFile(file);
  if (result.ok) return result.catalog;
  const lines = result.errors.map((error) => `  ${error.path}: ${error.message}`);
  throw new Error(`Catalog ${file} has ${plural(result.errors.length, "problem")}:\n${lines.join("\n")}`);
}
