import { Link, useLocation, useSearchParams } from "wouter";
import { api, problemMessage, session } from "../api/client";
import { Field, FormError, useSubmit } from "./AuthForm";
import { landingPath, SsoButtons } from "./Login";

export function Signup() {
  const [, navigate] = useLocation();
  const [params] = useSearchParams();
  const { error, busy, onSubmit } = useSubmit(async (fields) => {
    const { data, error } = await api.POST("/v1/auth/register", {
      body: { name: fields.name ?? "", email: fields.email ?? "", password: fields.password ?? "" },
    });
    if (!data) return problemMessage(error);
    session.set(data);
    navigate(landingPath(params, data.org.id), { replace: true });
    return null;
  });
  return (
    <main className="narrow">
      <h1>Create your account</h1>
      <SsoButtons params={params} verb="Sign up" />
      <form onSubmit={onSubmit}>
        <Field label="Name" name="name" autoComplete="name" />
        <Field label="E-mail" name="email" type="email" autoComplete="email" />
        <Field label="Password" name="password" type="password" autoComplete="new-password" minLength={10} />
        <FormError error={error} />
        <button type="submit" disabled={busy}>
          {busy ? "Creating…" : "Create account"}
        </button>
      </form>
      <p>
        Already have one? <Link href={`/login${params.size ? `?${params}` : ""}`}>Sign in</Link>.
      </p>
    </main>
  );
}
