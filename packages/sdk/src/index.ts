/**
 * `@tollgate/sdk`: the client a product's backend uses to talk to Tollgate.
 *
 * - {@link Tollgate} — `check()`, `checkCached()`, `track()`, `verifyKey()`, `verifyKeyCached()`,
 *   `handleWebhook()`, and `api`, the whole API typed from Tollgate's OpenAPI document.
 * - The middleware's framework-free core, {@link createGate} (the adapters are `@tollgate/sdk/hono`,
 *   `/express` and `/fastify`; none of those frameworks is imported here).
 * - Errors: {@link TollgateError} (4xx, thrown), {@link TollgateUnavailableError} (Tollgate not
 *   reachable: resolved by `failMode`, never thrown by `check`/`verifyKey`), {@link TollgateWebhookError}.
 *
 * Only web-standard APIs (fetch, AbortSignal, Web Crypto, setTimeout): Node 20+ and edge runtimes.
 */
export { Tollgate } from "./client.js";
export {
  type Problem,
  TollgateError,
  TollgateUnavailableError,
  TollgateWebhookError,
  type UnavailableKind,
} from "./errors.js";
export {
  createGate,
  type GateContext,
  type GateDecision,
  type GateOptions,
  type GateProblem,
  type GateQuota,
  type GateRejection,
  type HeaderReader,
  MAX_COUNT_UNITS,
} from "./gate.js";
export type { FetchLike } from "./http.js";
export type { FlushResult, TrackStats } from "./tracker.js";
export type {
  CheckOptions,
  CheckResult,
  CheckSource,
  components,
  DenialReason,
  FailMode,
  FeatureRequest,
  FeatureType,
  InvalidKey,
  KeyVerification,
  MultiCheckResult,
  paths,
  RateHeaders,
  Schemas,
  ServerCheckResult,
  TollgateOptions,
  TrackEvent,
  TrackOptions,
  TrackProblem,
  UsageEvent,
  ValidKey,
  VerifyKeyOptions,
} from "./types.js";
export {
  verifyWebhook,
  WEBHOOK_EVENT_TYPES,
  type WebhookEvent,
  type WebhookEventType,
  type WebhookHeaders,
} from "./webhooks.js";
