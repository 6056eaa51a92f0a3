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

export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      base: { service: "tollgate" },
      redact: { paths: REDACTED_PATHS, censor: "[redacted]" },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination as pino.DestinationStream | undefined,
  );
}
