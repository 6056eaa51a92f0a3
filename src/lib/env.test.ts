import path from "node:path";
import { describe, expect, it } from "vitest";
import { EnvError, parseEnv } from "./env.js";

const problemsOf = (source: Record<string, string>) => {
  try {
    parseEnv(source);
  } catch (error) {
    expect(error).toBeInstanceOf(EnvError);
    return (error as EnvError).problems;
  }
  throw new Error("expected the configuration to be rejected");
};

describe("parseEnv", () => {
  it("applies the spec's defaults to an empty environment", () => {
    const env = parseEnv({});
    expect(env).toMatchObject({
      port: 3000,
      host: "127.0.0.1",
      databaseUrl: undefined,
      redisUrl: undefined,
      billingProvider: "local",
      publicUrl: "http://localhost:3000",
      testClock: false,
      webhookAllowedTargets: [],
    });
    expect(env.dataDir).toBe(path.resolve(".tollgate"));
  });

  it("treats empty strings as unset", () => {
    const env = parseEnv({ PORT: "", DATABASE_URL: "", REDIS_URL: "" });
    expect(env.port).toBe(3000);
    expect(env.databaseUrl).toBeUndefined();
  });

  it("lists every bad variable at once, by name", () => {
    const problems = problemsOf({
      PORT: "eighty",
      DATABASE_URL: "mysql://localhost/db",
      REDIS_URL: "not a url",
      TOLLGATE_BILLING_PROVIDER: "paypal",
      TOLLGATE_TEST_CLOCK: "yes",
      TOLLGATE_ADMIN_KEY: "short",
    });
    expect(problems.map((p) => p.variable).sort()).toEqual(
      [
        "DATABASE_URL",
        "PORT",
        "REDIS_URL",
        "TOLLGATE_ADMIN_KEY",
        "TOLLGATE_BILLING_PROVIDER",
        "TOLLGATE_TEST_CLOCK",
      ].sort(),
    );
    expect(problems.find((p) => p.variable === "PORT")?.message).toMatch(/number.*"eighty"/);
  });

  it("never echoes secret values in its messages", () => {
    const problems = problemsOf({ TOLLGATE_ADMIN_KEY: "hunter2", DATABASE_URL: "mysql://u:pw@h/db" });
    const text = new EnvError(problems).message;
    expect(text).not.toContain("hunter2");
    expect(text).not.toContain("pw@h");
    expect(text).toContain("TOLLGATE_ADMIN_KEY");
  });

  it("rejects ports out of range", () => {
    expect(problemsOf({ PORT: "70000" })[0]?.variable).toBe("PORT");
    expect(problemsOf({ PORT: "3000.5" })[0]?.variable).toBe("PORT");
  });

  it("requires the Stripe keys when the stripe provider is chosen", () => {
    const problems = problemsOf({ TOLLGATE_BILLING_PROVIDER: "stripe" });
    expect(problems.map((p) => p.variable).sort()).toEqual(["STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"]);
    const env = parseEnv({
      TOLLGATE_BILLING_PROVIDER: "stripe",
      STRIPE_SECRET_KEY: "sk_test_123",
      STRIPE_WEBHOOK_SECRET: "whsec_abc",
    });
    expect(env.stripe).toEqual({ secretKey: "sk_test_123", webhookSecret: "whsec_abc", apiBase: undefined });
  });

  it("parses the webhook target allow-list and rejects malformed entries", () => {
    expect(
      parseEnv({ TOLLGATE_WEBHOOK_ALLOWED_TARGETS: "127.0.0.1:9000, hooks.internal" }).webhookAllowedTargets,
    ).toEqual(["127.0.0.1:9000", "hooks.internal"]);
    expect(problemsOf({ TOLLGATE_WEBHOOK_ALLOWED_TARGETS: "ok.host,http://bad/" })[0]?.message).toMatch(
      /entry 2/,
    );
  });

  it("follows PORT for the default public URL and strips a trailing slash from an explicit one", () => {
    expect(parseEnv({ PORT: "4000" }).publicUrl).toBe("http://localhost:4000");
    expect(parseEnv({ TOLLGATE_PUBLIC_URL: "https://billing.example.com/" }).publicUrl).toBe(
      "https://billing.example.com",
    );
  });

  it("accepts 1/0 and true/false for the test clock", () => {
    expect(parseEnv({ TOLLGATE_TEST_CLOCK: "1" }).testClock).toBe(true);
    expect(parseEnv({ TOLLGATE_TEST_CLOCK: "0" }).testClock).toBe(false);
    expect(parseEnv({ TOLLGATE_TEST_CLOCK: "true" }).testClock).toBe(true);
  });
});

describe("parseEnv in production", () => {
  it("requires TOLLGATE_SECRET with Postgres, and only there", () => {
    const problems = problemsOf({ NODE_ENV: "production", DATABASE_URL: "postgres://db/tollgate" });
    expect(problems.map((p) => p.variable)).toEqual(["TOLLGATE_SECRET"]);
    expect(parseEnv({ NODE_ENV: "production" }).secret).toBeUndefined(); // embedded: generated once
    expect(parseEnv({ DATABASE_URL: "postgres://db/tollgate" }).databaseUrl).toBeDefined(); // trying it out
  });

  it("refuses the test clock", () => {
    expect(() => parseEnv({ NODE_ENV: "production", TOLLGATE_TEST_CLOCK: "1" })).toThrow(
      /TOLLGATE_TEST_CLOCK/,
    );
    expect(parseEnv({ NODE_ENV: "production" }).production).toBe(true);
  });
});

