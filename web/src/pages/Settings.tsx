import { useContext, useEffect, useId, useState } from "react";
import { Loading } from "../App";
import { BrandingContext, can, useRole } from "../access";
import { api, problemMessage, type Schemas } from "../api/client";
import { ErrorLine } from "../components/ErrorLine";

type Branding = Schemas["Branding"];
const MAX_LOGO_BYTES = 256 * 1024;

/** The org's white-label branding: applied to this dashboard, the org's e-mails and its pages. */
export function Settings({ orgId }: { orgId: string }) {
  const onBranding = useContext(BrandingContext);
  const canEdit = can(useRole(orgId), "org:update");
  const [branding, setBranding] = useState<Branding | null>(null);
  const [logo, setLogo] = useState<string | null | undefined>(undefined);
  const [error, setError] = useState<string | null>(null);
  const [saved, setSaved] = useState(false);
  const ids = { name: useId(), color: useId(), logo: useId(), support: useId(), footer: useId() };
  useEffect(() => {
    void api
      .GET("/v1/orgs/{org}/branding", { params: { path: { org: orgId } } })
      .then(({ data, error }) => (data ? setBranding(data) : setError(problemMessage(error))));
  }, [orgId]);

  const pickLogo = async (event: React.ChangeEvent<HTMLInputElement>) => {
    const file = event.target.files?.[0];
    if (!file) return;
    if (!["image/png", "image/jpeg"].includes(file.type)) return setError("The logo must be a PNG or JPEG.");
    if (file.size > MAX_LOGO_BYTES) return setError("The logo must be at most 256 KB.");
    setError(null);
    const reader = new FileReader();
    reader.onload = () => setLogo(String(reader.result));
    reader.readAsDataURL(file);
  };

  const save = async (event: React.FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    const text = (name: string) => String(form.get(name) ?? "").trim() || null;
    setSaved(false);
    setError(null);
    const { data, error } = await api.PUT("/v1/orgs/{org}/branding", {
      params: { path: { org: orgId } },
      body: {
        display_name: text("display_name"),
        primary_color: text("primary_color"),
        support_email: text("support_email"),
        footer: text("footer"),
        ...(logo !== undefined ? { logo } : {}),
      },
    });
    if (!data) return setError(problemMessage(error));
    setBranding(data);
    setLogo(undefined);
    setSaved(true);
    onBranding(data);
  };

  if (!branding)
    return error ? (
      <p className="error" role="alert">
        {error}
      </p>
    ) : (
      <Loading label="Loading settings…" />
    );
  const shownLogo = logo === undefined ? branding.logo : logo;
  return (
    <>
      <h1>Settings</h1>
      <form className="panel" onSubmit={save} aria-labelledby={`${ids.name}-title`}>
        <h2 id={`${ids.name}-title`}>Branding</h2>
        <p className="muted">Shown in this dashboard and in the e-mails your members receive.</p>
        <fieldset disabled={!canEdit}>
          <legend className="visually-hidden">Branding</legend>
          <div className="field">
            <label htmlFor={ids.name}>Display name</label>
            <input id={ids.name} name="display_name" defaultValue={branding.display_name} maxLength={120} />
          </div>
          <div className="field">
            <label htmlFor={ids.color}>Primary colour</label>
            <input id={ids.color} name="primary_color" type="color" defaultValue={branding.primary_color} />
          </div>
          <div className="field">
            <label htmlFor={ids.logo}>Logo (PNG or JPEG, at most 256 KB)</label>
            <input id={ids.logo} type="file" accept="image/png,image/jpeg" onChange={pickLogo} />
            {shownLogo && (
              <p>
                <img src={shownLogo} alt={`${branding.display_name} logo`} className="logo-preview" />{" "}
                <button type="button" className="secondary" onClick={() => setLogo(null)}>
                  Remove logo
                </button>
              </p>
            )}
          </div>
          <div className="field">
            <label htmlFor={ids.support}>Support e-mail</label>
            <input
              id={ids.support}
              name="support_email"
              type="email"
              defaultValue={branding.support_email ?? ""}
            />
          </div>
          <div className="field">
            <label htmlFor={ids.footer}>Footer</label>
            <textarea id={ids.footer} name="footer" defaultValue={branding.footer} maxLength={500} rows={2} />
          </div>
          <button type="submit">Save branding</button>
        </fieldset>
        {!canEdit && <p className="muted">Only owners and admins can change the branding.</p>}
        {saved && (
          <p className="notice" role="status">
            Saved.
          </p>
        )}
        <ErrorLine error={error} />
      </form>
    </>
  );
}
