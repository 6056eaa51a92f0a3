import dns from "node:dns";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import ipaddr from "ipaddr.js";

/**
 * The HTTP transport of outbound webhooks: one signed POST to a customer's endpoint, safe against
 * server-side request forgery.
 *
 * - A customer chooses the URL, so without care Tollgate would POST to its own loopback, the cloud
 *   metadata service (169.254.169.254) or the operator's private network. Only addresses ipaddr.js
 *   classifies as `unicast` are public; every special-purpose range is refused, and IPv4-mapped IPv6
 *   is unwrapped first so `::ffff:127.0.0.1` is loopback. 6to4, Teredo and NAT64 addresses embed an
 *   IPv4 address a gateway may forward to, so they are refused whatever they embed; so is IPv6 outside
 *   2000::/3 (the only global unicast block), which covers the deprecated IPv4-compatible `::a.b.c.d`.
 * - `checkTarget` gives early feedback when an endpoint is saved, but DNS may answer differently when
 *   a delivery runs (rebinding). So `postWebhook` validates again inside the socket's own `lookup`:
 *   the address it connects to is one it has just checked, and TLS still verifies the hostname.
 * - Redirects are never followed: a public endpoint could otherwise bounce the POST inward.
 * - The operator may open private targets with `TOLLGATE_WEBHOOK_ALLOWED_TARGETS` (see TargetPolicy).
 */

/** The part of the response body kept for the delivery log; the rest is never read. */
export const BODY_EXCERPT_BYTES = 4096;
export const USER_AGENT = "Tollgate-Webhooks/1";

/** One resolved address, as `dns.lookup(host, { all: true })` gives them. */
export interface ResolvedAddress {
  address: string;
  family: number;
}

export interface TargetPolicy {
  /**
   * `TOLLGATE_WEBHOOK_ALLOWED_TARGETS`: "host[:port]" entries (hostnames or IP literals, IPv6 in
   * brackets like [::1]:8080) that may be reached although private/loopback. Port-less entry = any
   * port. Case-insensitive hostnames. An entry matches the URL's hostname as written or any address it
   * resolves to. Malformed entries (the env parser reports them at boot) match nothing.
   */
  allowedTargets: readonly string[];
  /**
   * Tests only: resolves hostnames instead of the system resolver (`dns.lookup` with `all: true`), so
   * a test can point a name at loopback, or answer differently at check and at connect, without DNS.
   * Production leaves it unset.
   */
  lookup?: (hostname: string) => Promise<readonly ResolvedAddress[]>;
}

export type TargetProblem = { code: "invalid_url" | "forbidden_target"; detail: string };

export interface PostResult {
  /** true only for a 2xx. */
  ok: boolean;
  /** HTTP status when a response arrived (also when its body then timed out or broke off). */
  status: number | null;
  /** First 4 KiB of the response body as text (for the delivery log), "" if none. */
  body: string;
  durationMs: number;
  /**
   * Why it failed, human-readable: "timed out after 10000 ms", "redirect (302) not followed",
   * "refused: 10.0.0.5 is a private address", the network error… null when ok.
   */
  error: string | null;
  /**
   * Machine code for the failure: "timeout" | "network" | "redirect" | "http_status" |
   * "forbidden_target" | "invalid_url"; null when ok. Headers Node refuses to send (a newline in a
   * value) are reported as "network": nothing was sent.
   */
  code: string | null;
}

/**
 * Syntactic + DNS check used when an endpoint is created/updated: http(s) only, no credentials in the
 * URL, resolves every address (dns.lookup all:true) and refuses if ANY is non-public unless allowed.
 * IP literals and `localhost` are decided without DNS. A hostname that does not resolve is an
 * `invalid_url`. Returns null when fine.
 */
export async function checkTarget(url: string, policy: TargetPolicy): Promise<TargetProblem | null> {
  const target = parseTarget(url);
  if ("code" in target) return target;
  const decision = decideWithoutDns(target, policy);
  if (decision !== "resolve") return decision === "allowed" ? null : decision;
  let addresses: readonly ResolvedAddress[];
  try {
    addresses = await resolve(policy, target.connectHost, 0);
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code ?? errorText(err);
    return { code: "invalid_url", detail: `${target.host} does not resolve (${reason})` };
  }
  if (addresses.length === 0) return { code: "invalid_url", detail: `${target.host} does not resolve` };
  return checkResolved(target, addresses, policy);
}

