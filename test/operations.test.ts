import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { appModes, createTestApp, type TestApp } from "./support/app.js";

describe.each(appModes)("operations endpoints ($name)", (mode) => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp(mode);
  });
  afterAll(() => t.close());

  it("/healthz says the process is alive", async () => {
    const res = await t.call("GET", "/healthz");
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ status: "ok" });
  });

  it("/readyz checks the database, and Redis when configured", async () => {
    const res = await t.call("GET", "/readyz");
    expect(res.status).toBe(200);
    expect(res.body.status).toBe("ready");
    expect(res.body.checks.database.status).toBe("up");
    if (mode.redis) expect(res.body.checks.redis.status).toBe("up");
    else expect(res.body.checks.redis).toBeUndefined();
  });

  it("/readyz goes red while shutting down", async () => {
    t.deps.draining = true;
    try {
      const res = await t.call("GET", "/readyz");
      expect(res.status).toBe(503);
      expect(res.body.code).toBe("unavailable");
    } finally {
      t.deps.draining = false;
    }
  });

  it("/metrics counts requests by matched route and status, with latency histograms", async () => {
    await t.call("GET", "/healthz");
    await t.call("GET", "/v1/definitely/not/here/123");
    const res = await t.call("GET", "/metrics");
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/plain");
    expect(res.text).toMatch(
      /tollgate_http_requests_total\{method="GET",route="\/healthz",status="200"\} \d+/,
    );
    expect(res.text).toMatch(
      /tollgate_http_request_duration_seconds_bucket\{le="0\.005",method="GET",route="\/healthz"/,
    );
    // Unknown paths share one label, so scanning for URLs cannot blow up the metric's cardinality.
    expect(res.text).toMatch(/route="unmatched",status="404"/);
    // Refusals by the body rules are counted with the status that was sent.
    await t.call("POST", "/v1/anything", { body: "x=1", headers: { "content-type": "text/plain" } });
    const after = await t.call("GET", "/metrics");
    expect(after.text).toMatch(/tollgate_http_requests_total\{method="POST",route="[^"]*",status="415"\} 1/);
    expect(res.text).not.toContain("/v1/definitely/not/here/123");
  });

  it("/openapi.json is OpenAPI 3.1 generated from the routes' schemas", async () => {
    const res = await t.call("GET", "/openapi.json");
    expect(res.status).toBe(200);
    expect(res.body.openapi).toBe("3.1.0");
    expect(Object.keys(res.body.paths)).toEqual(expect.arrayContaining(["/healthz", "/readyz", "/metrics"]));
    expect(res.body.components.schemas.Problem.properties).toHaveProperty("code");
    expect(res.body.components.securitySchemes.operator).toMatchObject({ type: "http", scheme: "bearer" });
  });

  it("/docs serves the API explorer with its assets locally", async () => {
    const page = await t.app.request("/docs");
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toContain("/docs/init.js");
    expect(html).not.toMatch(/https?:\/\//);
    const asset = await t.app.request("/docs/assets/swagger-ui-bundle.js");
    expect(asset.status).toBe(200);
    expect(asset.headers.get("content-type")).toContain("javascript");
    expect((await t.app.request("/docs/assets/..%2F..%2Fpackage.json")).status).toBe(404);
  });
});
