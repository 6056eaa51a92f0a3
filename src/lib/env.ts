import os from "node:os";
import path from "node:path";
import { z } from "zod";

/**
 * Tollgate's configuration, parsed once at boot. This is the only module that reads `process.env`;
 * everything else receives the parsed {@link Env}. A bad value stops the server with every problem
 * listed by variable name.
 */

/** Empty strings (common in compose files and `.env` templates) mean "unset". */
const optional = <T extends z.ZodType>(schema: T) =>
  z.preprocess((value) => (value === "" ? undefined : value), schema.optional());

const urlWithProtocols = (protocols: string[], what: string) =>
  z.string().refine(
    (value) => {
      try {
        return protocols.includes(new URL(value).protocol);
      } catch {
        return false;
      }
    },
    { message: `must be a ${what} URL (${protocols.map((p) => `${p}//`).join(" or ")}…)` },
  );

const port = z.coerce
  .number({ message: "must be a number" })
  .int("must be a whole number")
  .min(1, "must be between 1 and 65535")
  .max(65535, "must be between 1 and 65535");

const flag = z
  .enum(["1", "0", "true", "false"], { message: "must be 1 or 0" })
  .transform((value) => value === "1" || value === "true");

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[a-zA-Z0-9.-]+)(:\d{1,5})?$/, "must be host or host:port");

const envSchema = z.object({
  PORT: optional(port).default(3000),
  HOST: optional(z.string().min(1)).default("127.0.0.1"),
  DATABASE_URL: optional(urlWithProtocols(["postgres:", "postgresql:"], "Postgres")),
  TOLLGATE_DATA_DIR: optional(z.string().min(1)).default("./.tollgate"),
  REDIS_URL: optional(urlWithProtocols(["redis:", "rediss:"], "Redis")),
  TOLLGATE_CATALOG: optional(z.string().min(1)),
  TOLLGATE_ADMIN_KEY: optional(z.string().min(24, "must be at least 24 characters; use a long random value")),
  TOLLGATE_SECRET: optional(z.string().min(32, "must be at least 32 characters; use a long random value")),
  TOLLGATE_BILLING_PROVIDER: optional(
    z.enum(["local", "stripe"], { message: "must be local or stripe" }),
  ).default("local"),
  STRIPE_SECRET_KEY: optional(z.string().regex(/^(sk|rk)_/, "must be a Stripe secret key (sk_… or rk_…)")),
  STRIPE_WEBHOOK_SECRET: optional(
    z.string().startsWith("whsec_", "must be a webhook signing secret (whsec_…)"),
  ),
  /** Where the Stripe SDK sends its requests; only for a local stand-in (stripe-mock, tests). */
  STRIPE_API_BASE: optional(urlWithProtocols(["http:", "https:"], "http(s)")),
  SMTP_URL: optional(urlWithProtocols(["smtp:", "smtps:"], "SMTP")),
  TOLLGATE_PUBLIC_URL: optional(urlWithProtocols(["http:", "https:"], "http(s)")),
  TOLLGATE_WEBHOOK_ALLOWED_TARGETS: optional(z.string()),
  TOLLGATE_TEST_CLOCK: optional(flag).default(false),
  /** 0: this process serves HTTP only; background jobs run in `tollgate worker` processes. */
  TOLLGATE_RUN_JOBS: optional(flag).default(true),
  /** How long one outbound webhook request may take. */
  TOLLGATE_WEBHOOK_TIMEOUT_MS: optional(
    z.coerce.number({ message: "must be a number" }).int().min(100).max(60_000),
  ).default(10_000),
  TOLLGATE_CHECK_ACK: optional(
    z.enum(["journal", "commit"], { message: "must be journal or commit" }),
  ).default("commit"),
  TOLLGATE_WORKERS: optional(
    z
      .string()
      .regex(/^(auto|\d+)$/, 'must be a whole number or "auto"')
      .refine((value) => value === "auto" || (Number(value) >= 1 && Number(value) <= 64), {
        message: "must be at least 1 and at most 64",
      }),
  ).default("1"),
  /** Set by the TOLLGATE_WORKERS primary on the workers it forks (src/cluster.ts); not for operators. */
  TOLLGATE_CLUSTER_WORKER: optional(flag).default(false),
  TOLLGATE_PLATFORM_ADMINS: optional(z.string()),
  TOLLGATE_LOG_LEVEL: optional(
    z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"], {
      message: "must be one of fatal, error, warn, info, debug, trace, silent",
    }),
  ).default("info"),
  NODE_ENV: optional(z.string()),
});

