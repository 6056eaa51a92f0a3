import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { checkTarget, postWebhook, type ResolvedAddress, type TargetPolicy } from "./transport.js";

interface Received {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

interface TestServer {
  port: number;
  url: string;
  received: Received[];
}

const servers: http.Server[] = [];
afterEach(async () => {
  for (const server of servers.splice(0)) {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
});

/** A real loopback server that records every request it gets before `respond` answers it. */
async function serve(respond: (req: http.IncomingMessage, res: http.ServerResponse) => void) {
  const received: Received[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      received.push({
        method: req.method ?? "",
        url: req.url ?? "",
        headers: req.headers,
        body: Buffer.concat(chunks).toString(),
      });
      respond(req, res);
    });
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { port, url: `http://127.0.0.1:${port}`, received } satisfies TestServer;
}

/** Allows the loopback server, so tests of the HTTP behaviour can reach it. */
const allow = (server: TestServer): TargetPolicy => ({ allowedTargets: [`127.0.0.1:${server.port}`] });

/** A resolver that must not be used: proves a check needed no DNS. */
const noDns: TargetPolicy["lookup"] = async (hostname) => {
  throw new Error(`unexpected DNS lookup of ${hostname}`);
};

/** A resolver answering from a table, one answer per call (the last one repeats). */
function fakeDns(table: Record<string, string[][]>): TargetPolicy["lookup"] {
  const calls = new Map<string, number>();
  return async (hostname) => {
    const answers = table[hostname];
    if (!answers) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: "ENOTFOUND" });
    const n = calls.get(hostname) ?? 0;
    calls.set(hostname, n + 1);
    const answer = answers[Math.min(n, answers.length - 1)] ?? [];
    return answer.map((address): ResolvedAddress => ({ address, family: address.includes(":") ? 6 : 4 }));
  };
}

const post = (
  url: string,
  policy: TargetPolicy,
  extra: { timeoutMs?: number; headers?: Record<string, string> } = {},
) =>
  postWebhook({
    url,
    headers: extra.headers ?? { "webhook-id": "msg_1" },
    body: '{"type":"invoice.paid"}',
    timeoutMs: extra.timeoutMs ?? 5_000,
    policy,
  });

