import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { serve } from "@hono/node-server";
import { type Context, Hono } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { tollgate } from "../src/hono.js";
import { middlewareSuite } from "./middleware-suite.js";

/** `@tollgate/sdk/hono` on @hono/node-server, against a real Tollgate (middleware-suite.ts). */
middlewareSuite<Context>({
  name: "Hono",
  header: (c, name) => c.req.header(name),
  start: async (client, routes, handler) => {
    const app = new Hono();
    // Quietly, for the handler that throws on purpose (Hono's default prints the error).
    app.onError((_error, c) => c.json({ error: "internal" }, 500));
    for (const route of routes) {
      app.on(route.method, route.path, tollgate(client, route.options), (c) => {
        const { status, body } = handler(c.get("tollgate"), new URL(c.req.url).searchParams);
        return c.json(body, status as ContentfulStatusCode);
      });
    }
    const server = serve({ fetch: app.fetch, port: 0, hostname: "127.0.0.1" });
    if (!server.listening) await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    return {
      url: `http://127.0.0.1:${port}`,
      close: async () => {
        (server as import("node:http").Server).closeAllConnections();
        await new Promise((resolve) => server.close(resolve));
      },
    };
  },
});