type Problem = { variable: string; message: string };

/**
 * Rules that involve several variables, checked on the raw values so they are reported together
 * with every single-variable problem rather than only once those are fixed.
 */
function crossChecks(source: Record<string, string | undefined>): Problem[] {
  const set = (name: string) => source[name] !== undefined && source[name] !== "";
  const problems: Problem[] = [];
  if (source.TOLLGATE_BILLING_PROVIDER === "stripe") {
    for (const variable of ["STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"]) {
      if (!set(variable))
        problems.push({ variable, message: "is required when TOLLGATE_BILLING_PROVIDER=stripe" });
    }
  }
  if (source.NODE_ENV === "production" && set("DATABASE_URL") && !set("TOLLGATE_SECRET")) {
    problems.push({
      variable: "TOLLGATE_SECRET",
      message:
        "is required in production with DATABASE_URL: a generated secret would be stored beside the data it protects",
    });
  }
  if (set("TOLLGATE_WORKERS") && source.TOLLGATE_WORKERS !== "1") {
    // Workers share nothing in memory: the database and the counters must be shared services.
    for (const variable of ["DATABASE_URL", "REDIS_URL"]) {
      if (!set(variable))
        problems.push({
          variable,
          message: "is required when TOLLGATE_WORKERS is above 1: the workers share Postgres and Redis",
        });
    }
  }
  if (["1", "true"].includes(source.TOLLGATE_TEST_CLOCK ?? "") && source.NODE_ENV === "production") {
    problems.push({
      variable: "TOLLGATE_TEST_CLOCK",
      message: "must not be on with NODE_ENV=production: it lets the operator move time for billing",
    });
  }
  (source.TOLLGATE_WEBHOOK_ALLOWED_TARGETS ?? "")
    .split(",")
    .map((entry) => entry.trim())
    .forEach((entry, index, all) => {
      if (all.length === 1 && entry === "") return;
      if (!hostPort.safeParse(entry).success) {
        problems.push({
          variable: "TOLLGATE_WEBHOOK_ALLOWED_TARGETS",
          message: `entry ${index + 1} ("${entry}") must be host or host:port`,
        });
      }
    });
  return problems;
}

/** One OpenID Connect provider for single sign-on, from `TOLLGATE_OIDC_<NAME>_*`. */
export interface OidcProvider {
  /** The lower-cased NAME: the `:provider` in `/v1/auth/oauth/:provider/start`. */
  key: string;
  issuer: string;
  clientId: string;
  clientSecret: string;
}

const OIDC_VARIABLE = /^TOLLGATE_OIDC_(.+)_(ISSUER|CLIENT_ID|CLIENT_SECRET)$/;
const OIDC_FIELDS = ["ISSUER", "CLIENT_ID", "CLIENT_SECRET"] as const;
const LOOPBACK_HOSTS = new Set(["localhost", "127.0.0.1", "[::1]"]);

/** An issuer must be https; plain http only on loopback (a provider on the developer's machine). */
function issuerProblem(value: string): string | undefined {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return "must be a URL (https://…)";
  }
  if (url.protocol === "https:") return undefined;
  if (url.protocol === "http:" && LOOPBACK_HOSTS.has(url.hostname)) return undefined;
  return "must be an https:// URL (http:// only on localhost or 127.0.0.1)";
}