describe("checkTarget", () => {
  it.each([
    ["http://10.0.0.5/", "refused: 10.0.0.5 is a private address"],
    ["http://172.16.3.4:8080/", "refused: 172.16.3.4 is a private address"],
    ["http://192.168.1.1/", "refused: 192.168.1.1 is a private address"],
    ["http://169.254.169.254/latest/meta-data/", "refused: 169.254.169.254 is a link-local address"],
    ["http://100.64.0.1/", "refused: 100.64.0.1 is a carrier-grade NAT address"],
    ["http://127.0.0.1/", "refused: 127.0.0.1 is a loopback address"],
    ["http://[::1]/", "refused: ::1 is a loopback address"],
    ["http://[fc00::1]/", "refused: fc00::1 is a unique local address"],
    ["http://[fe80::1]/", "refused: fe80::1 is a link-local address"],
    ["http://[::ffff:127.0.0.1]/", "refused: ::ffff:7f00:1 (127.0.0.1) is a loopback address"],
    ["http://[::ffff:10.1.2.3]/", "refused: ::ffff:a01:203 (10.1.2.3) is a private address"],
    ["http://0.0.0.0/", "refused: 0.0.0.0 is an unspecified address"],
    ["http://[::]/", "refused: :: is an unspecified address"],
    ["http://255.255.255.255/", "refused: 255.255.255.255 is a broadcast address"],
    ["http://224.0.0.1/", "refused: 224.0.0.1 is a multicast address"],
    ["http://192.0.2.1/", "refused: 192.0.2.1 is a reserved address"],
    ["http://[2002:7f00:1::]/", "refused: 2002:7f00:1:: is a 6to4 address"],
    ["http://[64:ff9b::a00:1]/", "refused: 64:ff9b::a00:1 is a NAT64 address"],
    ["http://[2001::1]/", "refused: 2001::1 is a Teredo address"],
    // The deprecated IPv4-compatible form is outside 2000::/3.
    ["http://[::127.0.0.1]/", "refused: ::7f00:1 is a reserved address"],
    // The URL parser normalises odd IPv4 spellings before anything looks at them.
    ["http://0x7f.1/", "refused: 127.0.0.1 is a loopback address"],
    ["http://2130706433/", "refused: 127.0.0.1 is a loopback address"],
  ])("refuses the IP literal %s without DNS", async (url, detail) => {
    expect(await checkTarget(url, { allowedTargets: [], lookup: noDns })).toEqual({
      code: "forbidden_target",
      detail,
    });
  });

  it.each([
    "https://93.184.216.34/hooks",
    "http://93.184.216.34:8080/",
    "https://[2606:4700:4700::1111]/",
    "https://[::ffff:93.184.216.34]/",
  ])("accepts the public IP literal %s without DNS (and without connecting)", async (url) => {
    expect(await checkTarget(url, { allowedTargets: [], lookup: noDns })).toBeNull();
  });

  it.each(["http://localhost/", "http://LOCALHOST:8080/", "http://localhost./", "http://api.localhost/"])(
    "refuses %s as loopback without asking DNS",
    async (url) => {
      const problem = await checkTarget(url, { allowedTargets: [], lookup: noDns });
      expect(problem?.code).toBe("forbidden_target");
      expect(problem?.detail).toMatch(/localhost is a loopback address$/);
    },
  );

  it.each([
    ["ftp://example.com/hooks", "scheme ftp: is not allowed; use http or https"],
    ["file:///etc/passwd", "scheme file: is not allowed; use http or https"],
    ["javascript:alert(1)", "scheme javascript: is not allowed; use http or https"],
    ["gopher://example.com:70/", "scheme gopher: is not allowed; use http or https"],
    ["not a url", "not a valid URL"],
    ["/relative/path", "not a valid URL"],
    ["http://user:pass@example.com/", "credentials in the URL are not allowed"],
    ["https://token@example.com/", "credentials in the URL are not allowed"],
    ["https://:secret@example.com/", "credentials in the URL are not allowed"],
  ])("refuses %s as an invalid URL", async (url, detail) => {
    expect(await checkTarget(url, { allowedTargets: [], lookup: noDns })).toEqual({
      code: "invalid_url",
      detail,
    });
  });

  it("refuses a hostname that resolves to loopback", async () => {
    const lookup = fakeDns({ "hooks.example.test": [["127.0.0.1"]] });
    expect(await checkTarget("https://hooks.example.test/", { allowedTargets: [], lookup })).toEqual({
      code: "forbidden_target",
      detail: "refused: hooks.example.test resolves to 127.0.0.1, a loopback address",
    });
  });

  it("refuses a hostname if ANY of its addresses is non-public", async () => {
    const lookup = fakeDns({ "mixed.example.test": [["93.184.216.34", "2606:4700::1", "10.1.2.3"]] });
    expect(await checkTarget("https://mixed.example.test/", { allowedTargets: [], lookup })).toEqual({
      code: "forbidden_target",
      detail: "refused: mixed.example.test resolves to 10.1.2.3, a private address",
    });
  });

  it("accepts a hostname whose addresses are all public", async () => {
    const lookup = fakeDns({ "hooks.example.test": [["93.184.216.34", "2606:4700::1"]] });
    expect(await checkTarget("https://hooks.example.test/", { allowedTargets: [], lookup })).toBeNull();
  });

  it("reports a hostname that does not resolve as an invalid URL", async () => {
    const lookup = fakeDns({});
    expect(await checkTarget("https://nowhere.example.test/", { allowedTargets: [], lookup })).toEqual({
      code: "invalid_url",
      detail: "nowhere.example.test does not resolve (ENOTFOUND)",
    });
  });

  describe("allowed targets", () => {
    const check = (url: string, allowedTargets: string[], lookup = noDns) =>
      checkTarget(url, { allowedTargets, lookup });

    it("opens an IP literal for one port, or for any port without one", async () => {
      expect(await check("http://10.0.0.5:8080/", ["10.0.0.5:8080"])).toBeNull();
      expect(await check("http://10.0.0.5:9090/", ["10.0.0.5"])).toBeNull();
      expect((await check("http://10.0.0.5:9090/", ["10.0.0.5:8080"]))?.code).toBe("forbidden_target");
      expect((await check("http://10.0.0.6:8080/", ["10.0.0.5:8080"]))?.code).toBe("forbidden_target");
    });

    it("compares ports with the scheme's default filled in", async () => {
      expect(await check("https://10.0.0.5/", ["10.0.0.5:443"])).toBeNull();
      expect(await check("http://10.0.0.5/", ["10.0.0.5:80"])).toBeNull();
      expect((await check("http://10.0.0.5/", ["10.0.0.5:443"]))?.code).toBe("forbidden_target");
    });

    it("takes IPv6 entries in brackets (with or without a port) or bare", async () => {
      expect(await check("http://[::1]:8080/", ["[::1]:8080"])).toBeNull();
      expect(await check("http://[::1]:9090/", ["[::1]"])).toBeNull();
      expect(await check("http://[::1]:9090/", ["::1"])).toBeNull();
      expect(await check("http://[0:0::1]:8080/", ["[0::0:1]:8080"])).toBeNull();
      expect((await check("http://[::1]:9090/", ["[::1]:8080"]))?.code).toBe("forbidden_target");
    });

    it("matches hostnames case-insensitively, before and instead of the address check", async () => {
      const lookup = fakeDns({ "hooks.internal.test": [["10.0.0.9"]] });
      expect(await check("http://hooks.internal.test:8080/", ["Hooks.Internal.TEST"], lookup)).toBeNull();
      expect(
        await check("http://HOOKS.internal.test:8080/", ["hooks.internal.test:8080"], lookup),
      ).toBeNull();
      expect(await check("http://localhost:3000/", ["localhost:3000"])).toBeNull();
      expect(
        (await check("http://hooks.internal.test:9090/", ["hooks.internal.test:8080"], lookup))?.code,
      ).toBe("forbidden_target");
    });

    it("matches a resolved address, every one of them", async () => {
      const lookup = fakeDns({
        "a.internal.test": [["10.0.0.7"]],
        "b.internal.test": [["10.0.0.7", "10.0.0.8"]],
      });
      expect(await check("http://a.internal.test/", ["10.0.0.7"], lookup)).toBeNull();
      expect(await check("http://b.internal.test/", ["10.0.0.7"], lookup)).toEqual({
        code: "forbidden_target",
        detail: "refused: b.internal.test resolves to 10.0.0.8, a private address",
      });
    });

    it("ignores malformed entries", async () => {
      expect((await check("http://10.0.0.5/", ["http://10.0.0.5/", "10.0.0.5:port", ""]))?.code).toBe(
        "forbidden_target",
      );
    });
  });
});

