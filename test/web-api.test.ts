import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { generateApiTypes, SCHEMA_FILE } from "../scripts/openapi-types.js";
import { createTestApp } from "./support/app.js";

/**
 * The dashboard's API types are generated from the served OpenAPI document; this fails when a route
 * or schema changed and `npm run gen:api` was not run, so the dashboard cannot drift from the API.
 */
describe("the dashboard's API client", () => {
  it("is generated from the current /openapi.json", async () => {
    const t = await createTestApp({ database: "pglite", redis: false });
    try {
      const document = (await t.call("GET", "/openapi.json")).body;
      const expected = await generateApiTypes(document);
      expect(
        readFileSync(SCHEMA_FILE, "utf8") === expected,
        "web/src/api/schema.d.ts is stale: run npm run gen:api",
      ).toBe(true);
    } finally {
      await t.close();
    }
  });
});
