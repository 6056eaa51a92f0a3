import type { components } from "./schema.js";

/** An error answer as Tollgate sends every one: `application/problem+json` (RFC 9457). */
export type Problem = components["schemas"]["Problem"];

/**
 * Tollgate refused the request (a 4xx other than 408 and 429): bad input, an unknown org or
 * feature, a wrong operator key, an idempotency conflict. Retrying the same request will not help,
 * so these are thrown whatever the call's `failMode`.
 *
 * Carries the problem+json fields: `code` is stable (`validation_failed`, `not_found`,
 * `unauthenticated`, `forbidden`, `conflict`, …) and `errors` names each bad field.
 */
export class TollgateError extends Error {
  override readonly name = "TollgateError";
  /** The HTTP status. */
  readonly status: number;
  /** The stable error code (`validation_failed`, `not_found`, `conflict`, …). */
  readonly code: string;
  /** The problem type URI. */
  readonly type: string;
  /** A short, human-readable summary of the problem type. */
  readonly title: string;
  /** What went wrong with this request. */
  readonly detail: string;
  /** Tollgate's id for the request (quote it when asking for help). */
  readonly requestId: string | undefined;
  /** One entry per bad field, for `validation_failed`. */
  readonly errors: NonNullable<Problem["errors"]>;
  /** The whole problem document as received. */
  readonly problem: Problem;

  constructor(problem: Problem) {
    super(`${problem.status} ${problem.code}: ${problem.detail || problem.title}`);
    this.problem = problem;
    this.status = problem.status;
    this.code = problem.code;
    this.type = problem.type;
    this.title = problem.title;
    this.detail = problem.detail;
    this.requestId = problem.request_id;
    this.errors = problem.errors ?? [];
  }
}

/** Why Tollgate could not answer: no answer in time, no connection, or a 408, 429 or 5xx answer. */
export type UnavailableKind = "timeout" | "network" | "status";

/**
 * Tollgate could not be reached in time or answered that it cannot serve now (408, 429, 5xx).
 * `check()` and `verifyKey()` never throw it: they resolve by the call's `failMode` and put it in
 * the answer's `error`. `track()` retries on it. Only the raw `api` client lets it surface.
 */
export class TollgateUnavailableError extends Error {
  override readonly name = "TollgateUnavailableError";
  /** `timeout` (no answer within the timeout), `network` (no connection), `status` (408, 429, 5xx). */
  readonly kind: UnavailableKind;
  /** The HTTP status, for `kind: "status"`. */
  readonly status: number | undefined;
  /** The problem document, when the server sent one. */
  readonly problem: Problem | undefined;
  /** What the server asked for with `Retry-After`, in milliseconds. */
  readonly retryAfterMs: number | undefined;

  constructor(
    kind: UnavailableKind,
    message: string,
    options: { status?: number; problem?: Problem; retryAfterMs?: number; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.kind = kind;
    this.status = options.status;
    this.problem = options.problem;
    this.retryAfterMs = options.retryAfterMs;
  }
}

/** A webhook whose signature, timestamp or body did not verify. Answer it with a 400. */
export class TollgateWebhookError extends Error {
  override readonly name = "TollgateWebhookError";
}
