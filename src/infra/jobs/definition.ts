import { z } from "zod";
import type { JobSpec } from "./types.js";

/** What both queue twins share about job definitions: defaults, payload validation, error text. */

export type { AnyDefinition } from "./types.js";

export const DEFAULT_ATTEMPTS = 5;
export const DEFAULT_BACKOFF_MS = 1000;

/**
 * Validates a payload as it will be stored and handed back: JSON. Validating the JSON form makes a
 * payload that JSON would change (a Date, undefined fields…) fail here, not before every run.
 */
export function validatePayload<P>(definition: JobSpec<P>, payload: P): unknown {
  const json = JSON.stringify(payload);
  if (json === undefined) throw new Error(`Invalid payload for job "${definition.name}": not JSON`);
  const stored: unknown = JSON.parse(json);
  const parsed = definition.schema.safeParse(stored);
  if (!parsed.success) {
    throw new Error(
      `Invalid payload for job "${definition.name}" (payloads are stored as JSON):\n${z.prettifyError(parsed.error)}`,
    );
  }
  return stored;
}

export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
