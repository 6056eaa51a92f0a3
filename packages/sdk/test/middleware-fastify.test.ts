import type { AddressInfo } from "node:net";
import Fastify, { type FastifyRequest } from "fastify";
import { tollgate } from "../src/fastify.js";
import { middlewareSuite } from "./middleware-suite.js";

/** `@tollgate/sdk/fastify` as a route's preHandler on Fastify 5, against a real Tollgate (middleware-suite.ts). */
middlewareSuite<FastifyRequest>({
  name: "Fastify",
  header: (request, name) => {
    const value = request.headers[name];
    return Array.isArray(value) ? value[0] : value;
  },
  start: async (client, routes, handler) => {
    const app = Fastify();
    for (const route of routes) {
      app.route({
        method: route.method,
        url: route.path,
        preHandler: tollgate(client, route.options),
        handler: async (request, reply) => {
          const query = new URL(request.url, "http://localhost").searchParams;
          const { status, body } = handler(request.tollgate, query);
          return reply.code(status).send(body);
        },
      });
    }
    await app.listen({ port: 0, host: "127.0.0.1" });
    const { port } = app.server.address() as AddressInfo;
    return {
      url: `http://127.0.0.1:${port}`,
      close: async () => {
        app.server.closeAllConnections();
        await app.close();
      },
    };
  },
});
