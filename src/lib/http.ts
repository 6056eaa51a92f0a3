import { OpenAPIHono, z } from "@hono/zod-openapi";
import type { Context } from "hono";
import { HTTPException } from "hono/http-exception";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { AppEnv } from "../deps.js";
import {
  AppError,
  codeForStatus,
  type ErrorCode,
  type FieldError,
  PROBLEM_CONTENT_TYPE,
  problem,
} from "./errors.js";
import type { Logger } from "./logger.js";

/**
 * HTTP conventions shared by every route: routers whose validation failures become problem+json
 * naming every bad field, the problem response itself, and the OpenAPI pieces routes reuse.
 */

type Issue = z.core.$ZodIssue;

/** Turns zod issues into one entry per bad field (an unknown key is its own entry). */
export function fieldErrors(issues: readonly Issue[], location?: string): FieldError[] {
  const errors: FieldError[] = [];
  for (const issue of issues) {
    const base = issue.path.map(String);
    if (issue.code === "unrecognized_keys") {
      for (const key of issue.keys) {
        errors.push({
          field: [...base, key].join("."),
          message: "is not a known field",
          code: "unknown_field",
          ...at(location),
        });
      }
      continue;
    }
    if (issue.code === "invalid_union" && issue.errors.length > 0) {
      // No alternative matched: the closest one (fewest issues) names the bad fields. Alternatives
      // of one value (a number or a string) all fail at the value itself, which is then the field.
      const closest = issue.errors.reduce((best, next) => (next.length < best.length ? next : best));
      if (!closest.every((inner) => inner.path.length === 0 && inner.code === "invalid_type")) {
        const nested = closest.map((inner) => ({ ...inner, path: [...issue.path, ...inner.path] }) as Issue);
        errors.push(...fieldErrors(nested, location));
        continue;
      }
    }
    // zod reports the input only when asked to; without it, its message says what was received.
    const missing =
      issue.code === "invalid_type" &&
      ("input" in issue ? issue.input === undefined : /received undefined$/.test(issue.message));
    errors.push({
      field: base.join(".") || (location ?? "body"),
      message: missing ? "is required" : issue.message,
      code: missing ? "required" : issue.code,
      ...at(location),
    });
  }
  return errors;
}

const at = (location: string | undefined) => (location ? { location } : {});

/** A router whose request validation answers 400 validation_failed with every bad field listed. */
export function createRouter(): OpenAPIHono<AppEnv> {
  return new OpenAPIHono<AppEnv>({
    defaultHook: (result, c) => {
      if (!result.success) {
        const location = result.target === "json" ? "body" : result.target;
        return send(c, validationParts(result.error.issues, location, c.get("requestId")));
      }
    },
  });
}

/**
 * The app's logger bound to this request's id, created on first use: building a child logger on
 * every request would cost throughput on routes that never log.
 */
export function requestLogger(c: Context<AppEnv>): Logger {
  let logger = c.get("logger");
  if (!logger) {
    logger = c.get("deps").logger.child({ request_id: c.get("requestId") });
    c.set("logger", logger);
  }
  return logger;
}

/** Sends a problem+json response. */
export function problemResponse(
  c: Context<AppEnv>,
  code: ErrorCode,
  detail: string,
  extra: { headers?: Record<string, string>; [k: string]: unknown } = {},
  status?: number,
): Response {
  return send(c, problemParts(code, detail, c.get("requestId"), extra, status));
}

/** A response without a Hono context: what the node:http fast paths send (see src/listener.ts). */
export interface PlainResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** The problem+json response for a code, as `problemResponse` sends it. */
export function problemParts(
  code: ErrorCode,
  detail: string,
  requestId: string | undefined,
  extra: { headers?: Record<string, string>; [k: string]: unknown } = {},
  status?: number,
): PlainResponse {
  const body = problem(code, detail, requestId, extra);
  if (status) body.status = status;
  return {
    status: body.status,
    headers: { "content-type": PROBLEM_CONTENT_TYPE, ...(extra.headers ?? {}) },
    body: JSON.stringify(body),
  };
}

