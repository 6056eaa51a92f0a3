import { and, eq, isNull } from "drizzle-orm";
import * as client from "openid-client";
import { identities, memberships, recoveryCodes, refreshTokens, users } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { decrypt, deriveKey, encrypt, safeEqual, sha256Hex } from "../../lib/crypto.js";
import type { OidcProvider } from "../../lib/env.js";
import { AppError } from "../../lib/errors.js";
import { recordAudit, recordUserAudit } from "../audit/service.js";
import { Email } from "./schemas.js";
import { createAccount } from "./service.js";
import { startSession } from "./sessions.js";

/**
 * Single sign-on with any OpenID Connect provider: the authorization code flow with PKCE (S256),
 * state and nonce.
 *
 * The flow's secrets (PKCE verifier, state, nonce, where to go afterwards) travel in one cookie,
 * sealed with AES-256-GCM under a key derived for this purpose alone (authenticated: a changed byte
 * fails to open), HttpOnly, SameSite=Lax, scoped to /v1/auth/oauth and valid for ten minutes. The
 * callback accepts a state once: it is claimed in the counter store (Redis across processes) before
 * the code is exchanged, so a replayed callback is refused even within the ten minutes.
 */

export const OAUTH_COOKIE = "tg_oauth";
export const OAUTH_COOKIE_PATH = "/v1/auth/oauth";
export const OAUTH_FLOW_SECONDS = 600;

/** What the start of a sign-in leaves for its callback. */
export interface PendingSignIn {
  provider: string;
  state: string;
  nonce: string;
  verifier: string;
  redirectTo: string | null;
  expiresAtMs: number;
}

const flowKey = (deps: Deps) => deriveKey(deps.secrets.secret, "oauth-state");

export function sealPendingSignIn(deps: Deps, pending: PendingSignIn): string {
  return encrypt(flowKey(deps), JSON.stringify(pending));
}

const restart = (detail: string) =>
  new AppError("validation_failed", `${detail} Start signing in again.`, {
    errors: [{ field: "state", message: detail, code: "invalid_state", location: "query" }],
  });

/** Opens the cookie and checks it belongs to this provider and has not expired; 400 otherwise. */
export function openPendingSignIn(deps: Deps, provider: string, sealed: string | undefined): PendingSignIn {
  if (!sealed) throw restart("This sign-in was not started here, or its cookie has expired.");
  let pending: PendingSignIn;
  try {
    pending = JSON.parse(decrypt(flowKey(deps), sealed)) as PendingSignIn;
  } catch {
    throw restart("This sign-in's cookie is not valid.");
  }
  if (pending.provider !== provider) throw restart("This sign-in was started with another provider.");
  if (pending.expiresAtMs <= deps.clock.nowMs()) throw restart("This sign-in has expired.");
  return pending;
}

/**
 * Claims a state for one use, atomically (in Redis when configured, so across processes): a
 * replayed callback loses. The claim outlives the cookie that carries the state.
 */
export async function claimState(deps: Deps, state: string): Promise<void> {
  const key = `oauth:state:${sha256Hex(state)}`;
  await deps.counters.seed(key, 0, OAUTH_FLOW_SECONDS * 2);
  const result = await deps.counters.apply(
    [{ kind: "counter", key, amount: 1, limit: 1, ttlSeconds: OAUTH_FLOW_SECONDS * 2 }],
    deps.clock.nowMs(),
  );
  if (result.status !== "done" || !result.allowed) throw restart("This sign-in was already completed.");
}

export function findProvider(deps: Deps, key: string): OidcProvider {
  const provider = deps.env.oidcProviders.find((p) => p.key === key);
  if (!provider) throw new AppError("not_found", `No sign-in provider ${key}.`);
  return provider;
}

export const callbackUrl = (deps: Deps, provider: string) =>
  `${deps.env.publicUrl}/v1/auth/oauth/${provider}/callback`;

/**
 * `redirect_to` must stay on this site: a path starting with a single slash (no scheme, no host,
 * no `//` or backslash tricks, no fragment: the tokens go there).
 */
