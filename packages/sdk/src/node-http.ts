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
  on(event: "response", listener: (response: IncomingLike) => void): this;
  on(event: "error", listener: (error: Error) => void): this;
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
) => Promise<RawAnswer>;

/**
 * Free sockets are closed after this long idle: below Node's own server default (5 s keep-alive
 * timeout) and undici's choice, so a request is not sent on a socket the server is closing.
 */
const IDLE_SOCKET_MS = 4_000;

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

/**
 * An exchange over `node:http` (or `node:https` for an https base URL) with its own keep-alive
 * agent, or undefined when not on Node (or a Node without `process.getBuiltinModule`).
 */
export function nodeExchange(baseUrl: string): NodeExchange | undefined {
  const secure = baseUrl.startsWith("https:");
  const module = builtin(secure ? "node:https" : "node:http") as HttpModuleLike | undefined;
  if (!module || typeof module.request !== "function" || typeof module.Agent !== "function") {
    return undefined;
  }
  // Node's defaults otherwise (no cap on sockets, as with fetch). The agent's idle sockets are
  // unref'd by Node: they never keep the process alive.
  const agent = new module.Agent({ keepAlive: true, timeout: IDLE_SOCKET_MS, scheduling: "lifo" });
  return (url, method, headers, body, signal) =>
    new Promise<RawAnswer>((resolve, reject) => {
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      const request = module.request(new URL(url), { method, headers, agent });
      const onAbort = () => request.destroy(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
      const fail = (error: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(signal.aborted ? signal.reason : error);
      };
      request.on("error", fail);
      request.on("response", (response) => {
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
