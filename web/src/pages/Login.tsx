import { Link, useLocation, useSearchParams } from "wouter";
import { api, problemMessage, session } from "../api/client";
import { Field, FormError, useSubmit } from "./AuthForm";

/** Where to go after signing in: a path on this site only (never another origin). */
export function nextPath(params: URLSearchParams): string {
  const next = params.get("next");
  return next?.startsWith("/") && !next.startsWith("//") ? next : "/dashboard";
}

export function Login() {
  const [, navigate] = useLocation();
  const [params] = useSearchParams();
  const { error, busy, onSubmit } = useSubmit(async (fields) => {
    const { data, error } = await api.POST("/v1/auth/login", {
      body: { email: fields.email ?? "", password: fields.password ?? "" },
    });
    if (!data) return problemMessage(error);
    session.set(data);
    navigate(nextPath(params), { replace: true });
    return null;
  });
  return (
    <main className="narrow">
      <h1>Sign in</h1>
      <form onSubmit={onSubmit} noValidate={false}>
        <Field label="E-mail" name="email" type="email" autoComplete="email" />
        <Field label="Password" name="password" type="password" autoComplete="current-password" />
        <FormError error={error} />
        <button type="submit" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
      </form>
      <p>
        No account yet? <Link href="/signup">Create one</Link>.{" "}
        <Link href="/forgot-password">Forgot your password?</Link>
      </p>
    </main>
  );
}
