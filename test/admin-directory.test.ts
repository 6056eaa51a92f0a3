import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { appModes, createTestApp, type TestApp } from "./support/app.js";

/** The operator's lists of orgs and users: newest first, searchable, paged, for admins only. */
describe.each(appModes.filter((mode) => !mode.redis))("admin directory ($name)", (mode) => {
  let t: TestApp;
  let token: string;
  beforeAll(async () => {
    t = await createTestApp(mode);
    for (const [email, name] of [
      ["ada@example.com", "Ada Lovelace"],
      ["grace@example.com", "Grace Hopper"],
      ["linus@example.org", "Linus"],
    ]) {
      const res = await t.call("POST", "/v1/auth/register", {
        body: { email, name, password: "correct horse battery staple" },
      });
      expect(res.status).toBe(201);
      token = res.body.access_token;
    }
    await t.call("POST", "/v1/orgs", { auth: "operator", body: { name: "Acme 100% Inc" } });
  });
  afterAll(() => t.close());

  const list = async (path: string) => {
    const res = await t.call("GET", path, { auth: "operator" });
    expect(res.status, res.text).toBe(200);
    return res.body;
  };

  it("lists users newest first, searches them, and pages", async () => {
    const all = await list("/v1/admin/users");
    expect(all.data.map((u: any) => u.email)).toEqual([
      "linus@example.org",
      "grace@example.com",
      "ada@example.com",
    ]);
    expect(all.data[0]).toMatchObject({ name: "Linus", email_verified: false, two_factor: false, orgs: 1 });
    expect((await list("/v1/admin/users?q=HOPPER")).data.map((u: any) => u.email)).toEqual([
      "grace@example.com",
    ]);
    expect((await list("/v1/admin/users?q=example.com")).data).toHaveLength(2);
    const first = await list("/v1/admin/users?limit=2");
    expect(first.data).toHaveLength(2);
    const second = await list(`/v1/admin/users?limit=2&before=${first.next_before}`);
    expect(second.data.map((u: any) => u.email)).toEqual(["ada@example.com"]);
    expect(second.next_before).toBeNull();
  });

  it("lists orgs with their plan and members, and takes search characters literally", async () => {
    const orgs = (await list("/v1/admin/orgs")).data;
    expect(orgs).toHaveLength(4);
    expect(orgs[0]).toMatchObject({
      name: "Acme 100% Inc",
      personal: false,
      plan: expect.any(String),
      members: 0,
    });
    expect((await list("/v1/admin/orgs?q=100%25")).data.map((o: any) => o.name)).toEqual(["Acme 100% Inc"]);
    expect((await list("/v1/admin/orgs?q=_")).data).toEqual([]);
    expect((await list(`/v1/admin/orgs?q=${orgs[1].id}`)).data).toHaveLength(1);
  });

  it("is for the operator and platform admins only", async () => {
    expect((await t.call("GET", "/v1/admin/users")).status).toBe(401);
    expect((await t.call("GET", "/v1/admin/users", { auth: token })).status).toBe(403);
    expect((await t.call("GET", "/v1/admin/orgs", { auth: token })).status).toBe(403);
  });
});