/**
 * Single sign-on providers: `TOLLGATE_OIDC_<NAME>_ISSUER`, `_CLIENT_ID` and `_CLIENT_SECRET`, all
 * three together. Any other `TOLLGATE_OIDC_*` variable is a mistake worth stopping for (a typo would
 * otherwise silently disable a provider).
 */
function oidcProviders(source: Record<string, string | undefined>): {
  providers: OidcProvider[];
  problems: Problem[];
} {
  const problems: Problem[] = [];
  const found = new Map<
    string,
    { name: string; values: Partial<Record<(typeof OIDC_FIELDS)[number], string>> }
  >();
  for (const [variable, raw] of Object.entries(source)) {
    if (!variable.startsWith("TOLLGATE_OIDC_") || raw === undefined || raw === "") continue;
    const match = OIDC_VARIABLE.exec(variable);
    if (!match) {
      problems.push({
        variable,
        message: "is not a known setting: use TOLLGATE_OIDC_<NAME>_ISSUER, _CLIENT_ID or _CLIENT_SECRET",
      });
      continue;
    }
    const name = match[1] ?? "";
    const field = match[2] as (typeof OIDC_FIELDS)[number];
    if (!/^[A-Za-z0-9]+$/.test(name)) {
      problems.push({ variable, message: "names a provider with characters other than letters and digits" });
      continue;
    }
    const key = name.toLowerCase();
    const entry = found.get(key) ?? { name, values: {} };
    if (entry.values[field] !== undefined) {
      problems.push({ variable, message: `sets the ${key} provider's ${field} a second time` });
      continue;
    }
    entry.values[field] = raw.trim();
    found.set(key, entry);
  }
  const providers: OidcProvider[] = [];
  for (const [key, { name, values }] of [...found].sort(([a], [b]) => a.localeCompare(b))) {
    const missing = OIDC_FIELDS.filter((field) => !values[field]);
    for (const field of missing) {
      problems.push({
        variable: `TOLLGATE_OIDC_${name}_${field}`,
        message: `is required: the ${key} provider needs ISSUER, CLIENT_ID and CLIENT_SECRET together`,
      });
    }
    const issuerIssue = values.ISSUER ? issuerProblem(values.ISSUER) : undefined;
    if (issuerIssue) problems.push({ variable: `TOLLGATE_OIDC_${name}_ISSUER`, message: issuerIssue });
    if (missing.length > 0 || issuerIssue || !values.ISSUER || !values.CLIENT_ID || !values.CLIENT_SECRET)
      continue;
    providers.push({
      key,
      issuer: values.ISSUER,
      clientId: values.CLIENT_ID,
      clientSecret: values.CLIENT_SECRET,
    });
  }
  return { providers, problems };
}

export interface Env {
  port: number;
  host: string;
  databaseUrl: string | undefined;
  dataDir: string;
  redisUrl: string | undefined;
  catalogPath: string | undefined;
  adminKey: string | undefined;
  secret: string | undefined;
  billingProvider: "local" | "stripe";
  stripe: { secretKey: string; webhookSecret: string; apiBase: string | undefined } | undefined;
  smtpUrl: string | undefined;
  publicUrl: string;
  webhookAllowedTargets: string[];
  testClock: boolean;
  /** Run background jobs (and their schedules) in this process (TOLLGATE_RUN_JOBS, default on). */
  runJobs: boolean;
  webhookTimeoutMs: number;
  /**
   * When a consuming check is acknowledged, with Redis: once journaled in Redis and in the process's
   * memory, Postgres written behind ("journal"); or once committed to Postgres ("commit").
   * Without Redis it is always "commit".
   */
  checkAck: "journal" | "commit";
  /**
   * Server processes `tollgate start` runs (node:cluster, sharing the port): one per core to use a
   * machine's cores. Above 1 only with Postgres and Redis. "auto" is the machine's parallelism.
   */
  workers: number;
  /** This process is a worker forked by the TOLLGATE_WORKERS primary. */
  clusterWorker: boolean;
  /** E-mail addresses (lower-cased) of the platform's admin users. */
  platformAdmins: string[];
  logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
  production: boolean;
  /** Single sign-on providers, by key; empty when none is configured. */
  oidcProviders: OidcProvider[];
}

