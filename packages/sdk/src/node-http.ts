/**
 * The SDK's own requests on Node: `node:http`/`node:https` with a keep-alive agent instead of
 * `fetch`. Node's fetch (undici) spends about twice the CPU of `http.request` on a request, which
 * the event batches and key verdict refreshes pay on the application's own core.
 *
 * Found at run time through `process.getBuiltinModule` (Node 20.16+, 22.3+), never imported, so the
 * core stays free of Node-only imports: bundlers for edge runtimes see nothing, and where the
 * function is missing (older Node, Deno without it, Workers, browsers) the SDK uses `fetch`.
 *
 * Only the few members used here are typed, structurally: the core is built without Node's types.
 *
 * Differences from `fetch` a user could notice, and what is done about them:
 * - One keep-alive pool per scheme for every client in the process, as fetch's global dispatcher.
 * - A 307/308 to the same origin is followed (method and body kept, at most 5); any other redirect
 *   comes back as it is, and is taken for "Tollgate unavailable" (events kept, not dropped).
 * - A request sent on a kept-alive connection the server had just closed (ECONNRESET before any
 *   answer) is sent once more on a new one when repeating it is harmless: a GET, or an events batch
 *   (its ids make it idempotent). Anything else fails as "network", like fetch.
 * - What was configured on undici's global dispatcher (a ProxyAgent, custom TLS options) does not
 *   apply: pass `fetch` in the options to go through it. `NODE_EXTRA_CA_CERTS` applies to both.
 */

interface IncomingLike {
  statusCode?: number;
  headers: Record<string, string | string[] | undefined>;
  setEncoding(encoding: "utf8"): void;
  on(event: "data", listener: (chunk: string) => void): this;
  on(event: "end", listener: () => void): this;
  on(event: "error" | "aborted", listener: (error?: Error) => void): this;
}

interface RequestLike {
  reusedSocket?: boolean;
  on(event: "response", listener: (response: IncomingLike) => void): this;
  on(event: "error", listener: (error: Error & { code?: string }) => void): this;
  end(body?: string): void;
  destroy(error?: Error): void;
}

interface AgentLike {
  destroy(): void;
}

interface HttpModuleLike {
  Agent: new (options: { keepAlive: boolean; timeout?: number; scheduling?: "fifo" | "lifo" }) => AgentLike;
  request(
    url: URL,
    options: { method: string; headers: Record<string, string>; agent: AgentLike },
  ): RequestLike;
}

/** What one exchange gives back: the same parts `fetch` would. */
export interface RawAnswer {
  status: number;
  headers: Headers;
  text: string;
}

export type NodeExchange = (
  url: string,
  method: string,
  headers: Record<string, string>,
  body: string | undefined,
  signal: AbortSignal,
  /** May be sent again if the kept-alive connection it went out on turns out closed. */
  repeatable: boolean,
) => Promise<RawAnswer>;

/**
 * Free sockets are closed after this long idle: below Node's own server default (5 s keep-alive
 * timeout) and undici's choice, so a request is not sent on a socket the server is closing (Node's
 * agent also honours a shorter `Keep-Alive: timeout=` from the server).
 */
const IDLE_SOCKET_MS = 4_000;
const MAX_REDIRECTS = 5;

function builtin(id: string): unknown {
  const get = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process
    ?.getBuiltinModule;
  if (typeof get !== "function") return undefined;
  try {
    return get(id);
  } catch {
    return undefined;
  }
}

interface Pool {
  module: HttpModuleLike;
  agent: AgentLike;
}

/** One keep-alive pool per scheme, shared by every client (undefined: not on Node). */
const pools = new Map<string, Pool | undefined>();

function poolFor(protocol: string): Pool | undefined {
  if (pools.has(protocol)) return pools.get(protocol);
  let pool: Pool | undefined;
  const module = builtin(protocol === "https:" ? "node:https" : "node:http") as HttpModuleLike | undefined;
  if (module && typeof module.request === "function" && typeof module.Agent === "function") {
    // Node's defaults otherwise (no cap on sockets, as with fetch). Idle sockets are unref'd by
    // Node: they never keep the process alive.
    pool = {
      module,
      agent: new module.Agent({ keepAlive: true, timeout: IDLE_SOCKET_MS, scheduling: "lifo" }),
    };
  }
  pools.set(protocol, pool);
  return pool;
}

/**
 * An exchange over `node:http` (or `node:https` for an https base URL) with a shared keep-alive
 * agent, or undefined when not on Node (or a Node without `process.getBuiltinModule`).
 */
export function nodeExchange(baseUrl: string): NodeExchange | undefined {
  let protocol: string;
  try {
    protocol = new URL(baseUrl).protocol;
  } catch {
    return undefined;
  }
  if ((protocol !== "http:" && protocol !== "https:") || !poolFor(protocol)) return undefined;
  return async (url, method, headers, body, signal, repeatable) => {
    let target = new URL(url);
    for (let redirects = 0; ; redirects++) {
      const pool = poolFor(target.protocol);
      if (!pool) throw new TypeError(`Cannot send to ${target.protocol} URLs`);
      let answer: RawAnswer;
      try {
        answer = await once(pool, target, method, headers, body, signal);
      } catch (error) {
        if (!(error instanceof StaleConnection)) throw error;
        if (!repeatable) throw error.cause;
        answer = await once(pool, target, method, headers, body, signal);
      }
      const location = answer.headers.get("location");
      if (
        (answer.status !== 307 && answer.status !== 308) ||
        location === null ||
        redirects >= MAX_REDIRECTS
      ) {
        return answer;
      }
      const next = new URL(location, target);
      // Never the operator's key to another origin (fetch drops it there; then Tollgate refuses).
      if (next.origin !== target.origin) return answer;
      target = next;
    }
  };
}

/** A request that failed on a kept-alive connection before any answer: the server had closed it. */
class StaleConnection extends Error {
  constructor(override readonly cause: Error) {
    super(cause.message);
  }
}

function once(
  { module, agent }: Pool,
  url: URL,
  method: string,
  headers: Record<string, string>,
  body: string | undefined,
  signal: AbortSignal,
): Promise<RawAnswer> {
  return new Promise<RawAnswer>((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const request = module.request(url, { method, headers, agent });
    let answered = false;
    const onAbort = () => request.destroy(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    const fail = (error: unknown) => {
      signal.removeEventListener("abort", onAbort);
      reject(signal.aborted ? signal.reason : error);
    };
    request.on("error", (error) => {
      const stale =
        !answered &&
        !signal.aborted &&
        request.reusedSocket === true &&
        (error.code === "ECONNRESET" || error.code === "EPIPE");
      fail(stale ? new StaleConnection(error) : error);
    });
    request.on("response", (response) => {
      answered = true;
      response.setEncoding("utf8");
      let text = "";
      response.on("data", (chunk) => {
        text += chunk;
      });
      response.on("aborted", () => fail(new Error("the answer was cut off")));
      response.on("error", (error) => fail(error ?? new Error("the answer was cut off")));
      response.on("end", () => {
        signal.removeEventListener("abort", onAbort);
        resolve({ status: response.statusCode ?? 0, headers: headersOf(response.headers), text });
      });
    });
    request.end(body);
  });
}

function headersOf(raw: Record<string, string | string[] | undefined>): Headers {
  const headers = new Headers();
  for (const name in raw) {
    const value = raw[name];
    if (value === undefined) continue;
    if (typeof value === "string") headers.set(name, value);
    else for (const one of value) headers.append(name, one);
  }
  return headers;
}
