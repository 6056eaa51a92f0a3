import { type Problem, TollgateError, TollgateUnavailableError } from "./errors.js";
import { type NodeExchange, nodeExchange } from "./node-http.js";

/**
 * The SDK's own requests (check, events, verify, entitlements): JSON, the operator's bearer token
 * and a timeout that covers the whole exchange, body included. Sent with `node:http` and a
 * keep-alive agent on Node (found at run time, see node-http.ts), with `fetch` everywhere else or
 * when a `fetch` is given.
 */

/** The `fetch` the SDK calls: the global one unless one is given. */
export type FetchLike = (input: Request | string | URL, init?: RequestInit) => Promise<Response>;

/** A request body that is JSON text already (sent as it is, not serialized again). */
export class JsonText {
  constructor(readonly text: string) {}
}

export interface Answer<T> {
  status: number;
  headers: Headers;
  body: T;
}

/** Node's timers keep the process alive unless unref'd; other runtimes have nothing to unref. */
export function unref(timer: unknown): void {
  (timer as { unref?: () => void } | undefined)?.unref?.();
}

export class Transport {
  private readonly headers: Record<string, string>;
  private readonly doFetch: FetchLike;
  private readonly exchange: NodeExchange | undefined;

  constructor(
    readonly baseUrl: string,
    apiKey: string,
    fetchImpl: FetchLike | undefined,
  ) {
    this.headers = { authorization: `Bearer ${apiKey}`, accept: "application/json" };
    // Called as a plain function: some runtimes refuse fetch called as another object's method.
    this.doFetch = fetchImpl ?? ((input, init) => fetch(input, init));
    this.exchange = fetchImpl ? undefined : nodeExchange(baseUrl);
    // fetch says who it is; node:http says nothing, which some firewalls refuse.
    if (this.exchange) this.headers["user-agent"] = "tollgate-sdk (node)";
  }

