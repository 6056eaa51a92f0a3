import type { FetchLike } from "../src/index.js";

/**
 * A scripted stand-in for Tollgate: a `fetch` answering by `METHOD /path` (the path without the
 * query), for the tests where answers must be held, released or crossed on cue — which a real server
 * cannot do. Everything else is tested against a real `tollgate start` (support.ts).
 */

export type Route = (body: any, signal: AbortSignal | undefined) => Promise<Response> | Response;

/** The fetch, and every call it received (its route and JSON body), in order. */
export function scripted(routes: Record<string, Route>) {
  const calls: { route: string; body: any }[] = [];
  const fetch: FetchLike = async (input, init) => {
    const request = input instanceof Request ? input : undefined;
    const url = new URL(request ? request.url : String(input));
    const method = init?.method ?? request?.method ?? "GET";
    const route = `${method} ${url.pathname}`;
    const body = typeof init?.body === "string" ? JSON.parse(init.body) : undefined;
    calls.push({ route, body });
    const handler = routes[route];
    if (!handler) return json(404, { code: "not_found", status: 404, title: "Not found", detail: route });
    return handler(body, init?.signal ?? request?.signal ?? undefined);
  };
  return { fetch, calls, count: (route: string) => calls.filter((c) => c.route === route).length };
}

export const json = (status: number, body: unknown) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });

/** Never answers; rejects when the SDK aborts. */
export const hang: Route = (_body, signal) =>
  new Promise((_resolve, reject) => {
    signal?.addEventListener("abort", () => reject(signal.reason ?? new Error("aborted")), { once: true });
  });

/** A promise resolved from outside. */
export function deferred<T>() {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}
