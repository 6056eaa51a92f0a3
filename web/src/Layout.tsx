import { useEffect, useState } from "react";
import { Link, useLocation } from "wouter";
import { BrandingContext, can, MeContext } from "./access";
import { api, type Schemas, session } from "./api/client";
import { readableBrand } from "./contrast";
import { AdminNav } from "./pages/AdminPages";

type MyOrg = Schemas["Me"]["orgs"][number];

/** The signed-in frame: who you are, which org you are looking at (and switching), sign-out. */
export function Layout({ children }: { children: React.ReactNode }) {
  const [me, setMe] = useState<Schemas["Me"] | null>(null);
  const [location, navigate] = useLocation();
  const [brand, setBrand] = useState<Schemas["Branding"] | null>(null);
  const org = /^\/orgs\/([^/]+)/.exec(location)?.[1] ?? me?.orgs[0]?.id;
  // The org's white-label branding dresses the frame: its name, logo and colour.
  useEffect(() => {
    if (!org) return;
    void api
      .GET("/v1/orgs/{org}/branding", { params: { path: { org } } })
      .then(({ data }) => setBrand(data ?? null));
  }, [org]);
  useEffect(() => {
    // Through the CSSOM (allowed by the page's CSP, unlike a style attribute). The colour as picked
    // for borders; darkened where it must be read (text, white text on it, the focus ring).
    const colour = brand?.primary_color ?? "#1a56db";
    document.documentElement.style.setProperty("--brand", colour);
    document.documentElement.style.setProperty("--brand-ink", readableBrand(colour));
  }, [brand]);
  useEffect(() => {
    void api.GET("/v1/auth/me").then(({ data }) => setMe(data ?? null));
  }, []);
  const signOut = async () => {
    await api.POST("/v1/auth/logout", {});
    session.clear();
    navigate("~/login");
  };
  return (
    <div className="shell">
      {/* The first Tab stop: past the top bar and the tabs, straight to the page's content. */}
      <a href="#main" className="skip-link">
        Skip to content
      </a>
      <header className="topbar">
        <Link href="/" className="brand">
          {brand?.logo && <img src={brand.logo} alt="" className="brand-logo" />}
          {brand?.custom ? brand.display_name : "Dashboard"}
        </Link>
        {me && <OrgSwitcher orgs={me.orgs} />}
        {me?.platform_admin && (
          <Link href="/admin" className="admin-link">
            Revenue
          </Link>
        )}
        <Link href="/account" className="who" aria-current={location === "/account" ? "page" : undefined}>
          {me?.user.email ?? "Your account"}
        </Link>
        <button type="button" className="link" onClick={signOut}>
          Sign out
        </button>
      </header>
      {me && (location.startsWith("/admin") ? <AdminNav /> : <OrgNav orgs={me.orgs} />)}
      <MeContext.Provider value={me}>
        <BrandingContext.Provider value={setBrand}>
          <main id="main" tabIndex={-1}>
            {children}
          </main>
        </BrandingContext.Provider>
      </MeContext.Provider>
    </div>
  );
}

/** The org's pages; the current one is marked for screen readers too. */
function OrgNav({ orgs }: { orgs: MyOrg[] }) {
  const [location] = useLocation();
  const org = /^\/orgs\/([^/]+)/.exec(location)?.[1] ?? orgs[0]?.id;
  if (!org) return null;
  const role = orgs.find((o) => o.id === org)?.role;
  const pages = [
    { href: `/orgs/${org}`, label: "Overview", show: true },
    { href: `/orgs/${org}/billing`, label: "Billing", show: can(role, "billing:read") },
    { href: `/orgs/${org}/keys`, label: "API keys", show: can(role, "keys:read") },
    { href: `/orgs/${org}/team`, label: "Team", show: true },
    { href: `/orgs/${org}/webhooks`, label: "Webhooks", show: can(role, "webhooks:read") },
    { href: `/orgs/${org}/settings`, label: "Settings", show: true },
  ].filter((page) => page.show);
  return (
    <nav className="tabs" aria-label="Organization">
      {pages.map((page) => (
        <Link key={page.href} href={page.href} aria-current={location === page.href ? "page" : undefined}>
          {page.label}
        </Link>
      ))}
    </nav>
  );
}

function OrgSwitcher({ orgs }: { orgs: MyOrg[] }) {
  const [location, navigate] = useLocation();
  const current = /^\/orgs\/([^/]+)/.exec(location)?.[1] ?? orgs[0]?.id ?? "";
  if (orgs.length < 2) return <span className="org">{orgs[0]?.name}</span>;
  return (
    <label className="org">
      <span className="visually-hidden">Organization</span>
      <select value={current} onChange={(event) => navigate(`/orgs/${event.target.value}`)}>
        {orgs.map((org) => (
          <option key={org.id} value={org.id}>
            {org.name}
          </option>
        ))}
      </select>
    </label>
  );
}
