import { createRoute, z } from "@hono/zod-openapi";
import { deleteCookie, getCookie, setCookie } from "hono/cookie";
import { AppError } from "../../lib/errors.js";
import { errorResponses, jsonResponse } from "../../lib/http.js";
import { createApiRouter } from "./caller.js";
import { clientIp } from "./client-ip.js";
import {
  beginSignIn,
  checkState,
  claimState,
  completeSignIn,
  findProvider,
  OAUTH_COOKIE,
  OAUTH_COOKIE_PATH,
  OAUTH_FLOW_SECONDS,
  openPendingSignIn,
  resolveAccount,
  safeRedirectPath,
  sealPendingSignIn,
  signInWithProvider,
} from "./oidc.js";
import { AuthTokens, UserOut, userOut } from "./schemas.js";

const ProviderParam = z.object({
  provider: z
    .string()
    .regex(/^[a-z0-9]+$/, "must be a provider key (lower-case letters and digits)")
    .max(64)
    .openapi({ param: { name: "provider", in: "path" }, example: "google" }),
});

/** Single sign-on through any OIDC provider configured with TOLLGATE_OIDC_<NAME>_* (see oidc.ts). */
export function oidcRoutes() {
  const router = createApiRouter();

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/auth/oauth/{provider}/start",
      tags: ["Auth"],
      summary: "Start signing in with an OIDC provider (redirects to it)",
      description:
        "Redirects to the provider with PKCE (S256), state and nonce. `redirect_to` (a path on this site) is where the callback sends the browser afterwards, with the tokens in the URL fragment; without it the callback answers JSON.",
      request: {
        params: ProviderParam,
        query: z.object({
          redirect_to: z
            .string()
            .max(2000)
            .optional()
            .openapi({ description: "A path on this site, e.g. /dashboard", example: "/dashboard" }),
        }),
      },
      responses: {
        302: { description: "To the provider's authorization endpoint" },
        ...errorResponses(400, 404, 503),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const provider = findProvider(deps, c.req.valid("param").provider);
      const requested = c.req.valid("query").redirect_to;
      const redirectTo = requested === undefined ? null : safeRedirectPath(deps, requested);
      if (redirectTo === undefined) {
        throw new AppError("validation_failed", "redirect_to must be a path on this site, like /dashboard.", {
          errors: [
            {
              field: "redirect_to",
              message: "must be a relative path",
              code: "invalid_redirect",
              location: "query",
            },
          ],
        });
      }
      const { url, pending } = await beginSignIn(deps, provider, redirectTo);
      setCookie(c, OAUTH_COOKIE, sealPendingSignIn(deps, pending), {
        path: OAUTH_COOKIE_PATH,
        httpOnly: true,
        sameSite: "Lax",
        secure: deps.env.publicUrl.startsWith("https:"),
        maxAge: OAUTH_FLOW_SECONDS,
      });
      c.header("cache-control", "no-store");
      return c.redirect(url.href, 302);
    },
  );

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/auth/oauth/{provider}/callback",
      tags: ["Auth"],
      summary: "The provider's redirect back: signs in, links or creates the account",
      description:
        "Checks the state against the sign-in's cookie (once only), exchanges the code with the PKCE verifier and validates the ID token (nonce included). An identity already linked signs in its user; a verified e-mail links to the account with that address or creates one; an unverified e-mail never links (409) or creates (403).",
      request: {
        params: ProviderParam,
        query: z.object({
          code: z.string().max(4096).optional(),
          state: z.string().max(512).optional(),
          error: z.string().max(256).optional(),
          error_description: z.string().max(2048).optional(),
        }),
      },
      responses: {
        200: jsonResponse(
          AuthTokens.extend({
            user: UserOut,
            created: z.boolean().openapi({ description: "A new account was created" }),
            linked: z.boolean().openapi({ description: "The provider identity was linked in this sign-in" }),
          }).openapi("SignedInWithProvider"),
          "A new session",
        ),
        302: { description: "To redirect_to, with the tokens in the URL fragment" },
        ...errorResponses(400, 401, 403, 404, 409, 503),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const provider = findProvider(deps, c.req.valid("param").provider);
      const query = c.req.valid("query");
      c.header("cache-control", "no-store");
      c.header("referrer-policy", "no-referrer");
      // The cookie is spent whatever happens next.
      const sealed = getCookie(c, OAUTH_COOKIE);
      deleteCookie(c, OAUTH_COOKIE, { path: OAUTH_COOKIE_PATH });
      const pending = openPendingSignIn(deps, provider.key, sealed);
      checkState(pending, query.state);
      await claimState(deps, pending.state);
      try {
        if (query.error) {
          throw new AppError("forbidden", `The provider did not sign you in (${query.error.slice(0, 100)}).`);
        }
        if (!query.code) throw new AppError("validation_failed", "The provider's answer has no code.");

        const identity = await completeSignIn(deps, provider, pending, new URL(c.req.url).search);
        const ip = clientIp(c);
        const { user, created, linked } = await resolveAccount(deps, provider.key, identity, ip);
        const tokens = await signInWithProvider(deps, provider.key, user, ip, c.req.header("user-agent"));

        if (pending.redirectTo) {
          const fragment = new URLSearchParams({
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            token_type: tokens.token_type,
            expires_in: String(tokens.expires_in),
          });
          return c.redirect(`${deps.env.publicUrl}${pending.redirectTo}#${fragment}`, 302);
        }
        return c.json({ user: userOut(user), ...tokens, created, linked }, 200);
      } catch (error) {
        // A browser sign-in goes back to the page it came from, which shows why it failed; the
        // fragment never reaches a server or a Referer.
        if (!pending.redirectTo || !(error instanceof AppError)) throw error;
        const fragment = new URLSearchParams({ error: error.code, error_description: error.message });
        return c.redirect(`${deps.env.publicUrl}${pending.redirectTo}#${fragment}`, 302);
      }
    },
  );

  return router;
}
