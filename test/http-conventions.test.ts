import net, { type AddressInfo } from "node:net";
import { type ServerType, serve } from "@hono/node-server";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ADMIN_KEY, appModes, createTestApp, type TestApp } from "./support/app.js";

describe.each(appModes)("HTTP conventions ($name)", (mode) => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp({ ...mode, env: { TOLLGATE_TEST_CLOCK: "1" } });
    // A route that fails unexpectedly, to see what a client gets from a bug.
    t.app.get("/boom", () => {
      throw new Error("secret internal detail at /srv/app.js:42");
    });
  });
  afterAll(() => t.close());

  const expectProblem = (
    res: { status: number; headers: Headers; body: any },
    status: number,
    code: string,
  ) => {
    expect(res.status).toBe(status);
    expect(res.headers.get("content-type")).toBe("application/problem+json");
    expect(res.body).toMatchObject({
      status,
      code,
      type: expect.any(String),
      title: expect.any(String),
      detail: expect.any(String),
    });
    expect(res.body.request_id).toBe(res.headers.get("x-request-id"));
  };

  it("answers an unknown route with a 404 problem", async () => {
    const res = await t.call("GET", "/v1/nope");
    expectProblem(res, 404, "not_found");
    expect(res.body.detail).toContain("/v1/nope");
  });

  it("answers malformed JSON with a 400 naming the body", async () => {
    const res = await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: '{"to": "2030-' });
    expectProblem(res, 400, "validation_failed");
    expect(res.body.errors).toEqual([expect.objectContaining({ field: "body", code: "invalid_json" })]);
  });

  it("names every bad field: wrong types, missing and unknown fields", async () => {
    const wrongType = await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: { to: 12 } });
    expectProblem(wrongType, 400, "validation_failed");
    expect(wrongType.body.errors).toEqual([expect.objectContaining({ field: "to", location: "body" })]);

    const missing = await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: {} });
    expect(missing.body.errors).toEqual([expect.objectContaining({ field: "to", code: "required" })]);

    const unknown = await t.call("POST", "/v1/test-clock/advance", {
      auth: "operator",
      body: { to: "2099-01-01T00:00:00Z", colour: "red", speed: 3 },
    });
    expectProblem(unknown, 400, "validation_failed");
    expect(unknown.body.errors.map((e: { field: string; code: string }) => [e.field, e.code])).toEqual([
      ["colour", "unknown_field"],
      ["speed", "unknown_field"],
    ]);
  });

  it("refuses a body that is not JSON with 415", async () => {
    const res = await t.call("POST", "/v1/test-clock/advance", {
      auth: "operator",
      body: "to=2099-01-01",
      headers: { "content-type": "application/x-www-form-urlencoded" },
    });
    expectProblem(res, 415, "unsupported_media_type");
  });

  it("refuses a huge body with 413", async () => {
    const huge = JSON.stringify({ to: "2099-01-01T00:00:00Z", padding: "x".repeat(2 * 1024 * 1024) });
    const res = await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: huge });
    expectProblem(res, 413, "payload_too_large");
  });

  it("refuses a body whose Content-Length exceeds the limit without reading it", async () => {
    const res = await t.call("POST", "/v1/test-clock/advance", {
      auth: "operator",
      body: "{}",
      headers: { "content-length": String(50 * 1024 * 1024) },
    });
    expectProblem(res, 413, "payload_too_large");
  });

  it("counts a chunked body as it streams and stops it at the limit", async () => {
    const chunk = new TextEncoder().encode(`"${"x".repeat(64 * 1024)}",`);
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        sent += 1;
        if (sent > 64)
          controller.close(); // 4 MiB at most
        else controller.enqueue(chunk);
      },
    });
    const res = await t.app.request("/v1/test-clock/advance", {
      method: "POST",
      body,
      duplex: "half",
      headers: {
        authorization: `Bearer ${ADMIN_KEY}`,
        "content-type": "application/json",
        "transfer-encoding": "chunked",
      },
    } as RequestInit);
    expect(res.status).toBe(413);
    expect(sent).toBeLessThan(64);
  });

  it("answers an unexpected failure with a bare 500: no stack, no message, logged with the request id", async () => {
    const res = await t.call("GET", "/boom");
    expectProblem(res, 500, "internal");
    expect(res.text).not.toContain("secret internal detail");
    expect(res.text).not.toMatch(/at .*\.js:\d+/);
    expect(t.logs.text).toContain("secret internal detail");
    expect(t.logs.text).toContain(res.body.request_id);
  });

  it("gives every response a request id, and keeps a caller's own", async () => {
    const generated = await t.call("GET", "/healthz");
    expect(generated.headers.get("x-request-id")).toMatch(/^req_[0-9a-z]{26}$/);
    const own = await t.call("GET", "/healthz", { headers: { "x-request-id": "trace-abc-123" } });
    expect(own.headers.get("x-request-id")).toBe("trace-abc-123");
  });

  it("needs the operator key for operator endpoints, compared exactly", async () => {
    expectProblem(await t.call("GET", "/v1/test-clock"), 401, "unauthenticated");
    expectProblem(
      await t.call("GET", "/v1/test-clock", { auth: "test-operator-key-0123456789abcdeX" }),
      401,
      "unauthenticated",
    );
    expectProblem(await t.call("GET", "/v1/test-clock", { auth: "" }), 401, "unauthenticated");
    expect((await t.call("GET", "/v1/test-clock", { auth: "operator" })).status).toBe(200);
  });

  it("never logs the operator key or other secrets", async () => {
    await t.call("GET", "/v1/test-clock", { auth: "operator" });
    t.deps.logger.info(
      { password: "pa55word-xyz", headers: { authorization: "Bearer abc" } },
      "careless log",
    );
    t.deps.logger.info({ env: t.deps.env }, "even more careless");
    expect(t.logs.text).not.toContain("test-secret-0123456789");
    expect(t.logs.text).not.toContain("test-operator-key");
    expect(t.logs.text).not.toContain("pa55word-xyz");
    expect(t.logs.text).toContain("[redacted]");
  });
});

