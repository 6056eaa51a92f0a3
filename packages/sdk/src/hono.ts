import type { Context, Env, MiddlewareHandler } from "hono";
import type { Tollgate } from "./client.js";
import {
  createGate,
  finishes,
  type GateContext,
  type GateDecision,
  type GateOptions,
  PROBLEM_CONTENT_TYPE,
} from "./gate.js";

/**
 * `@tollgate/sdk/hono`: the Tollgate middleware for Hono (any runtime Hono runs on).
 *
 * @example
 * app.post(
 *   "/v1/kolekts",
 *   tollgate(client, { consume: [{ feature: "api_requests" }], quota: [{ feature: "kolekts", meter: "kolekts" }] }),
 *   (c) => c.json({ org: c.get("tollgate").orgId }, 201),
 * );
 */

declare module "hono" {
  interface ContextVariableMap {
    /** Set by `tollgate()` from `@tollgate/sdk/hono` on the routes it guards. */
    tollgate: GateContext;
  }
}

export type {
  GateContext,
  GateOptions,
  GateProblem,
  GateQuota,
  GateRejection,
} from "./gate.js";

/**
 * Verifies the caller's org API key and runs the route's checks (see {@link GateOptions}), then lets
 * the handler run with `c.get("tollgate")`, or answers 401, 402, 413, 429 or 503 as problem+json. After a
 * 2xx answer (and only then: not after a 4xx/5xx, nor when the handler throws) each `quota` is
 * tracked on its meter.
 */
// biome-ignore lint/suspicious/noExplicitAny: Hono's own default for a context's environment.
export function tollgate<E extends Env = any>(
  client: Tollgate,
  options: GateOptions<Context<E>> = {},
): MiddlewareHandler<E & { Variables: { tollgate: GateContext } }> {
  const decide = createGate<Context<E>>(client, options, readHeader);
  const run = async (
    c: Context,
    next: () => Promise<void>,
    decision: GateDecision,
  ): Promise<Response | undefined> => {
    if (!decision.allowed) {
      const { status, headers, body } = decision.rejection;
      return new Response(JSON.stringify(body), {
        status,
        headers: { ...headers, "content-type": PROBLEM_CONTENT_TYPE },
      });
    }
    c.set("tollgate", decision.context);
    for (const name in decision.headers) c.header(name, decision.headers[name]);
    let answered = false;
    try {
      await next();
      answered = true;
      // Headers set before `next()` reach responses made with `c.json()` and the like; a Response the
      // handler built itself gets the missing ones now — not an upgrade's 101, nor a Response whose
      // headers are immutable (one passed on from fetch(): it goes out as it is).
      const res = c.res;
      if (res.status >= 200) {
        try {
          for (const name in decision.headers) {
            if (res.headers.get(name) === null) res.headers.set(name, decision.headers[name] as string);
          }
        } catch {}
      }
    } finally {
      // A handler that threw was answered by the app's error handler (c.error says so), or the
      // error is on its way to the runtime: not a success either way.
      decision.finish(answered && !c.error ? c.res.status : 500);
    }
    return undefined;
  };
  return (c, next) => {
    const pending = decide(c as unknown as Context<E>);
    if (pending instanceof Promise) return pending.then((decision) => run(c, next, decision));
    if (pending.allowed && !finishes(pending) && isEmpty(pending.headers)) {
      // The warm path: nothing to add to the answer and nothing to do after it — the handler runs
      // as it would without the middleware.
      c.set("tollgate", pending.context);
      // Not next()'s own promise: Hono's resolves to the context, which compose would take for the
      // answer of a handler that returned none (instead of saying the context is not finalized).
      return next().then(nothing);
    }
    return run(c, next, pending);
  };
}

function nothing(): undefined {
  return undefined;
}

function isEmpty(headers: Record<string, string>): boolean {
  for (const _ in headers) return false;
  return true;
}

/**
 * On Node (@hono/node-server) `c.env.incoming` is Node's request, whose `rawHeaders` are read as they
 * are: `c.req.header()` makes Node build its header object first, which costs a small route about a
 * tenth of its throughput. Elsewhere (edge runtimes, `app.request()`), `c.req.header()`.
 */
function readHeader(c: Context, name: string): string | undefined {
  const raw = (c.env as { incoming?: { rawHeaders?: unknown } } | undefined)?.incoming?.rawHeaders;
  return Array.isArray(raw) ? rawHeader(raw as string[], name) : c.req.header(name);
}

/** A header from Node's `rawHeaders` (name, value, name, value…); repeated ones joined as Headers does. */
function rawHeader(raw: readonly string[], name: string): string | undefined {
  let value: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const candidate = raw[i] as string;
    if (candidate.length === name.length && candidate.toLowerCase() === name) {
      const found = raw[i + 1] as string;
      value = value === undefined ? found : `${value}, ${found}`;
    }
  }
  return value;
}