/**
 * POSTs `body` to `url` once: no redirects, no keep-alive, the whole exchange (DNS, connect, TLS,
 * response and the body excerpt) bounded by `timeoutMs`. The target is checked again at connect
 * time. A response whose status arrived but whose body then timed out or broke off is a failure
 * (the status is still reported): deliveries are retried and receivers deduplicate on webhook-id.
 * `Content-Type: application/json` unless given; `User-Agent`, `Host` and the framing headers are the
 * transport's own. Never throws: every failure is a PostResult.
 */
export async function postWebhook(input: {
  url: string;
  headers: Record<string, string>;
  body: string;
  timeoutMs: number;
  policy: TargetPolicy;
}): Promise<PostResult> {
  const started = performance.now();
  const elapsed = () => Math.round(performance.now() - started);
  try {
    const target = parseTarget(input.url);
    if ("code" in target) return failure(target.code, target.detail, null, "", elapsed());
    const decision = decideWithoutDns(target, input.policy);
    if (decision !== "resolve" && decision !== "allowed") {
      return failure(decision.code, decision.detail, null, "", elapsed());
    }
    return await send(target, input, decision === "allowed", elapsed);
  } catch (err) {
    // Nothing above is expected to throw; this keeps the promise of never throwing regardless.
    return failure("network", errorText(err), null, "", elapsed());
  }
}

interface Target {
  url: URL;
  /** What the socket connects to: the URL's hostname without IPv6 brackets. */
  connectHost: string;
  /** For matching and messages: lower-cased, no trailing dot, IP literals in canonical form. */
  host: string;
  /** The canonical IP when the hostname is an IP literal. */
  ip: string | null;
  /** Explicit or the scheme's default, so "host:443" allows https://host/. */
  port: number;
}

function parseTarget(raw: string): Target | TargetProblem {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return { code: "invalid_url", detail: "not a valid URL" };
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    return { code: "invalid_url", detail: `scheme ${url.protocol} is not allowed; use http or https` };
  }
  // They would be sent as Basic credentials to whoever answers, and end up in delivery logs.
  if (url.username !== "" || url.password !== "") {
    return { code: "invalid_url", detail: "credentials in the URL are not allowed" };
  }
  // The WHATWG parser has already normalised IPv4 spellings (0x7f.1, 2130706433) and lower-cased.
  const connectHost = url.hostname.replace(/^\[(.*)\]$/, "$1");
  if (connectHost === "") return { code: "invalid_url", detail: "the URL has no host" };
  const host = normalizeHost(connectHost);
  return {
    url,
    connectHost,
    host,
    ip: net.isIP(host) ? host : null,
    port: url.port !== "" ? Number(url.port) : url.protocol === "https:" ? 443 : 80,
  };
}

function normalizeHost(host: string): string {
  const bare = host.toLowerCase().replace(/\.$/, "");
  return net.isIP(bare) ? canonicalIp(bare) : bare;
}

/** One spelling per address (and IPv4-mapped IPv6 as IPv4), so allow-list entries compare as strings. */
function canonicalIp(address: string): string {
  try {
    return ipaddr.process(address).toString();
  } catch {
    return address.toLowerCase();
  }
}

/**
 * What can be decided before DNS: allowed by the allow-list (by name or IP literal), an IP literal's
 * verdict, `localhost` (loopback by definition, RFC 6761, whatever a resolver says), or "resolve".
 */
function decideWithoutDns(target: Target, policy: TargetPolicy): TargetProblem | "allowed" | "resolve" {
  if (isAllowed(policy, target, null)) return "allowed";
  if (target.ip !== null) return checkAddress(target, target.connectHost) ?? "allowed";
  if (target.host === "localhost" || target.host.endsWith(".localhost")) {
    return { code: "forbidden_target", detail: `refused: ${target.host} is a loopback address` };
  }
  return "resolve";
}

