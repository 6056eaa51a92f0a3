import type { Tollgate } from "@tollgate/sdk";
import { tollgate } from "@tollgate/sdk/hono";
import { Hono, type MiddlewareHandler } from "hono";
import { z } from "zod";
import { sentiment } from "./sentiment.js";

/**
 * Trendit's batch sentiment endpoint: one API call, and one unit of the monthly sentiment quota
 * per text in the batch. Both are checked before the work (the whole batch must fit) and counted
 * only once the answer is ready.
 */

const BatchRequest = z.strictObject({
  texts: z.array(z.string().max(10_000, "is longer than 10,000 characters")).min(1, "is empty").max(100),
});
type Env = { Variables: { batch: z.infer<typeof BatchRequest> } };

const validBatch: MiddlewareHandler<Env> = async (c, next) => {
  const parsed = BatchRequest.safeParse(await c.req.json().catch(() => undefined));
  if (!parsed.success) {
    const errors = parsed.error.issues.map((i) => ({
      field: i.path.join(".") || "body",
      message: i.message,
    }));
    return c.body(
      JSON.stringify({
        type: "about:blank",
        title: "Validation failed",
        status: 400,
        code: "validation_failed",
        errors,
      }),
      400,
      { "content-type": "application/problem+json" },
    );
  }
  c.set("batch", parsed.data);
  await next();
};

export function createApp(client: Tollgate) {
  const app = new Hono<Env>();
  app.post(
    "/v1/sentiment",
    validBatch,
    tollgate(client, {
      quota: [
        { feature: "api_calls", meter: "api_calls" },
        {
          feature: "sentiment_analyses",
          meter: "sentiment_analyses",
          amount: (c) => c.get("batch").texts.length,
        },
      ],
    }),
    (c) => c.json({ data: c.get("batch").texts.map((text) => ({ text, ...sentiment(text) })) }),
  );
  return app;
}
