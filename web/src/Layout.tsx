import { useEffect, useState } from "react";
import { Link, useLocation } from "wouter";
import { api, type Schemas, session } from "./api/client";

type MyOrg = Schemas["Me"]["orgs"][number];

/** The signed-in frame: who you are, which org you are looking at (and switching), sign-out. */
export function Layout({ children }: { children: React.ReactNode }) {
  const [me, setMe] = useState<Schemas["Me"] | null>(null);
  const [, navigate] = useLocation();
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
      <header className="topbar">
        <Link href="/" className="brand">
          Dashboard
        </Link>
        {me && <OrgSwitcher orgs={me.orgs} />}
        <span className="who">{me?.user.email}</span>
        <button type="button" className="link" onClick={signOut}>
          Sign out
        </button>
      </header>
      <main id="main">{children}</main>
    </div>
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
