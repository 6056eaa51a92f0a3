import fs from "node:fs";
import path from "node:path";
import type { OpenAPIHono } from "@hono/zod-openapi";
import swaggerUi from "swagger-ui-dist";
import type { AppEnv } from "../../deps.js";

/** Assets of the API explorer, served from the installed package so /docs works offline. */
const ASSETS: Record<string, string> = {
  "swagger-ui.css": "text/css; charset=utf-8",
  "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
  "swagger-ui-standalone-preset.js": "text/javascript; charset=utf-8",
  "favicon-32x32.png": "image/png",
};

const page = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Tollgate API</title>
  <link rel="icon" href="/docs/assets/favicon-32x32.png">
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="docs"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/docs/assets/swagger-ui-standalone-preset.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>`;

const init = `window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#docs", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout" });`;

/** The OpenAPI 3.1 document, generated from the same zod schemas that validate, and its explorer. */
export function mountDocs(app: OpenAPIHono<AppEnv>, version: string): void {
  app.doc31("/openapi.json", {
    openapi: "3.1.0",
    info: {
      title: "Tollgate API",
      version,
      description:
        "Entitlements, metering, quotas, rate limits and billing for SaaS products. Errors are RFC 9457 problem details with a stable `code`.",
    },
  });
  app.openAPIRegistry.registerComponent("securitySchemes", "bearer", {
    type: "http",
    scheme: "bearer",
    description: "A user's access token (from /v1/auth/login) or an org API key (tg_…).",
  });
  app.openAPIRegistry.registerComponent("securitySchemes", "operator", {
    type: "http",
    scheme: "bearer",
    description: "The operator's key (TOLLGATE_ADMIN_KEY), for the product's own backend.",
  });

  // Read once at mount; only these names are served (a Map: `constructor` is not one of them).
  const dir = swaggerUi.getAbsoluteFSPath();
  const assets = new Map(
    Object.entries(ASSETS).map(([file, type]) => [
      file,
      { type, body: new Uint8Array(fs.readFileSync(path.join(dir, file))) },
    ]),
  );
  app.get("/docs", (c) => c.html(page));
  app.get("/docs/init.js", (c) => c.body(init, 200, { "content-type": "text/javascript; charset=utf-8" }));
  app.get("/docs/assets/:file", (c) => {
    const asset = assets.get(c.req.param("file"));
    if (!asset) return c.notFound();
    return c.body(asset.body, 200, { "content-type": asset.type, "cache-control": "public, max-age=86400" });
  });
}