/** Refuses if ANY address is non-public: the socket may try each of them (happy eyeballs). */
function checkResolved(
  target: Target,
  addresses: readonly ResolvedAddress[],
  policy: TargetPolicy,
): TargetProblem | null {
  for (const { address } of addresses) {
    if (isAllowed(policy, target, canonicalIp(address))) continue;
    const problem = checkAddress(target, address);
    if (problem) return problem;
  }
  return null;
}

function checkAddress(target: Target, address: string): TargetProblem | null {
  const reason = nonPublicReason(address);
  if (reason === null) return null;
  const canonical = canonicalIp(address);
  const shown = canonical === address.toLowerCase() ? address : `${address} (${canonical})`;
  return {
    code: "forbidden_target",
    detail:
      target.ip !== null
        ? `refused: ${shown} is ${reason}`
        : `refused: ${target.host} resolves to ${shown}, ${reason}`,
  };
}

const GLOBAL_UNICAST_V6 = ipaddr.parseCIDR("2000::/3");

const RANGE_NAMES: Record<string, string> = {
  loopback: "a loopback address",
  private: "a private address",
  linkLocal: "a link-local address",
  uniqueLocal: "a unique local address",
  carrierGradeNat: "a carrier-grade NAT address",
  unspecified: "an unspecified address",
  broadcast: "a broadcast address",
  multicast: "a multicast address",
  reserved: "a reserved address",
  "6to4": "a 6to4 address",
  teredo: "a Teredo address",
  rfc6052: "a NAT64 address",
  rfc6145: "an IPv4-translated address",
};

/** null for a public address, else why not ("a private address"). */
function nonPublicReason(address: string): string | null {
  let ip: ipaddr.IPv4 | ipaddr.IPv6;
  try {
    ip = ipaddr.process(address);
  } catch {
    return "not an IP address";
  }
  const range = ip.range();
  if (range !== "unicast") return RANGE_NAMES[range] ?? `a special-purpose address (${range})`;
  if (ip.kind() === "ipv6" && !ip.match(GLOBAL_UNICAST_V6)) return "a reserved address";
  return null;
}

interface AllowedEntry {
  host: string;
  port: number | null;
}

function parseAllowedEntry(entry: string): AllowedEntry | null {
  const text = entry.trim().toLowerCase();
  // A bare IPv6 literal: its colons are not a port.
  if (net.isIP(text) === 6) return { host: canonicalIp(text), port: null };
  const match = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(text) ?? /^([^:[\]/\s]+)(?::(\d{1,5}))?$/.exec(text);
  if (!match?.[1]) return null;
  return { host: normalizeHost(match[1]), port: match[2] === undefined ? null : Number(match[2]) };
}

/** Matches the URL's hostname as written, or `ip` (a canonical resolved address) when given. */
function isAllowed(policy: TargetPolicy, target: Target, ip: string | null): boolean {
  return policy.allowedTargets.some((raw) => {
    const entry = parseAllowedEntry(raw);
    if (!entry) return false;
    if (entry.port !== null && entry.port !== target.port) return false;
    return entry.host === target.host || (ip !== null && entry.host === ip);
  });
}

/** Async, so even a resolver that throws synchronously fails as a rejected promise, inside the socket. */
async function resolve(
  policy: TargetPolicy,
  hostname: string,
  hints: number,
): Promise<readonly ResolvedAddress[]> {
  return policy.lookup ? policy.lookup(hostname) : dns.promises.lookup(hostname, { all: true, hints });
}

/** Carries a connect-time refusal out of `lookup`, through the socket, to the request's error event. */
class TargetRefusedError extends Error {
  readonly code = "ETARGETREFUSED";
}

/**
 * The socket's resolver: the addresses it returns are the ones it validated, so nothing can change
 * between check and connect. `trusted` (the hostname is allow-listed) skips the address check.
 */