/**
 * The body rules decide from headers, so they are also tested as real clients send requests: over a
 * socket, where the Node adapter (not app.request) builds the request.
 */
describe("body rules over a real socket", () => {
  let t: TestApp;
  let server: ServerType;
  let base: string;
  beforeAll(async () => {
    t = await createTestApp({ database: "pglite", redis: false, env: { TOLLGATE_TEST_CLOCK: "1" } });
    server = serve({ fetch: t.app.fetch, port: 0, hostname: "127.0.0.1" });
    await new Promise((resolve) => server.once("listening", resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
    await t.close();
  });

  /** A raw HTTP/1.1 request, so the test controls exactly which headers are sent. */
  const raw = (head: string, body = ""): Promise<string> =>
    new Promise((resolve, reject) => {
      const socket = net.connect(Number(new URL(base).port), "127.0.0.1", () =>
        socket.end(`${head}\r\n\r\n${body}`),
      );
      let response = "";
      socket.on("data", (d) => {
        response += d;
      });
      socket.on("end", () => resolve(response));
      socket.on("error", reject);
    });

  it("treats a POST or DELETE without Content-Length as bodiless, not as a non-JSON body", async () => {
    const post = await raw("POST /v1/nowhere HTTP/1.1\r\nHost: x\r\nConnection: close");
    expect(post).toMatch(/^HTTP\/1\.1 404/);
    const del = await raw("DELETE /v1/nowhere HTTP/1.1\r\nHost: x\r\nConnection: close");
    expect(del).toMatch(/^HTTP\/1\.1 404/);
  });

  it("refuses a non-JSON body with 415 and an oversized Content-Length with 413", async () => {
    const form = await fetch(`${base}/v1/test-clock/advance`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_KEY}`, "content-type": "text/plain" },
      body: "to=tomorrow",
    });
    expect(form.status).toBe(415);
    const huge = await raw(
      "POST /v1/test-clock/advance HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 104857600",
      "{",
    );
    expect(huge).toMatch(/^HTTP\/1\.1 413/);
    expect(huge).toContain("application/problem+json");
  });

  it("stops a chunked upload at the limit", async () => {
    const chunk = `${(64 * 1024).toString(16)}\r\n${"x".repeat(64 * 1024)}\r\n`;
    const res = await raw(
      "POST /v1/test-clock/advance HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked",
      `${chunk.repeat(24)}0\r\n\r\n`,
    );
    expect(res).toMatch(/^HTTP\/1\.1 413/);
  });

  it("answers an unknown docs asset, even one named like an object property, with 404", async () => {
    for (const name of ["constructor", "__proto__", "toString", "..%2Fpackage.json"]) {
      expect((await fetch(`${base}/docs/assets/${name}`)).status).toBe(404);
    }
  });
});
