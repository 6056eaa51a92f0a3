import { once } from "node:events";
import type { AddressInfo } from "node:net";
import express, { type Request } from "express";
import { expect } from "vitest";
import { tollgate } from "../src/express.js";
import { middlewareSuite } from "./middleware-suite.js";

/** `@tollgate/sdk/express` on Express 5, against a real Tollgate (middleware-suite.ts). */
middlewareSuite<Request>({
  name: "Express",
  header: (req, name) => req.get(name),
  start: async (client, routes, handler) => {
    const app = express();
    // No stack traces printed for the handler that throws on purpose.
    app.set("env", "test");
    for (const route of routes) {
      const method = route.method === "GET" ? "get" : "post";
      app[method](route.path, tollgate(client, route.options), (req, res) => {
        expect(req.tollgate).toBe(res.locals.tollgate);
        const query = new URL(req.originalUrl, "http://localhost").searchParams;
        const { status, body } = handler(res.locals.tollgate, query);
        res.status(status).json(body);
      });
    }
    const server = app.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    return {
      url: `http://127.0.0.1:${port}`,
      close: async () => {
        server.closeAllConnections();
        await new Promise((resolve) => server.close(resolve));
      },
    };
  },
});