export class EnvError extends Error {
  constructor(readonly problems: Problem[]) {
    super(
      `Invalid configuration:\n${problems.map((p) => `  ${p.variable} ${p.message}`).join("\n")}\n` +
        "Fix the environment and start again (see docs/operations.md for every variable).",
    );
    this.name = "EnvError";
  }
}

/** Parses an environment (by default `process.env`) into {@link Env}, or throws {@link EnvError}. */
export function parseEnv(source: Record<string, string | undefined> = process.env): Env {
  const result = envSchema.safeParse(source);
  const problems: Problem[] = result.success
    ? []
    : result.error.issues.map((issue) => {
        const variable = String(issue.path[0] ?? "environment");
        const raw = source[variable];
        const shown = raw === undefined || /KEY|SECRET|URL/.test(variable) ? "" : ` (got "${raw}")`;
        return { variable, message: `${issue.message}${shown}` };
      });
  problems.push(...crossChecks(source));
  const oidc = oidcProviders(source);
  problems.push(...oidc.problems);
  if (!result.success || problems.length > 0) throw new EnvError(problems);
  const e = result.data;
  return {
    port: e.PORT,
    host: e.HOST,
    databaseUrl: e.DATABASE_URL,
    dataDir: path.resolve(e.TOLLGATE_DATA_DIR),
    redisUrl: e.REDIS_URL,
    catalogPath: e.TOLLGATE_CATALOG ? path.resolve(e.TOLLGATE_CATALOG) : undefined,
    adminKey: e.TOLLGATE_ADMIN_KEY,
    secret: e.TOLLGATE_SECRET,
    billingProvider: e.TOLLGATE_BILLING_PROVIDER,
    stripe:
      e.STRIPE_SECRET_KEY && e.STRIPE_WEBHOOK_SECRET
        ? {
            secretKey: e.STRIPE_SECRET_KEY,
            webhookSecret: e.STRIPE_WEBHOOK_SECRET,
            apiBase: e.STRIPE_API_BASE,
          }
        : undefined,
    smtpUrl: e.SMTP_URL,
    // The spec's default is http://localhost:3000; following PORT keeps links right when PORT changes.
    publicUrl: (e.TOLLGATE_PUBLIC_URL ?? `http://localhost:${e.PORT}`).replace(/\/+$/, ""),
    webhookAllowedTargets: (e.TOLLGATE_WEBHOOK_ALLOWED_TARGETS ?? "")
      .split(",")
      .map((s) => s.trim().toLowerCase())
      .filter(Boolean),
    testClock: e.TOLLGATE_TEST_CLOCK,
    runJobs: e.TOLLGATE_RUN_JOBS,
    webhookTimeoutMs: e.TOLLGATE_WEBHOOK_TIMEOUT_MS,
    checkAck: e.TOLLGATE_CHECK_ACK,
    workers: e.TOLLGATE_WORKERS === "auto" ? os.availableParallelism() : Number(e.TOLLGATE_WORKERS),
    clusterWorker: e.TOLLGATE_CLUSTER_WORKER,
    platformAdmins: (e.TOLLGATE_PLATFORM_ADMINS ?? "")
      .split(",")
      .map((s) => s.trim().toLowerCase())
      .filter(Boolean),
    logLevel: e.TOLLGATE_LOG_LEVEL,
    production: e.NODE_ENV === "production",
    oidcProviders: oidc.providers,
  };
}
