import type { Tollgate } from "@tollgate/sdk";
import { tollgate } from "@tollgate/sdk/hono";
import { Hono, type MiddlewareHandler } from "hono";
import { z } from "zod";
import { formatThread, TEMPLATES, THREADS_LIMIT, templateByKey } from "./format.js";

/**
 * Kolekt's HTTP API: formats long text into Threads posts. Every route takes the customer's org
 * API key (`Authorization: Bearer tg_…`); Tollgate's middleware verifies it, enforces the plan
 * (requests per minute, kolekts per month, premium templates) and meters each thread formatted.
 */

const FormatRequest = z.strictObject({
  text: z.string().trim().min(1, "is empty").max(50_000, "is longer than 50,000 characters"),
  template: z.string().default("numbered"),
});
type FormatInput = z.infer<typeof FormatRequest>;

type Env = { Variables: { input: FormatInput } };

const problem = (status: number, code: string, title: string, detail: string, extra: object = {}) =>
  new Response(JSON.stringify({ type: `about:blank`, title, status, code, detail, ...extra }), {
    status,
    headers: { "content-type": "application/problem+json" },
  });

/** The body, validated before anything is checked or counted: bad input costs the customer nothing. */
const validFormatRequest: MiddlewareHandler<Env> = async (c, next) => {
  const raw = await c.req.json().catch(() => undefined);
  if (raw === undefined)
    return problem(400, "validation_failed", "Validation failed", "The body must be JSON.");
  const parsed = FormatRequest.safeParse(raw);
  if (!parsed.success) {
    const errors = parsed.error.issues.map((i) => ({
      field: i.path.join(".") || "body",
      message: i.message,
    }));
    return problem(400, "validation_failed", "Validation failed", "The request has errors.", { errors });
  }
  if (!templateByKey(parsed.data.template)) {
    const known = TEMPLATES.map((t) => t.key).join(", ");
    return problem(400, "validation_failed", "Validation failed", `No template ${parsed.data.template}.`, {
      errors: [{ field: "template", message: `must be one of ${known}` }],
    });
  }
  c.set("input", parsed.data);
  await next();
};

export function createApp(client: Tollgate) {
  const app = new Hono<Env>();

  app.get("/", (c) =>
    c.json({
      name: "Kolekt",
      routes: {
        "GET /v1/templates": "the templates, and which ones your plan includes",
        "POST /v1/format": `{text, template?}: the text as a thread of posts of at most ${THREADS_LIMIT} characters`,
      },
    }),
  );

  // Only the key: listing templates is free, and premium ones show whether the plan has them.
  app.get("/v1/templates", tollgate(client, {}), async (c) => {
    const { orgId } = c.get("tollgate");
    const premium = await client.check(orgId, "premium_templates", { consume: false });
    return c.json({
      data: TEMPLATES.map((t) => ({
        key: t.key,
        name: t.name,
        premium: t.premium,
        available: !t.premium || premium.allowed,
      })),
    });
  });

  app.post(
    "/v1/format",
    validFormatRequest,
    tollgate(client, {
      // Every API call counts against the plan's requests per minute, allowed or not by the rest.
      consume: [{ feature: "api_requests" }],
      // One kolekt per thread: checked first, counted only once the thread is made.
      quota: [{ feature: "kolekts", meter: "kolekts" }],
      // Premium templates need a plan that has them.
      require: (c) => (templateByKey(c.get("input").template)?.premium ? ["premium_templates"] : []),
    }),
    (c) => {
      const { text, template } = c.get("input");
      const chosen = templateByKey(template);
      if (!chosen) throw new Error(`template ${template} passed validation but does not exist`);
      const thread = formatThread(text, chosen);
      return c.json({ template: thread.template, count: thread.posts.length, posts: thread.posts });
    },
  );

  return app;
}
