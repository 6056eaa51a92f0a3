import { serve } from "@hono/node-server";
import { Tollgate } from "@tollgate/sdk";
import { createApp } from "./app.js";

/**
 * `npm run example:trendit`: Trendit's sentiment API on port 4001, against a Tollgate running the
 * Trendit catalog (`TOLLGATE_CATALOG=catalogs/trendit.yaml npm start`).
 */
const apiKey = process.env.TOLLGATE_ADMIN_KEY;
if (!apiKey) {
  console.error("Set TOLLGATE_ADMIN_KEY to Tollgate's operator key.");
  process.exit(1);
}
const client = new Tollgate({ baseUrl: process.env.TOLLGATE_URL ?? "http://127.0.0.1:3000", apiKey });
const port = Number(process.env.PORT ?? 4001);
const server = serve({ fetch: createApp(client).fetch, port, hostname: "127.0.0.1" }, (info) =>
  console.log(`Trendit is listening on http://127.0.0.1:${info.port}`),
);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => server.close(() => void client.shutdown().then(() => process.exit(0))));
}