export function safeRedirectPath(deps: Deps, value: string): string | undefined {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point
  if (!value.startsWith("/") || /^\/[/\\]|[\\#\u0000-\u001f\u007f]/.test(value)) return undefined;
  try {
    const base = new URL(deps.env.publicUrl);
    const url = new URL(value, base);
    if (url.origin !== base.origin) return undefined;
    return `${url.pathname}${url.search}`;
  } catch {
    return undefined;
  }
}

/** Discovery documents, one per provider per app, fetched on first use (and again after a failure). */
const configurations = new WeakMap<Deps, Map<string, Promise<client.Configuration>>>();

export async function providerConfiguration(
  deps: Deps,
  provider: OidcProvider,
): Promise<client.Configuration> {
  let byProvider = configurations.get(deps);
  if (!byProvider) {
    byProvider = new Map();
    configurations.set(deps, byProvider);
  }
  let pending = byProvider.get(provider.key);
  if (!pending) {
    const issuer = new URL(provider.issuer);
    pending = client.discovery(issuer, provider.clientId, provider.clientSecret, undefined, {
      // env.ts admits plain http only for loopback issuers (a provider on the developer's machine).
      execute: issuer.protocol === "http:" ? [client.allowInsecureRequests] : [],
      timeout: 10,
    });
    byProvider.set(provider.key, pending);
    pending.catch(() => byProvider?.delete(provider.key));
  }
  try {
    return await pending;
  } catch (error) {
    deps.logger.warn({ err: (error as Error).message, provider: provider.key }, "OIDC discovery failed");
    throw new AppError("unavailable", `The sign-in provider ${provider.key} cannot be reached right now.`);
  }
}

/** Builds the provider's authorization URL and the pending sign-in to seal into the cookie. */
export async function beginSignIn(
  deps: Deps,
  provider: OidcProvider,
  redirectTo: string | null,
): Promise<{ url: URL; pending: PendingSignIn }> {
  const config = await providerConfiguration(deps, provider);
  const pending: PendingSignIn = {
    provider: provider.key,
    state: client.randomState(),
    nonce: client.randomNonce(),
    verifier: client.randomPKCECodeVerifier(),
    redirectTo,
    expiresAtMs: deps.clock.nowMs() + OAUTH_FLOW_SECONDS * 1000,
  };
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: callbackUrl(deps, provider.key),
    scope: "openid email profile",
    response_type: "code",
    code_challenge: await client.calculatePKCECodeChallenge(pending.verifier),
    code_challenge_method: "S256",
    state: pending.state,
    nonce: pending.nonce,
  });
  return { url, pending };
}

const isNetworkError = (error: unknown): boolean => {
  for (let e = error; e instanceof Error; e = e.cause) {
    if (e.name === "TimeoutError" || e.name === "AbortError" || e.message === "fetch failed") return true;
  }
  return false;
};

/** The verified identity a provider vouches for. */
export interface ProviderIdentity {
  subject: string;
  email: string | undefined;
  emailVerified: boolean;
  name: string | undefined;
}

/**
 * Exchanges the code (with the PKCE verifier) and validates the ID token: signature, issuer,
 * audience, expiry and our nonce. `query` is the callback's raw query string.
 */
export async function completeSignIn(
  deps: Deps,
  provider: OidcProvider,
  pending: PendingSignIn,
  query: string,
): Promise<ProviderIdentity> {
  const config = await providerConfiguration(deps, provider);
  const currentUrl = new URL(`${callbackUrl(deps, provider.key)}${query}`);
  let claims: client.IDToken | undefined;
  try {
    const tokens = await client.authorizationCodeGrant(config, currentUrl, {
      pkceCodeVerifier: pending.verifier,
      expectedState: pending.state,
      expectedNonce: pending.nonce,
      idTokenExpected: true,
    });
    claims = tokens.claims();
  } catch (error) {
    // The claim's name only: the cause also holds the claims themselves (personal data).
    let claim: unknown;
    for (let e: unknown = error; e instanceof Error && claim === undefined; e = e.cause) {
      claim = (e.cause as { claim?: unknown } | undefined)?.claim;
    }
    deps.logger.warn(
      {
        err: (error as Error).message,
        ...(typeof claim === "string" ? { claim } : {}),
        provider: provider.key,
      },
      "OIDC sign-in refused",
    );
    if (isNetworkError(error))
      throw new AppError("unavailable", `The sign-in provider ${provider.key} cannot be reached right now.`);
    if (error instanceof client.ResponseBodyError) {
      throw new AppError(
        "validation_failed",
        `The provider refused the sign-in (${error.error}). Start signing in again.`,
      );
    }
    throw new AppError(
      "unauthenticated",
      "The provider's answer could not be verified (signature, audience, expiry or nonce). Start signing in again.",
    );
  }
  if (!claims) throw new AppError("unauthenticated", "The provider did not return an ID token.");
  const email = typeof claims.email === "string" ? Email.safeParse(claims.email) : undefined;
  const name = [claims.name, [claims.given_name, claims.family_name].filter(Boolean).join(" ")].find(
    (v): v is string => typeof v === "string" && v.trim() !== "",
  );
  return {
    subject: claims.sub,
    email: email?.success ? email.data : undefined,
    // Strictly the boolean true: a missing claim or "true" as a string is not a verification.
    emailVerified: claims.email_verified === true,
    name: name?.trim().slice(0, 200),
  };
}

type User = typeof users.$inferSelect;

/**
 * Which account a provider identity signs in to:
 * 1. an identity already linked (provider + subject) signs in its user;
 * 2. otherwise a **verified** e-mail links to the account with that address, or creates one
 *    (no password, e-mail verified, personal org);
 * 3. an unverified (or missing) e-mail never links or creates: 409 when an account has that
 *    address, 403 otherwise.
 *
 * Linking to an account whose own address was never verified hands the account to whoever proved
 * the address: the password, authenticator and sessions set before are dropped, so nobody who
 * registered someone else's address in advance keeps a way in.
 *
 * An account with two-factor authentication on is not signed in by SSO (403): the callback has no
 * way to ask for the second factor yet.
 */