function guardedLookup(target: Target, policy: TargetPolicy, trusted: boolean): net.LookupFunction {
  return (hostname, options, callback) => {
    resolve(policy, hostname, options.hints ?? 0).then(
      (addresses) => {
        const problem = trusted ? null : checkResolved(target, addresses, policy);
        if (problem) return callback(new TargetRefusedError(problem.detail), "");
        const family = options.family === "IPv4" ? 4 : options.family === "IPv6" ? 6 : (options.family ?? 0);
        const usable = family === 0 ? addresses : addresses.filter((a) => a.family === family);
        const first = usable[0];
        if (!first) {
          const err: NodeJS.ErrnoException = new Error(`getaddrinfo ENOTFOUND ${hostname}`);
          err.code = "ENOTFOUND";
          return callback(err, "");
        }
        if (options.all)
          return callback(
            null,
            usable.map((a) => ({ address: a.address, family: a.family })),
          );
        callback(null, first.address, first.family);
      },
      (err: NodeJS.ErrnoException) => callback(err, ""),
    );
  };
}

/** Headers the transport sets itself: framing, identity and where the request goes. */
const OWN_HEADERS = new Set(["host", "content-length", "transfer-encoding", "connection", "user-agent"]);

function send(
  target: Target,
  input: { headers: Record<string, string>; body: string; timeoutMs: number; policy: TargetPolicy },
  trusted: boolean,
  elapsed: () => number,
): Promise<PostResult> {
  return new Promise<PostResult>((resolvePromise) => {
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(input.headers)) {
      if (!OWN_HEADERS.has(name.toLowerCase())) headers[name] = value;
    }
    if (!Object.keys(headers).some((name) => name.toLowerCase() === "content-type")) {
      headers["Content-Type"] = "application/json";
    }
    headers["User-Agent"] = USER_AGENT;
    headers["Content-Length"] = String(Buffer.byteLength(input.body));

    let settled = false;
    let status: number | null = null;
    const chunks: Buffer[] = [];
    let received = 0;
    // The body may be cut mid-character (at 4 KiB, or by a timeout): stream mode holds a partial one back.
    const excerpt = () => new TextDecoder().decode(Buffer.concat(chunks), { stream: true });

    let request: http.ClientRequest | undefined;
    const settle = (result: Omit<PostResult, "durationMs" | "body">) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      request?.destroy();
      resolvePromise({ ...result, body: excerpt(), durationMs: elapsed() });
    };
    const fail = (code: string, error: string) => settle({ ok: false, status, error, code });
    const complete = () => {
      const s = status ?? 0;
      if (s >= 200 && s < 300) settle({ ok: true, status, error: null, code: null });
      else if (s >= 300 && s < 400) fail("redirect", `redirect (${s}) not followed`);
      else fail("http_status", `HTTP status ${s}`);
    };

    const timer = setTimeout(() => fail("timeout", `timed out after ${input.timeoutMs} ms`), input.timeoutMs);

    try {
      const transport = target.url.protocol === "https:" ? https : http;
      request = transport.request({
        method: "POST",
        hostname: target.connectHost,
        port: target.port,
        path: `${target.url.pathname}${target.url.search}`,
        headers,
        agent: false,
        lookup: guardedLookup(target, input.policy, trusted),
      });
    } catch (err) {
      // Node validates header names and values synchronously.
      fail("network", errorText(err));
      return;
    }

    request.on("error", (err) => {
      if (err instanceof TargetRefusedError) fail("forbidden_target", err.message);
      else fail("network", errorText(err));
    });
    request.on("response", (response) => {
      status = response.statusCode ?? null;
      response.on("data", (chunk: Buffer) => {
        if (settled) return;
        const room = BODY_EXCERPT_BYTES - received;
        chunks.push(chunk.length > room ? chunk.subarray(0, room) : chunk);
        received += Math.min(chunk.length, room);
        if (chunk.length > room) {
          // Enough for the log: stop reading (settle destroys the socket) but keep the status.
          complete();
        }
      });
      response.on("end", complete);
      response.on("error", (err) => fail("network", errorText(err)));
      response.on("close", () => {
        if (!response.complete) fail("network", "connection closed before the response ended");
      });
    });
    request.end(input.body);
  });
}

function failure(
  code: string,
  error: string,
  status: number | null,
  body: string,
  durationMs: number,
): PostResult {
  return { ok: false, status, body, durationMs, error, code };
}

function errorText(err: unknown): string {
  if (err instanceof Error) return err.message || String((err as NodeJS.ErrnoException).code ?? err.name);
  return String(err);
}