describe("parseEnv: single sign-on providers", () => {
  it("reads each TOLLGATE_OIDC_<NAME>_* triple as a provider keyed by the lower-cased name", () => {
    const env = parseEnv({
      TOLLGATE_OIDC_GOOGLE_ISSUER: "https://accounts.example.com",
      TOLLGATE_OIDC_GOOGLE_CLIENT_ID: "client-1",
      TOLLGATE_OIDC_GOOGLE_CLIENT_SECRET: "s3cret",
      TOLLGATE_OIDC_Dev2_ISSUER: "http://127.0.0.1:9000",
      TOLLGATE_OIDC_Dev2_CLIENT_ID: "client-2",
      TOLLGATE_OIDC_Dev2_CLIENT_SECRET: "other",
    });
    expect(env.oidcProviders).toEqual([
      { key: "dev2", issuer: "http://127.0.0.1:9000", clientId: "client-2", clientSecret: "other" },
      { key: "google", issuer: "https://accounts.example.com", clientId: "client-1", clientSecret: "s3cret" },
    ]);
    expect(parseEnv({}).oidcProviders).toEqual([]);
  });

  it("names each missing variable of an incomplete provider, with the other problems", () => {
    const problems = problemsOf({
      PORT: "eighty",
      TOLLGATE_OIDC_ACME_ISSUER: "https://id.acme.test",
      TOLLGATE_OIDC_OKTA_CLIENT_SECRET: "hunter2",
    });
    expect(problems.map((p) => p.variable).sort()).toEqual(
      [
        "PORT",
        "TOLLGATE_OIDC_ACME_CLIENT_ID",
        "TOLLGATE_OIDC_ACME_CLIENT_SECRET",
        "TOLLGATE_OIDC_OKTA_CLIENT_ID",
        "TOLLGATE_OIDC_OKTA_ISSUER",
      ].sort(),
    );
    expect(problems.find((p) => p.variable === "TOLLGATE_OIDC_ACME_CLIENT_ID")?.message).toMatch(
      /required.*together/,
    );
    expect(JSON.stringify(problems)).not.toContain("hunter2");
  });

  it("requires the issuer to be a URL, https except on loopback", () => {
    const base = { TOLLGATE_OIDC_X_CLIENT_ID: "id", TOLLGATE_OIDC_X_CLIENT_SECRET: "secret" };
    expect(problemsOf({ ...base, TOLLGATE_OIDC_X_ISSUER: "not a url" })).toEqual([
      { variable: "TOLLGATE_OIDC_X_ISSUER", message: expect.stringMatching(/URL/) },
    ]);
    expect(problemsOf({ ...base, TOLLGATE_OIDC_X_ISSUER: "http://id.example.com" })[0]?.message).toMatch(
      /https/,
    );
    expect(parseEnv({ ...base, TOLLGATE_OIDC_X_ISSUER: "http://localhost:8080" }).oidcProviders).toHaveLength(
      1,
    );
  });

  it("rejects unknown TOLLGATE_OIDC_ variables and provider names that are not letters and digits", () => {
    const problems = problemsOf({
      TOLLGATE_OIDC_GOOGLE_SECRET: "typo",
      TOLLGATE_OIDC_MY_CORP_ISSUER: "https://id.example.com",
    });
    expect(problems.map((p) => p.variable).sort()).toEqual([
      "TOLLGATE_OIDC_GOOGLE_SECRET",
      "TOLLGATE_OIDC_MY_CORP_ISSUER",
    ]);
  });

  it("runs one worker unless told, more only with Postgres and Redis", () => {
    expect(parseEnv({}).workers).toBe(1);
    const shared = { DATABASE_URL: "postgres://h/db", REDIS_URL: "redis://h:6379" };
    expect(parseEnv({ ...shared, TOLLGATE_WORKERS: "4" }).workers).toBe(4);
    expect(parseEnv({ ...shared, TOLLGATE_WORKERS: "auto" }).workers).toBeGreaterThanOrEqual(1);
    expect(parseEnv({ TOLLGATE_WORKERS: "1" }).workers).toBe(1);
    const embedded = problemsOf({ TOLLGATE_WORKERS: "2" });
    expect(embedded.map((p) => p.variable).sort()).toEqual(["DATABASE_URL", "REDIS_URL"]);
    expect(embedded[0]?.message).toMatch(/TOLLGATE_WORKERS is above 1/);
    expect(problemsOf({ ...shared, TOLLGATE_WORKERS: "0" })[0]?.message).toMatch(/at least 1/);
    expect(problemsOf({ ...shared, TOLLGATE_WORKERS: "lots" })[0]?.message).toMatch(/number or "auto"/);
  });
});