export async function resolveAccount(
  deps: Deps,
  providerKey: string,
  identity: ProviderIdentity,
  ip: string,
): Promise<{ user: User; created: boolean; linked: boolean }> {
  const { db } = deps.database;
  const [linked] = await db
    .select({ user: users })
    .from(identities)
    .innerJoin(users, eq(users.id, identities.userId))
    .where(and(eq(identities.provider, providerKey), eq(identities.subject, identity.subject)));
  if (linked) {
    refuseErasedAccounts(linked.user);
    refuseSecondFactorAccounts(linked.user);
    return { user: linked.user, created: false, linked: false };
  }

  const email = identity.email;
  if (!email) {
    throw new AppError(
      "forbidden",
      "The provider did not share an e-mail address; allow access to it and sign in again.",
    );
  }
  const [existing] = await db.select().from(users).where(eq(users.email, email));
  if (!identity.emailVerified) {
    if (existing) {
      throw new AppError(
        "conflict",
        "An account with this e-mail address exists, and the provider has not verified that the address is yours: sign in with your password, or verify the address at the provider first.",
      );
    }
    throw new AppError(
      "forbidden",
      "The provider has not verified this e-mail address; verify it at the provider, then sign in again.",
    );
  }

  if (existing) {
    refuseErasedAccounts(existing);
    refuseSecondFactorAccounts(existing);
    const user = await linkIdentity(deps, providerKey, identity, existing, ip);
    return { user, created: false, linked: true };
  }

  const { user } = await createAccount(
    deps,
    {
      email,
      name: identity.name ?? email.split("@")[0] ?? email,
      passwordHash: null,
      emailVerified: true,
    },
    ip,
    {
      metadata: { method: "oidc", provider: providerKey },
      within: async (tx, created) => {
        await tx.insert(identities).values({
          provider: providerKey,
          subject: identity.subject,
          userId: created.id,
          email,
        });
      },
    },
  );
  return { user, created: true, linked: true };
}

/** Erasure deletes an account's identities and anonymises its address: nothing should lead to it. */
function refuseErasedAccounts(user: User): void {
  if (user.erasedAt) throw new AppError("forbidden", "This account was deleted.");
}

function refuseSecondFactorAccounts(user: User): void {
  if (user.totpEnabledAt && user.emailVerifiedAt) {
    throw new AppError(
      "forbidden",
      "This account has two-factor authentication on: sign in with your password and code.",
    );
  }
}

async function linkIdentity(
  deps: Deps,
  providerKey: string,
  identity: ProviderIdentity,
  user: User,
  ip: string,
): Promise<User> {
  const now = deps.clock.now();
  return deps.database.db.transaction(async (tx) => {
    await tx
      .insert(identities)
      .values({ provider: providerKey, subject: identity.subject, userId: user.id, email: identity.email })
      .onConflictDoNothing();
    let current = user;
    if (!user.emailVerifiedAt) {
      const [updated] = await tx
        .update(users)
        .set({
          emailVerifiedAt: now,
          passwordHash: null,
          totpSecret: null,
          totpEnabledAt: null,
          updatedAt: now,
        })
        .where(eq(users.id, user.id))
        .returning();
      await tx.delete(recoveryCodes).where(eq(recoveryCodes.userId, user.id));
      await tx
        .update(refreshTokens)
        .set({ revokedAt: now })
        .where(and(eq(refreshTokens.userId, user.id), isNull(refreshTokens.revokedAt)));
      if (updated) current = updated;
    }
    const orgIds = await tx
      .select({ orgId: memberships.orgId })
      .from(memberships)
      .where(eq(memberships.userId, user.id));
    for (const { orgId } of orgIds.length > 0 ? orgIds : [{ orgId: null }]) {
      await recordAudit(tx, {
        orgId,
        actor: { kind: "user", userId: user.id },
        action: "user.identity_linked",
        metadata: { provider: providerKey, reset_credentials: !user.emailVerifiedAt },
        ip,
      });
    }
    return current;
  });
}

/** Starts the session and records `user.signed_in` in each of the user's orgs. */
export async function signInWithProvider(
  deps: Deps,
  providerKey: string,
  user: User,
  ip: string,
  userAgent: string | undefined,
) {
  const tokens = await startSession(deps, user, { userAgent });
  const { db } = deps.database;
  await recordUserAudit(db, user.id, {
    action: "user.signed_in",
    metadata: { method: "oidc", provider: providerKey },
    ip,
  });
  return tokens;
}

/** Constant-time comparison of the callback's state with the one sealed in the cookie. */
export function checkState(pending: PendingSignIn, state: string | undefined): void {
  if (!state || !safeEqual(state, pending.state)) {
    throw restart("The state does not match this sign-in.");
  }
}
