import { type Logger, pino } from "pino";

export type { Logger };

/**
 * Structured JSON logs. Anything that could carry a secret is redacted by path, wherever it sits in
 * the logged object, so a careless `log.info({ req })` cannot leak a key, token or password.
 */
export const REDACTED_PATHS = [
  "password",
  "*.password",
  "new_password",
  "*.new_password",
  "token",
  "*.token",
  "access_token",
  "*.access_token",
  "refresh_token",
  "*.refresh_token",
  "secret",
  "*.secret",
  "key",
  "*.key",
  "api_key",
  "*.api_key",
  "authorization",
  "*.authorization",
  "*.headers.authorization",
  "*.headers.cookie",
  "cookie",
  "*.cookie",
  "card_number",
  "*.card_number",
  "databaseUrl",
  "*.databaseUrl",
  "redisUrl",
  "*.redisUrl",
  "smtpUrl",
  "*.smtpUrl",
  "adminKey",
  "*.adminKey",
  "stripe",
  "*.stripe",
];

/**
 * Errors are logged without the values of the queries that failed: Drizzle puts a failed query's
 * parameters (which may be token hashes, e-mail bodies, personal data) in the message and in
 * `params`. The SQL text, the driver's own error and the stack are kept.
 */
export function serializeError(error: unknown): unknown {
  // Many call sites log `err: error.message`: a string gets the same scrubbing as an Error.
  if (typeof error === "string") return scrubText(error);
  if (!(error instanceof Error)) return error;
  const serialized = pino.stdSerializers.err(error) as unknown as Record<string, unknown>;
  return scrub(serialized);
}

const scrubText = (text: string) => text.replace(/\nparams: [\s\S]*?(?=\n {4}at |$)/, "\nparams: [redacted]");

function scrub(value: Record<string, unknown>): Record<string, unknown> {
  const { params: _params, ...rest } = value;
  for (const key of ["message", "stack"] as const) {
    if (typeof rest[key] === "string") rest[key] = scrubText(rest[key] as string);
  }
  if (rest.cause && typeof rest.cause === "object") rest.cause = scrub(rest.cause as Record<string, unknown>);
  return rest;
}

export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      serializers: { err: serializeError },
      base: { service: "tollgate" },
      redact: { paths: REDACTED_PATHS, censor: "[redacted]" },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination as pino.DestinationStream | undefined,
  );
}
