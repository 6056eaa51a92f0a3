import { createRoute, z } from "@hono/zod-openapi";
import { createRouter, errorResponses, jsonBody, jsonResponse } from "../../lib/http.js";
import { requireOperator } from "../operator/auth.js";

const ClockState = z
  .object({
    now: z.iso.datetime().openapi({ example: "2026-11-23T18:00:00.000Z" }),
    frozen: z.literal(true).openapi({ description: "The test clock only moves when advanced." }),
  })
  .openapi("TestClock");

const AdvanceRequest = z
  .strictObject({
    to: z.iso
      .datetime({ offset: true })
      .openapi({ example: "2026-12-23T18:00:00Z", description: "The new now; must be later." }),
  })
  .openapi("TestClockAdvance");

const AdvanceResponse = z
  .object({
    previous: z.iso.datetime(),
    now: z.iso.datetime(),
    ran: z.array(z.object({ name: z.string(), result: z.unknown() })),
  })
  .openapi("TestClockAdvanced");

const security = [{ operator: [] }];

/** Test clock endpoints; mounted only when TOLLGATE_TEST_CLOCK=1. */
export function testClockRoutes() {
  const router = createRouter();
  router.use("/v1/test-clock", requireOperator);
  router.use("/v1/test-clock/*", requireOperator);

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/test-clock",
      tags: ["Test clock"],
      summary: "The test clock's current time",
      security,
      responses: { 200: jsonResponse(ClockState, "The current test time"), ...errorResponses(401) },
    }),
    (c) => {
      const clock = c.get("deps").clock;
      return c.json({ now: clock.now().toISOString(), frozen: true as const }, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/test-clock/advance",
      tags: ["Test clock"],
      summary: "Move time forward and run everything that came due",
      description:
        "Moves the server's notion of now forward (for every process sharing the database) and runs what came due: renewals, invoices, dunning, retention, expiry and queued jobs.",
      security,
      request: { body: jsonBody(AdvanceRequest) },
      responses: { 200: jsonResponse(AdvanceResponse, "The clock moved"), ...errorResponses(400, 401) },
    }),
    async (c) => {
      const { to } = c.req.valid("json");
      const service = c.get("deps").testClock;
      if (!service) throw new Error("test clock routes mounted without a test clock");
      const result = await service.advance(new Date(to));
      return c.json(
        { previous: result.previous.toISOString(), now: result.now.toISOString(), ran: result.ran },
        200,
      );
    },
  );
  return router;
}
