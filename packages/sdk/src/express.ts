import type { NextFunction, Request, Response } from "express";
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
 * `@tollgate/sdk/express`: the Tollgate middleware for Express (tested with 5; nothing 4.17 lacks).
 *
 * @example
 * app.post(
 *   "/v1/kolekts",
 *   tollgate(client, { consume: [{ feature: "api_requests" }], quota: [{ feature: "kolekts", meter: "kolekts" }] }),
 *   (req, res) => res.status(201).json({ org: res.locals.tollgate.orgId }),
 * );
 */

declare global {
  namespace Express {
    interface Request {
      /** Set by `tollgate()` from `@tollgate/sdk/express` on the routes it guards. */
      tollgate: GateContext;
    }
    interface Locals {
      /** Set by `tollgate()` from `@tollgate/sdk/express` on the routes it guards. */
      tollgate: GateContext;
    }
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
 * Verifies the caller's org API key and runs the route's checks (see {@link GateOptions}), then calls
 * the next handler with `res.locals.tollgate` (and `req.tollgate`), or answers 401, 402, 413, 429 or 503
 * as problem+json. Once a 2xx response has been sent (not a 4xx/5xx, so not when a handler throws
 * into the error handler, nor when the client went away first) each `quota` is tracked on its meter.
 */
export function tollgate(
  client: Tollgate,
  options: GateOptions<Request> = {},
): (req: Request, res: Response, next: NextFunction) => void {
  const decide = createGate<Request>(client, options, readHeader);
  return (req, res, next) => {
    let pending: GateDecision | Promise<GateDecision>;
    try {
      pending = decide(req);
    } catch (error) {
      next(error);
      return;
    }
    if (pending instanceof Promise) pending.then((decision) => apply(decision, req, res, next), next);
    else apply(pending, req, res, next);
  };
}

function apply(decision: GateDecision, req: Request, res: Response, next: NextFunction): void {
  if (!decision.allowed) {
    const { status, headers, body } = decision.rejection;
    res.status(status).set(headers).set("content-type", PROBLEM_CONTENT_TYPE).send(JSON.stringify(body));
    return;
  }
  req.tollgate = decision.context;
  res.locals.tollgate = decision.context;
  for (const name in decision.headers) res.setHeader(name, decision.headers[name] as string);
  // Nothing to track (no quotas): no listener either, the warm path's whole cost is the decision.
  if (finishes(decision)) res.once("finish", () => decision.finish(res.statusCode));
  next();
}

function readHeader(request: Request, name: string): string | undefined {
  const value = request.headers[name];
  return typeof value === "string" ? value : value?.[0];
}
