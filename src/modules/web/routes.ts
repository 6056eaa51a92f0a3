import { existsSync, readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import path from "node:path";
import type { OpenAPIHono } from "@hono/zod-openapi";
import type { Context } from "hono";
import type { AppEnv } from "../../deps.js";

/**
 * The dashboard: the single-page app in web/, built into dist/web by `npm run build`, served at the
 * paths it owns. Its hashed assets are cached for good; its page never is (a deploy takes effect on
 * the next load). Paths outside the list below stay the API's (problem+json 404s and all).
 */

/** Pages of the single-page app (and links in e-mails that land on it). */
const PAGES = [
  "/",
  "/login",
  "/signup",
  "/pricing",
  "/billing",
  "/webhooks",
  "/verify-email",
  "/reset-password",
  "/forgot-password",
];
const PAGE_PREFIXES = ["/dashboard", "/invitations/"];

const TYPES: Record<string, string> = {
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".woff2": "font/woff2",
};

/** dist/web next to the compiled server (dist/modules/web → dist/web), or beside the sources. */
function webRoot(): string | undefined {
  const here = import.meta.dirname;
  for (const candidate of [path.resolve(here, "../../web"), path.resolve(here, "../../../dist/web")]) {
    if (existsSync(path.join(candidate, "index.html"))) return candidate;
  }
  return undefined;
}

const NOT_BUILT = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Dashboard not built</title></head>
<body><main><h1>The dashboard is not built</h1><p>Run <code>npm run build</code> (<code>npm start</code> does it), then reload.</p></main></body></html>`;

export function mountWeb(app: OpenAPIHono<AppEnv>): void {
  const root = webRoot();
  const index = root ? readFileSync(path.join(root, "index.html"), "utf8") : undefined;
  const assets = root ? path.join(root, "assets") : undefined;

  app.get("/assets/:file", async (c) => {
    const file = c.req.param("file");
    const type = TYPES[path.extname(file)];
    // Only plain file names the build wrote: no separators, no dot files, known types.
    if (!assets || !type || !/^[\w.-]+$/.test(file) || file.startsWith(".")) return c.notFound();
    const body = await readFile(path.join(assets, file)).catch(() => undefined);
    if (!body) return c.notFound();
    return c.body(body, 200, {
      "content-type": type,
      "cache-control": "public, max-age=31536000, immutable",
    });
  });

  const page = (c: Context<AppEnv>) =>
    c.html(index ?? NOT_BUILT, index ? 200 : 503, {
      "cache-control": "no-cache",
      "content-security-policy":
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
      "x-content-type-options": "nosniff",
      "referrer-policy": "same-origin",
    });
  for (const pagePath of PAGES) app.get(pagePath, page);
  for (const prefix of PAGE_PREFIXES) {
    app.get(prefix.endsWith("/") ? `${prefix}*` : prefix, page);
    if (!prefix.endsWith("/")) app.get(`${prefix}/*`, page);
  }
}
