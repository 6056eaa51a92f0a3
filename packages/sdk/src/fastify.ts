import type { FastifyReply, FastifyRequest } from "fastify";
import type { Tollgate } from "./client.js";
import {
  createGate,
  finishes,
  type GateContext,
  type GateDecision,
  type GateOptions,
  PROBLEM_CONTENT_TYPE,
} from "./gate.js";

/**
 * `@tollgate/sdk/fastify`: the Tollgate middleware for Fastify (tested with 5; the hook API is 4's too), as a `preHandler` hook
 * (callback style: the warm path answers without a promise).
 *
 * @example
 * app.post(
 *   "/v1/kolekts",
 *   { preHandler: tollgate(client, { consume: [{ feature: "api_requests" }], quota: [{ feature: "kolekts", meter: "kolekts" }] }) },
 *   async (request, reply) => reply.code(201).send({ org: request.tollgate.orgId }),
 * );
 */

declare module "fastify" {
  interface FastifyRequest {
    /** Set by `tollgate()` from `@tollgate/sdk/fastify` on the routes it guards. */
    tollgate: GateContext;
  }
}

export type {
  GateContext,
  GateOptions,
  GateProblem,
  GateQuota,
  GateRejection,
} from "./gate.js";

/**
 * A `preHandler` hook: verifies the caller's org API key and runs the route's checks (see
 * {@link GateOptions}), then lets the handler run with `request.tollgate`, or answers 401, 402, 413,
 * 429 or 503 as problem+json. Once a 2xx response has been sent (not a 4xx/5xx, so not when the handler
 * throws, nor when the client went away first) each `quota` is tracked on its meter.
 */
export function tollgate(
  client: Tollgate,
  options: GateOptions<FastifyRequest> = {},
): (request: FastifyRequest, reply: FastifyReply, done: (error?: Error) => void) => void {
  const decide = createGate<FastifyRequest>(client, options, readHeader);
  return function tollgatePreHandler(request, reply, done) {
    let pending: GateDecision | Promise<GateDecision>;
    try {
      pending = decide(request);
    } catch (error) {
      done(error as Error);
      return;
    }
    if (pending instanceof Promise) {
      pending.then((decision) => apply(decision, request, reply, done), done);
    } else apply(pending, request, reply, done);
  };
}

function apply(
  decision: GateDecision,
  request: FastifyRequest,
  reply: FastifyReply,
  done: (error?: Error) => void,
): void {
  if (!decision.allowed) {
    // Answered here: the route's handler does not run (and done() is not called).
    const { status, headers, body } = decision.rejection;
    reply
      .code(status)
      .headers(headers)
      .header("content-type", PROBLEM_CONTENT_TYPE)
      .send(JSON.stringify(body));
    return;
  }
  request.tollgate = decision.context;
  for (const name in decision.headers) reply.header(name, decision.headers[name]);
  // Nothing to track (no quotas): no listener either, the warm path's whole cost is the decision.
  if (finishes(decision)) reply.raw.once("finish", () => decision.finish(reply.raw.statusCode));
  done();
}

function readHeader(request: FastifyRequest, name: string): string | undefined {
  const value = request.headers[name];
  return typeof value === "string" ? value : value?.[0];
}
