import { readFileSync } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";
import { generateApiTypes, SCHEMA_FILE, SDK_SCHEMA_FILE } from "../scripts/openapi-types.js";
import { createTestApp } from "./support/app.js";

/**
 * The dashboard's and the SDK's API types are generated from the served OpenAPI document; this fails
 * when a route or schema changed and `npm run gen:api` was not run, so neither can drift from the API.
 */
describe("the API clients generated from /openapi.json", () => {
  let expected: string;
  beforeAll(async () => {
    const t = await createTestApp({ database: "pglite", redis: false });
    try {
      const document = (await t.call("GET", "/openapi.json")).body;
      expected = await generateApiTypes(document);
    } finally {
      await t.close();
    }
  });

  it("the dashboard's (web/src/api/schema.d.ts) is current", () => {
    expect(
      readFileSync(SCHEMA_FILE, "utf8") === expected,
      "web/src/api/schema.d.ts is stale: run npm run gen:api",
    ).toBe(true);
  });

  it("the SDK's (packages/sdk/src/schema.d.ts) is current", () => {
    expect(
      readFileSync(SDK_SCHEMA_FILE, "utf8") === expected,
      "packages/sdk/src/schema.d.ts is stale: run npm run gen:api",
    ).toBe(true);
  });
});