/**
 * Every error as its response: expected errors become their problem document; anything unexpected is
 * logged with its stack and answered as a bare 500 — never a stack trace in a response.
 */
export function errorParts(error: Error, requestId: string | undefined, logger: () => Logger): PlainResponse {
  if (error instanceof AppError) {
    return problemParts(error.code, error.message, requestId, error.extra, error.status);
  }
  if (error instanceof HTTPException) {
    if (error.message.startsWith("Malformed JSON")) return invalidJsonParts(requestId);
    const code = codeForStatus(error.status);
    return problemParts(
      code,
      error.message || problem(code, "", undefined).title,
      requestId,
      {},
      error.status,
    );
  }
  logger().error({ err: error }, "unhandled error");
  return problemParts(
    "internal",
    "Something went wrong on our side. The request id identifies it in the logs.",
    requestId,
  );
}

/** A body that is not JSON. */
export function invalidJsonParts(requestId: string | undefined): PlainResponse {
  return problemParts("validation_failed", "The request body is not valid JSON.", requestId, {
    errors: [{ field: "body", message: "is not valid JSON", code: "invalid_json", location: "body" }],
  });
}

/** A request that failed its schema: every bad field listed. */
export function validationParts(
  issues: readonly Issue[],
  location: string,
  requestId: string | undefined,
): PlainResponse {
  const errors = fieldErrors(issues, location);
  const summary = errors.map((e) => `${e.field} ${e.message}`).join("; ");
  return problemParts("validation_failed", `Invalid request ${location}: ${summary}`, requestId, { errors });
}

function send(c: Context<AppEnv>, parts: PlainResponse): Response {
  return c.body(parts.body, parts.status as ContentfulStatusCode, parts.headers);
}

/** The app's error handler (see errorParts). */
export function handleError(error: Error, c: Context<AppEnv>): Response {
  return send(
    c,
    errorParts(error, c.get("requestId"), () => requestLogger(c)),
  );
}

/** OpenAPI description of a problem response, reused by every route. */
export const ProblemSchema = z
  .object({
    type: z.string(),
    title: z.string(),
    status: z.number().int(),
    detail: z.string(),
    code: z.string(),
    request_id: z.string().optional(),
    errors: z
      .array(
        z.object({
          field: z.string(),
          message: z.string(),
          code: z.string(),
          location: z.string().optional(),
        }),
      )
      .optional(),
  })
  .openapi("Problem");

const problemContent = { [PROBLEM_CONTENT_TYPE]: { schema: ProblemSchema } };

/** Standard error responses for a route's OpenAPI entry. */
export function errorResponses(...statuses: number[]) {
  const descriptions: Record<number, string> = {
    400: "Validation failed",
    401: "Missing or invalid credentials",
    402: "Payment required",
    403: "Not allowed for this caller",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    415: "Body is not JSON",
    429: "Rate limited or quota exceeded",
    503: "A dependency is unavailable",
  };
  return Object.fromEntries(
    statuses.map((status) => [
      status,
      { description: descriptions[status] ?? "Error", content: problemContent },
    ]),
  );
}

/**
 * A string that Postgres can store: text and jsonb refuse the NUL character, which would otherwise
 * turn a bad request into a database error.
 */
export function storableString(max: number) {
  return z
    .string()
    .min(1)
    .max(max)
    .refine((value) => !value.includes("\u0000"), "must not contain NUL characters");
}

/** A required JSON request body for a route definition. */
export function jsonBody<T extends z.ZodType>(schema: T, description?: string) {
  return {
    required: true,
    ...(description ? { description } : {}),
    content: { "application/json": { schema } },
  } as const;
}

/** A JSON response for a route definition. */
export function jsonResponse<T extends z.ZodType>(schema: T, description: string) {
  return { description, content: { "application/json": { schema } } } as const;
}