  /**
   * One request. Resolves with a 2xx answer; throws TollgateError for a 4xx (but 408 and 429),
   * TollgateUnavailableError for everything that means "not now" (timeout, network, 408, 429, 5xx),
   * and the caller's own abort reason when `signal` aborts.
   */
  async send<T>(
    method: "GET" | "POST",
    path: string,
    body: unknown,
    timeoutMs: number,
    signal?: AbortSignal,
  ): Promise<Answer<T>> {
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(
      () => {
        timedOut = true;
        controller.abort();
      },
      Math.max(1, timeoutMs),
    );
    unref(timer);
    const onAbort = () => controller.abort(signal?.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    if (signal?.aborted) onAbort();
    let status: number;
    let headers: Headers;
    let text: string;
    try {
      const payload =
        body === undefined ? undefined : body instanceof JsonText ? body.text : JSON.stringify(body);
      const requestHeaders =
        payload === undefined ? this.headers : { ...this.headers, "content-type": "application/json" };
      if (this.exchange) {
        ({ status, headers, text } = await this.exchange(
          this.baseUrl + path,
          method,
          requestHeaders,
          payload,
          controller.signal,
          // Sent again on a fresh connection if the kept-alive one was closed under it: only what
          // cannot count twice (a read, or events, whose ids Tollgate counts once).
          method === "GET" || path === "/v1/events",
        ));
      } else {
        const init: RequestInit = { method, headers: requestHeaders, signal: controller.signal };
        if (payload !== undefined) init.body = payload;
        const response = await this.doFetch(this.baseUrl + path, init);
        status = response.status;
        headers = response.headers;
        text = await response.text();
      }
    } catch (error) {
      if (timedOut) {
        throw new TollgateUnavailableError(
          "timeout",
          `Tollgate did not answer ${method} ${path} within ${timeoutMs} ms`,
          {
            cause: error,
          },
        );
      }
      if (signal?.aborted) throw signal.reason ?? error;
      throw new TollgateUnavailableError(
        "network",
        `Tollgate could not be reached (${method} ${path}): ${messageOf(error)}`,
        {
          cause: error,
        },
      );
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
    return answerOf<T>(method, path, status, headers, text);
  }
}

function answerOf<T>(
  method: string,
  path: string,
  status: number,
  headers: Headers,
  text: string,
): Answer<T> {
  let parsed: unknown;
  try {
    parsed = text === "" ? undefined : JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  if (status >= 200 && status < 300) {
    if (parsed === undefined && text !== "") {
      // A proxy's page, or a truncated body: not an answer from Tollgate.
      throw new TollgateUnavailableError("status", `${method} ${path} answered ${status} without JSON`, {
        status,
      });
    }
    return { status, headers, body: parsed as T };
  }
  const problem = problemOf(parsed, status, text);
  if (status >= 300 && status < 400) {
    // A redirect that was not (or could not be) followed: the base URL points somewhere else. Not a
    // refusal from Tollgate, so nothing is given up on (events stay queued).
    const location = headers.get("location");
    throw new TollgateUnavailableError(
      "status",
      `${method} ${path} answered ${status}${location ? ` (to ${location})` : ""}: is baseUrl where Tollgate answers?`,
      { status, problem },
    );
  }
  if (status === 408 || status === 429 || status >= 500) {
    const retryAfterMs = retryAfterOf(headers.get("retry-after"));
    throw new TollgateUnavailableError("status", `${method} ${path} answered ${status}: ${problem.detail}`, {
      status,
      problem,
      ...(retryAfterMs !== undefined ? { retryAfterMs } : {}),
    });
  }
  throw new TollgateError(problem);
}

/** The problem document, or one made up from the status when the body is not one (a proxy's page). */
function problemOf(parsed: unknown, status: number, text: string): Problem {
  if (parsed && typeof parsed === "object" && typeof (parsed as Problem).code === "string") {
    const p = parsed as Problem;
    return { ...p, status: typeof p.status === "number" ? p.status : status };
  }
  return {
    type: "about:blank",
    title: `HTTP ${status}`,
    status,
    code: `http_${status}`,
    detail: text.slice(0, 200) || `HTTP ${status}`,
  };
}

/** `Retry-After` in milliseconds: delay-seconds or an HTTP date. */
export function retryAfterOf(value: string | null): number | undefined {
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

export function messageOf(error: unknown): string {
  if (error instanceof Error) {
    const cause = (error as { cause?: unknown }).cause;
    return cause instanceof Error ? `${error.message} (${cause.message})` : error.message;
  }
  return String(error);
}

/**
 * A signal that aborts after `timeoutMs` or when `outer` aborts, whichever comes first (for the
 * typed `api` client, where the body is read after fetch returns: the timer must outlive it).
 */
export function timeoutSignal(timeoutMs: number, outer?: AbortSignal | null): AbortSignal {
  // Not AbortSignal.timeout(): Node's timer holds that signal weakly, and AbortSignal.any() holds its
  // sources weakly too, so under memory pressure the timeout could be collected and never fire (a
  // request hanging past its timeout). This timer holds its controller until it fires.
  const timeout = manualTimeout(timeoutMs);
  if (!outer) return timeout;
  if (typeof AbortSignal.any === "function") return AbortSignal.any([outer, timeout]);
  const controller = new AbortController();
  const abort = (source: AbortSignal) => () => controller.abort(source.reason);
  if (outer.aborted) controller.abort(outer.reason);
  outer.addEventListener("abort", abort(outer), { once: true });
  timeout.addEventListener("abort", abort(timeout), { once: true });
  return controller.signal;
}

function manualTimeout(timeoutMs: number): AbortSignal {
  const controller = new AbortController();
  unref(setTimeout(() => controller.abort(timeoutError(timeoutMs)), timeoutMs));
  return controller.signal;
}

/** What AbortSignal.timeout() aborts with: a DOMException named TimeoutError where there is one. */
function timeoutError(timeoutMs: number): Error {
  const message = `The request did not complete within ${timeoutMs} ms`;
  if (typeof DOMException === "function") return new DOMException(message, "TimeoutError");
  const error = new Error(message);
  error.name = "TimeoutError";
  return error;
}
