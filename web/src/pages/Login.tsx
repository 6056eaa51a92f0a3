import { useEffect, useId, useState } from "react";
import { Link, useLocation, useSearchParams } from "wouter";
import { api, problemMessage, type Schemas, session } from "../api/client";
import { Field, FormError, useSubmit } from "./AuthForm";

/** Where to go after signing in: a path on this site only (never another origin). */
export function nextPath(params: URLSearchParams): string {
  const next = params.get("next");
  return next?.startsWith("/") && !next.startsWith("//") ? next : "/dashboard";
}

/**
 * Where a fresh session lands: `next` when a page sent the visitor to sign in, the billing page
 * with the plan picked on /pricing (`?plan=…&interval=…`), else the dashboard.
 */
export function landingPath(params: URLSearchParams, orgId?: string): string {
  if (params.has("next")) return nextPath(params);
  const plan = params.get("plan");
  if (plan) {
    const query = new URLSearchParams({ plan });
    const interval = params.get("interval");
    if (interval === "month" || interval === "year") query.set("interval", interval);
    return `/dashboard/orgs/${orgId ?? "first"}/billing?${query}`;
  }
  return orgId ? `/dashboard/orgs/${orgId}` : "/dashboard";
}

type Provider = Schemas["SignInProviders"]["providers"][number];

/** "Continue with …" links for each single sign-on provider the server offers (none: nothing). */
export function SsoButtons({ params, verb }: { params: URLSearchParams; verb: string }) {
  const [providers, setProviders] = useState<Provider[]>([]);
  useEffect(() => {
    void api.GET("/v1/auth/providers").then(({ data }) => setProviders(data?.providers ?? []));
  }, []);
  if (providers.length === 0) return null;
  // The provider sends the browser back to /login with the tokens in the URL fragment.
  const back = `/login${params.size ? `?${params}` : ""}`;
  return (
    <nav className="sso" aria-label="Single sign-on">
      {providers.map((provider) => (
        <a
          key={provider.key}
          href={`/v1/auth/oauth/${provider.key}/start?redirect_to=${encodeURIComponent(back)}`}
        >
          {verb} with {provider.name}
        </a>
      ))}
      <p className="muted">or with your e-mail address:</p>
    </nav>
  );
}

/** Reads (and removes from the address bar) what a single sign-on sent back in the fragment. */
function takeFragment(): { tokens?: { access_token: string; refresh_token: string }; error?: string } {
  if (!window.location.hash) return {};
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  window.history.replaceState(null, "", window.location.pathname + window.location.search);
  const access = fragment.get("access_token");
  const refresh = fragment.get("refresh_token");
  if (access && refresh) return { tokens: { access_token: access, refresh_token: refresh } };
  const error = fragment.get("error_description") ?? fragment.get("error");
  return error ? { error } : {};
}

export function Login() {
  const [, navigate] = useLocation();
  const [params] = useSearchParams();
  const [ssoError, setSsoError] = useState<string | null>(null);
  const [secondFactor, setSecondFactor] = useState(false);
  const codeId = useId();
  useEffect(() => {
    const { tokens, error } = takeFragment();
    if (tokens) {
      session.set(tokens);
      navigate(landingPath(params), { replace: true });
    } else if (error) setSsoError(error);
  }, [navigate, params]);
  const { error, busy, onSubmit } = useSubmit(async (fields) => {
    const code = fields.code?.replaceAll(" ", "");
    const { data, error } = await api.POST("/v1/auth/login", {
      body: {
        email: fields.email ?? "",
        password: fields.password ?? "",
        // Authenticator codes are digits; recovery codes are longer and carry a dash.
        ...(code ? (/^\d{6,8}$/.test(code) ? { totp_code: code } : { recovery_code: code }) : {}),
      },
    });
    if (!data) {
      if ((error as { two_factor_required?: boolean } | undefined)?.two_factor_required) {
        setSecondFactor(true);
      }
      return problemMessage(error);
    }
    session.set(data);
    navigate(landingPath(params), { replace: true });
    return null;
  });
  return (
    <main className="narrow">
      <h1>Sign in</h1>
      {params.get("account") === "deleted" && (
        <p className="notice" role="status">
          Your account has been deleted.
        </p>
      )}
      <SsoButtons params={params} verb="Continue" />
      <FormError error={ssoError} />
      <form onSubmit={onSubmit} noValidate={false}>
        <Field label="E-mail" name="email" type="email" autoComplete="email" />
        <Field label="Password" name="password" type="password" autoComplete="current-password" />
        {secondFactor && (
          <div className="field">
            <label htmlFor={codeId}>Two-factor code (or a recovery code)</label>
            {/* biome-ignore lint/a11y/noAutofocus: the field appears because the server asked for it */}
            <input id={codeId} name="code" autoComplete="one-time-code" required maxLength={40} autoFocus />
          </div>
        )}
        <FormError error={error} />
        <button type="submit" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
      </form>
      <p>
        No account yet? <Link href={`/signup${params.size ? `?${params}` : ""}`}>Create one</Link>.{" "}
        <Link href="/forgot-password">Forgot your password?</Link>
      </p>
    </main>
  );
}
