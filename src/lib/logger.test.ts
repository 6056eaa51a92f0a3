import { describe, expect, it } from "vitest";
import { LogCapture } from "../../test/support/app.js";
import { createLogger } from "./logger.js";

describe("logger", () => {
  it("logs a failed query's SQL and cause but not its parameters", () => {
    const capture = new LogCapture();
    const logger = createLogger("info", capture);
    // The shape of Drizzle's DrizzleQueryError: parameters in the message and in `params`.
    const error = Object.assign(
      new Error(
        'Failed query: insert into "emails" ("id", "text") values ($1, $2)\nparams: eml_1,Reset: https://x/reset?token=SECRET123',
      ),
      {
        params: ["eml_1", "Reset: https://x/reset?token=SECRET123"],
        cause: new Error("connection terminated"),
      },
    );
    logger.error({ err: error }, "boom");
    expect(capture.text).toContain('insert into \\"emails\\"');
    expect(capture.text).toContain("connection terminated");
    expect(capture.text).not.toContain("SECRET123");
  });

  it("scrubs a failed query's parameters from an error logged as its message string", () => {
    const capture = new LogCapture();
    const message =
      'Failed query: select "id" from "api_keys" where "key_hash" = $1\nparams: 9f86d081884c7d65SECRETHASH';
    createLogger("info", capture).warn({ err: message }, "lookup failed");
    expect(capture.text).toContain("api_keys");
    expect(capture.text).not.toContain("SECRETHASH");
  });

  it("redacts secrets by field name wherever they sit", () => {
    const capture = new LogCapture();
    createLogger("info", capture).info({ body: { password: "hunter22", refresh_token: "tgr_abc" } }, "x");
    expect(capture.text).not.toContain("hunter22");
    expect(capture.text).not.toContain("tgr_abc");
  });
});
