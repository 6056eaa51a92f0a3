import type { IncomingMessage, ServerResponse } from "node:http";
import { getRequestListener } from "@hono/node-server";
import { CALLER_REQUEST_ID, DEFAULT_BODY_LIMIT } from "./app.js";
import type { Deps } from "./deps.js";
import { errorParts, invalidJsonParts, type PlainResponse, validationParts } from "./lib/http.js";
import { newId } from "./lib/ids.js";
import {
  type CheckBody,
  CheckRequest,
  checkInputOf,
  checkResponseOf,
  quickSingleCheck,
  runRouteCheck,
} from "./modules/metering/check-http.js";
import { bearerToken, isOperatorKey } from "./modules/operator/auth.js";

/**
 * The server's request listener: Hono serves every route, except that the call every request of a
 * customer's product makes — `POST /v1/check` by the operator — is answered straight from node:http.
 *
 * Through Hono, a check pays for a web-standard Request and Response, a middleware chain, routing and
 * a zod parse: more than the check itself (docs/benchmarks.md). The fast path does only what the
 * route does — same body rules, same validation errors (the same schema, whenever the body is not the
 * plain one-feature form), same engine, same response builder (check-http.ts), same metrics and logs —
 * and a test runs every kind of request through both and compares the answers byte for byte.
 *
 * It takes a request only when its headers alone show it is the operator's JSON check with a
 * Content-Length within the limit; anything else (other credentials, a chunked or oversized body,
 * another media type) goes to Hono untouched, body unread, and gets the route's own answer.
 */
export interface TollgateListener {
  (req: IncomingMessage, res: ServerResponse): void;
  /** Requests answered by the fast path (for tests). */
  readonly fastPathServed: number;
}

export function createRequestListener(
  deps: Deps,
  app: { fetch: (request: Request) => Response | Promise<Response> },
): TollgateListener {
  const hono = getRequestListener(app.fetch);
  let served = 0;
  const listener = (req: IncomingMessage, res: ServerResponse) => {
    if (req.method === "POST" && req.url === "/v1/check" && takesFastPath(deps, req)) {
      served++;
      serveCheck(deps, req, res);
      return;
    }
    void hono(req, res);
  };
  Object.defineProperty(listener, "fastPathServed", { get: () => served });
  return listener as TollgateListener;
}

/**
 * A Content-Type the route takes as JSON: the whole header, parameters included, as the OpenAPI
 * router checks it before validating a JSON body (@hono/zod-openapi's `jsonRequestRegex`). Narrower
 * than the body rules' JSON_TYPE (src/app.ts), so they never refuse what this admits.
 */
const ROUTE_JSON_TYPE = /^application\/([a-z-.]+\+)?json(;\s*[a-zA-Z0-9-]+=([^;]+))*$/i;

function takesFastPath(deps: Deps, req: IncomingMessage): boolean {
  const { headers } = req;
  const length = headers["content-length"];
  if (length === undefined || headers["transfer-encoding"] !== undefined) return false;
  const bytes = Number(length);
  if (!Number.isInteger(bytes) || bytes <= 0 || bytes > DEFAULT_BODY_LIMIT) return false;
  const contentType = headers["content-type"];
  const authorization = headers.authorization;
  if (contentType === undefined || authorization === undefined) return false;
  if (!ROUTE_JSON_TYPE.test(contentType) || repeatsTypeOrCredentials(req.rawHeaders)) return false;
  return isOperatorKey(bearerToken(authorization), deps.secrets.adminKeyHash);
}

/**
 * Whether Content-Type or Authorization comes more than once. Node keeps the first of repeated
 * headers, the Hono adapter joins them: such a request is left to Hono, which answers it as the route
 * does. Scanned from the raw headers: `req.headersDistinct` would build an object of every header.
 */
function repeatsTypeOrCredentials(raw: string[]): boolean {
  let types = 0;
  let credentials = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (name.length === 12 && name.toLowerCase() === "content-type") types++;
    else if (name.length === 13 && name.toLowerCase() === "authorization") credentials++;
  }
  return types > 1 || credentials > 1;
}

const utf8 = new TextDecoder();

function serveCheck(deps: Deps, req: IncomingMessage, res: ServerResponse): void {
  const started = performance.now();
  const incoming = req.headers["x-request-id"];
  const requestId =
    typeof incoming === "string" && CALLER_REQUEST_ID.test(incoming) ? incoming : newId("request");
  const chunks: Buffer[] = [];
  req.on("data", (chunk: Buffer) => chunks.push(chunk));
  req.on("error", () => {}); // a client that went away: nothing to answer
  req.on("end", () => {
    // As the Hono adapter decodes (TextDecoder drops a byte-order mark; Buffer#toString keeps it).
    const text = utf8.decode(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks));
    void reply(deps, res, text, requestId, started);
  });
}

/** Answers and sends, in one async function: a promise per request rather than a chain of them. */
async function reply(
  deps: Deps,
  res: ServerResponse,
  text: string,
  requestId: string,
  started: number,
): Promise<void> {
  const logger = () => deps.logger.child({ request_id: requestId });
  try {
    let parts: Reply;
    try {
      parts = await answer(deps, text, requestId);
    } catch (error) {
      parts = errorParts(error as Error, requestId, logger);
    }
    send(deps, res, parts, requestId, started);
  } catch (error) {
    // Sending itself failed (a header Node refuses, say): nothing sensible is left to answer.
    logger().error({ err: error }, "could not send the response");
    if (!res.headersSent) res.destroy();
  }
}

/** A response to send: a problem (its headers complete), or a check's answer (`json`: Content-Type first). */
type Reply = PlainResponse & { json?: true };

/** The response to a body; throws (or rejects) what the route's error handler would answer. */
function answer(deps: Deps, text: string, requestId: string): Reply | Promise<Reply> {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return invalidJsonParts(requestId);
  }
  let valid: CheckBody | undefined = quickSingleCheck(body);
  if (!valid) {
    const parsed = CheckRequest.safeParse(body);
    if (!parsed.success) return validationParts(parsed.error.issues, "body", requestId);
    valid = parsed.data;
  }
  const { input, single } = checkInputOf(valid);
  return runRouteCheck(deps, input).then((result) => {
    const { json, headers } = checkResponseOf(result, single);
    return { status: 200, headers, body: JSON.stringify(json), json: true as const };
  });
}

function send(deps: Deps, res: ServerResponse, parts: Reply, requestId: string, started: number): void {
  // A flat [name, value, …] list: no object spreads per response, and Node takes it as it is.
  const headers: (string | number)[] = parts.json ? ["content-type", "application/json"] : [];
  for (const name in parts.headers) headers.push(name, parts.headers[name] as string);
  headers.push("content-length", Buffer.byteLength(parts.body), "x-request-id", requestId);
  // While draining, every response closes its connection (as the Hono middleware does).
  if (deps.draining) headers.push("connection", "close");
  res.writeHead(parts.status, headers);
  res.end(parts.body);
  const seconds = (performance.now() - started) / 1000;
  deps.metrics.recordRequest("POST", "/v1/check", parts.status, seconds);
  if (parts.status >= 500 || deps.logger.isLevelEnabled("debug")) {
    deps.logger
      .child({ request_id: requestId })
      [parts.status >= 500 ? "error" : "debug"](
        { method: "POST", route: "/v1/check", status: parts.status, ms: Math.round(seconds * 10_000) / 10 },
        "request",
      );
  }
}