describe("postWebhook", () => {
  it("POSTs the body with its headers and reports a 2xx with the body excerpt", async () => {
    const server = await serve((_req, res) => res.writeHead(202).end("accepted"));
    const result = await post(`${server.url}/hooks/in?team=7`, allow(server));
    expect(result).toMatchObject({ ok: true, status: 202, body: "accepted", error: null, code: null });
    expect(result.durationMs).toBeGreaterThanOrEqual(0);
    expect(server.received).toHaveLength(1);
    const [got] = server.received;
    expect(got?.method).toBe("POST");
    expect(got?.url).toBe("/hooks/in?team=7");
    expect(got?.body).toBe('{"type":"invoice.paid"}');
    expect(got?.headers).toMatchObject({
      "content-type": "application/json",
      "user-agent": "Tollgate-Webhooks/1",
      "webhook-id": "msg_1",
      "content-length": "23",
      connection: "close",
    });
  });

  it("keeps a Content-Type it is given, but sets User-Agent, Host and Content-Length itself", async () => {
    const server = await serve((_req, res) => res.end());
    const result = await post(server.url, allow(server), {
      headers: {
        "content-type": "application/cloudevents+json",
        "User-Agent": "spoof",
        Host: "elsewhere.example",
        "Content-Length": "1",
      },
    });
    expect(result).toMatchObject({ ok: true, status: 200, body: "" });
    expect(server.received[0]?.headers).toMatchObject({
      "content-type": "application/cloudevents+json",
      "user-agent": "Tollgate-Webhooks/1",
      host: `127.0.0.1:${server.port}`,
      "content-length": "23",
    });
  });

  it("reports a 500 as http_status, with the status and body", async () => {
    const server = await serve((_req, res) => res.writeHead(500).end("boom"));
    expect(await post(server.url, allow(server))).toMatchObject({
      ok: false,
      status: 500,
      body: "boom",
      error: "HTTP status 500",
      code: "http_status",
    });
  });

  it("does not follow a redirect", async () => {
    const elsewhere = await serve((_req, res) => res.end("followed"));
    const server = await serve((_req, res) => res.writeHead(302, { location: `${elsewhere.url}/x` }).end());
    const policy = { allowedTargets: [`127.0.0.1:${server.port}`, `127.0.0.1:${elsewhere.port}`] };
    expect(await post(server.url, policy)).toMatchObject({
      ok: false,
      status: 302,
      error: "redirect (302) not followed",
      code: "redirect",
    });
    expect(server.received).toHaveLength(1);
    expect(elsewhere.received).toHaveLength(0);
  });

  it("times out a server that does not answer, within a bound", async () => {
    const server = await serve(() => {}); // never responds
    const started = performance.now();
    const result = await post(server.url, allow(server), { timeoutMs: 200 });
    const took = performance.now() - started;
    expect(result).toMatchObject({
      ok: false,
      status: null,
      body: "",
      error: "timed out after 200 ms",
      code: "timeout",
    });
    expect(took).toBeGreaterThanOrEqual(190);
    expect(took).toBeLessThan(1_500);
    expect(result.durationMs).toBeLessThan(1_500);
  });

  it("bounds the response body by the same timeout, and keeps the status that arrived", async () => {
    const server = await serve((_req, res) => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.write("partial"); // ...and the rest never comes
    });
    const started = performance.now();
    const result = await post(server.url, allow(server), { timeoutMs: 200 });
    expect(performance.now() - started).toBeLessThan(1_500);
    expect(result).toMatchObject({ ok: false, status: 200, body: "partial", code: "timeout" });
  });

  it("refuses loopback without an allow-list entry, and sends nothing", async () => {
    const server = await serve((_req, res) => res.end());
    expect(await post(server.url, { allowedTargets: [] })).toMatchObject({
      ok: false,
      status: null,
      body: "",
      error: "refused: 127.0.0.1 is a loopback address",
      code: "forbidden_target",
    });
    expect(server.received).toHaveLength(0);
  });

  it("reaches loopback allowed by host:port or by host alone, not with another port", async () => {
    const server = await serve((_req, res) => res.end("ok"));
    const otherPort = server.port === 65_535 ? server.port - 1 : server.port + 1;
    expect(await post(server.url, { allowedTargets: [`127.0.0.1:${server.port}`] })).toMatchObject({
      ok: true,
    });
    expect(await post(server.url, { allowedTargets: ["127.0.0.1"] })).toMatchObject({ ok: true });
    expect(server.received).toHaveLength(2);
    expect(await post(server.url, { allowedTargets: [`127.0.0.1:${otherPort}`] })).toMatchObject({
      ok: false,
      code: "forbidden_target",
    });
    expect(server.received).toHaveLength(2);
  });

  it("refuses localhost", async () => {
    const server = await serve((_req, res) => res.end());
    expect(await post(`http://localhost:${server.port}/`, { allowedTargets: [] })).toMatchObject({
      ok: false,
      error: "refused: localhost is a loopback address",
      code: "forbidden_target",
    });
    expect(server.received).toHaveLength(0);
  });

  it("reaches an allow-listed localhost through the system resolver", async () => {
    const server = await serve((_req, res) => res.end("hi"));
    const result = await post(`http://localhost:${server.port}/`, {
      allowedTargets: [`localhost:${server.port}`],
    });
    expect(result).toMatchObject({ ok: true, status: 200, body: "hi" });
    expect(server.received[0]?.headers.host).toBe(`localhost:${server.port}`);
  });

  it("refuses a hostname resolving to loopback at connect time, and sends nothing", async () => {
    const server = await serve((_req, res) => res.end());
    const lookup = fakeDns({ "hooks.example.test": [["127.0.0.1"]] });
    expect(
      await post(`http://hooks.example.test:${server.port}/`, { allowedTargets: [], lookup }),
    ).toMatchObject({
      ok: false,
      status: null,
      error: "refused: hooks.example.test resolves to 127.0.0.1, a loopback address",
      code: "forbidden_target",
    });
    expect(server.received).toHaveLength(0);
  });

  it("checks the address it connects to: DNS rebinding after checkTarget is refused", async () => {
    const server = await serve((_req, res) => res.end());
    // Public when the endpoint is saved, loopback when the delivery runs.
    const lookup = fakeDns({ "rebind.example.test": [["93.184.216.34"], ["127.0.0.1"]] });
    const policy = { allowedTargets: [], lookup };
    const url = `http://rebind.example.test:${server.port}/`;
    expect(await checkTarget(url, policy)).toBeNull();
    expect(await post(url, policy)).toMatchObject({ ok: false, code: "forbidden_target" });
    expect(server.received).toHaveLength(0);
  });

  it("reaches a private hostname allowed by name, or by the address it resolves to", async () => {
    const server = await serve((_req, res) => res.end("ok"));
    const lookup = fakeDns({ "hooks.internal.test": [["127.0.0.1"]] });
    const url = `http://hooks.internal.test:${server.port}/`;
    expect(await post(url, { allowedTargets: ["HOOKS.INTERNAL.TEST"], lookup })).toMatchObject({ ok: true });
    expect(await post(url, { allowedTargets: [`127.0.0.1:${server.port}`], lookup })).toMatchObject({
      ok: true,
    });
    expect(server.received.map((r) => r.headers.host)).toEqual([
      `hooks.internal.test:${server.port}`,
      `hooks.internal.test:${server.port}`,
    ]);
  });

  it("keeps the first 4 KiB of a large body and still reports the status", async () => {
    const server = await serve((_req, res) => {
      res.writeHead(200);
      res.end("x".repeat(1024 * 1024));
    });
    const result = await post(server.url, allow(server));
    expect(result).toMatchObject({ ok: true, status: 200, code: null });
    expect(result.body).toBe("x".repeat(4096));
  });

  it("stops reading an endless body at 4 KiB instead of waiting for the timeout", async () => {
    const server = await serve((_req, res) => {
      res.writeHead(503);
      const chunk = "y".repeat(1024);
      const pump = () => {
        while (!res.destroyed && res.write(chunk)) {}
        if (!res.destroyed) res.once("drain", pump);
      };
      pump();
    });
    const result = await post(server.url, allow(server), { timeoutMs: 5_000 });
    expect(result).toMatchObject({ ok: false, status: 503, code: "http_status" });
    expect(result.body).toHaveLength(4096);
    expect(result.durationMs).toBeLessThan(2_000);
  });

  it("does not split a multi-byte character at the 4 KiB cut", async () => {
    const server = await serve((_req, res) => res.end(`x${"é".repeat(4096)}`)); // 1 + 2 bytes each
    const result = await post(server.url, allow(server));
    expect(result.body).toBe(`x${"é".repeat(2047)}`);
    expect(Buffer.byteLength(result.body)).toBe(4095);
  });

  it("reports a refused connection as a network failure", async () => {
    const server = await serve((_req, res) => res.end());
    const closedPort = server.port;
    const s = servers.pop();
    await new Promise((resolve) => s?.close(resolve));
    const result = await post(`http://127.0.0.1:${closedPort}/`, { allowedTargets: ["127.0.0.1"] });
    expect(result).toMatchObject({ ok: false, status: null, code: "network" });
    expect(result.error).toContain("ECONNREFUSED");
  });

  it("reports a connection dropped before any response as a network failure", async () => {
    const server = await serve((req) => req.socket.destroy());
    const result = await post(server.url, allow(server));
    expect(result).toMatchObject({ ok: false, status: null, code: "network" });
    expect(result.error).toBeTruthy();
  });

  it("never throws: a bad URL or a header Node refuses becomes a result", async () => {
    expect(await post("ftp://example.com/", { allowedTargets: [] })).toMatchObject({
      ok: false,
      status: null,
      body: "",
      error: "scheme ftp: is not allowed; use http or https",
      code: "invalid_url",
    });
    expect(await post("http://user:pw@93.184.216.34/", { allowedTargets: [] })).toMatchObject({
      code: "invalid_url",
    });
    const server = await serve((_req, res) => res.end());
    const result = await post(server.url, allow(server), { headers: { "x-bad": "a\r\nb" } });
    expect(result).toMatchObject({ ok: false, status: null, code: "network" });
    expect(server.received).toHaveLength(0);
  });
});
