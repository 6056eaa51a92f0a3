/**
 * The closed catalogue of error codes Tollgate answers with, and the one place they map to HTTP
 * statuses. Responses are RFC 9457 problem details: `{type, title, status, detail, code, request_id,
 * errors?}` served as `application/problem+json`.
 */
export const errorCatalog = {
  validation_failed: { status: 400, title: "Validation failed" },
  invalid_signature: { status: 400, title: "Invalid signature" },
  unauthenticated: { status: 401, title: "Authentication required" },
  payment_required: { status: 402, title: "Payment required" },
  forbidden: { status: 403, title: "Forbidden" },
  not_found: { status: 404, title: "Not found" },
  conflict: { status: 409, title: "Conflict" },
  payload_too_large: { status: 413, title: "Payload too large" },
  unsupported_media_type: { status: 415, title: "Unsupported media type" },
  quota_exceeded: { status: 429, title: "Quota exceeded" },
  rate_limited: { status: 429, title: "Rate limited" },
  internal: { status: 500, title: "Internal error" },
  unavailable: { status: 503, title: "Service unavailable" },
} as const satisfies Record<string, { status: number; title: string }>;

export type ErrorCode = keyof typeof errorCatalog;

export interface FieldError {
  /** Dotted path of the offending field (`events.3.org_id`), or `body` for the body as a whole. */
  field: string;
  message: string;
  code: string;
  /** Where the field is: body, query, param or header. */
  location?: string;
}

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: ErrorCode;
  request_id?: string;
  errors?: FieldError[];
  [extension: string]: unknown;
}

/** An expected failure, thrown inside a request and turned into problem+json at the edge. */
export class AppError extends Error {
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    detail?: string,
    readonly extra: { errors?: FieldError[]; headers?: Record<string, string>; [k: string]: unknown } = {},
  ) {
    super(detail ?? errorCatalog[code].title);
    this.name = "AppError";
    this.status = errorCatalog[code].status;
  }
}

export const PROBLEM_CONTENT_TYPE = "application/problem+json";

/** Builds the problem document for a code. `status` may override (e.g. quota_exceeded as 402). */
export function problem(
  code: ErrorCode,
  detail: string,
  requestId: string | undefined,
  extra: Record<string, unknown> = {},
): Problem {
  const { headers: _headers, ...fields } = extra;
  const entry = errorCatalog[code];
  return {
    type: `https://tollgate.dev/problems/${code.replaceAll("_", "-")}`,
    title: entry.title,
    status: entry.status,
    detail,
    code,
    ...(requestId ? { request_id: requestId } : {}),
    ...fields,
  };
}

/** Maps an HTTP status Tollgate did not choose itself (from a library) to the closest code. */
export function codeForStatus(status: number): ErrorCode {
  switch (status) {
    case 400:
      return "validation_failed";
    case 401:
      return "unauthenticated";
    case 402:
      return "payment_required";
    case 403:
      return "forbidden";
    case 404:
      return "not_found";
    case 409:
      return "conflict";
    case 413:
      return "payload_too_large";
    case 415:
      return "unsupported_media_type";
    case 429:
      return "rate_limited";
    case 503:
      return "unavailable";
    default:
      return status >= 500 ? "internal" : "validation_failed";
  }
}

/** Postgres's unique_violation, wherever the driver or Drizzle put it in the cause chain. */
export function isUniqueViolation(error: unknown): boolean {
  for (let e = error; typeof e === "object" && e !== null; e = (e as { cause?: unknown }).cause) {
    if ((e as { code?: string }).code === "23505") return true;
  }
  return false;
}
