import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { gzipSync } from "node:zlib";
import { OAuth2Server } from "oauth2-mock-server";
import { generateSync } from "otplib";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  freePort,
  killAllTollgates,
  startTollgate,
  type TollgateProcess,
} from "./support/tollgate-process.js";

/**
 * The dashboard in a real browser (Debian's Chromium, driven by playwright-core) against a real
 * Tollgate process on its embedded defaults, as a newcomer runs it. The screenshots it takes are the
 * ones in docs/screenshots/.
 */

const CHROMIUM = "/usr/bin/chromium";
const ADMIN_KEY = "e2e-operator-key-0123456789abcdef";
const root = path.resolve(import.meta.dirname, "..");
const shots = path.join(root, "docs/screenshots");
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

// CI installs Chromium (.ci/run); on a machine without it these tests say so instead of passing.
if (process.env.CI && !existsSync(CHROMIUM))
  throw new Error(`${CHROMIUM} is missing: apt-get install chromium`);

describe.runIf(existsSync(CHROMIUM))("the dashboard in Chromium", () => {
  let server: TollgateProcess;
  let browser: Browser;
  let dataDir: string;
  let receiver: Server;
  let receiverUrl: string;
  let sso: OAuth2Server;
  beforeAll(async () => {
    // The pages under test were built from the current sources by test/support/global-setup.ts.
    dataDir = mkdtempSync(path.join(os.tmpdir(), "tollgate-e2e-"));
    receiver = createServer((req, res) => {
      req.resume();
      req.on("end", () => res.writeHead(204).end());
    });
    await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", () => resolve()));
    receiverUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hooks`;
    // A real OIDC provider on loopback for the single sign-on button; it signs in whoever asks.
    sso = new OAuth2Server();
    await sso.issuer.keys.generate("RS256");
    await sso.start(0, "127.0.0.1");
    sso.service.on("beforeTokenSigning", (token: { payload: Record<string, unknown> }) => {
      if (token.payload.aud !== "e2e-client") return;
      Object.assign(token.payload, {
        sub: "sso-hedy",
        email: "hedy@example.com",
        email_verified: true,
        name: "Hedy Lamarr",
      });
    });
    // Links in pages (checkout's way back) must lead to the origin the browser signed in on.
    const port = await freePort();
    server = await startTollgate({
      TOLLGATE_WEBHOOK_ALLOWED_TARGETS: new URL(receiverUrl).host,
      TOLLGATE_PLATFORM_ADMINS: "root@example.com",
      PORT: String(port),
      TOLLGATE_PUBLIC_URL: `http://127.0.0.1:${port}`,
      TOLLGATE_DATA_DIR: dataDir,
      TOLLGATE_ADMIN_KEY: ADMIN_KEY,
      TOLLGATE_OIDC_MOCK_ISSUER: sso.issuer.url ?? "",
      TOLLGATE_OIDC_MOCK_CLIENT_ID: "e2e-client",
      TOLLGATE_OIDC_MOCK_CLIENT_SECRET: "e2e-client-secret",
    });
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--headless", "--no-sandbox"] });
    mkdirSync(shots, { recursive: true });
  }, 120_000);
  afterAll(async () => {
    await browser?.close();
    await killAllTollgates();
    await sso?.stop();
    receiver?.closeAllConnections();
    await new Promise((resolve) => receiver?.close(resolve));
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  const shoot = async (page: Page, name: string) => {
    for (const [size, viewport] of [
      ["desktop", DESKTOP],
      ["phone", PHONE],
    ] as const) {
      await page.setViewportSize(viewport);
      await page.screenshot({ path: path.join(shots, `${name}-${size}.png`), fullPage: true });
    }
    await page.setViewportSize(DESKTOP);
  };

  it("signs up, lands on the overview, and sees the 80% warning once usage crosses it", async () => {
    const page = await browser.newPage({ viewport: DESKTOP });
    await page.goto(`${server.url}/signup`);
    await expect
      .poll(() => page.getByRole("heading", { name: "Create your account" }).isVisible())
      .toBe(true);
    await shoot(page, "signup");
    await page.getByLabel("Name").fill("Ada Lovelace");
    await page.getByLabel("E-mail").fill("ada@example.com");
    await page.getByLabel("Password").fill("correct horse battery staple");
    await page.getByRole("button", { name: "Create account" }).click();

    await page.getByRole("heading", { name: "Overview" }).waitFor();
    const org = /\/dashboard\/orgs\/(org_\w+)$/.exec(page.url())?.[1];
    expect(org, page.url()).toBeTruthy();
    const kolekts = page
      .getByRole("listitem")
      .filter({ has: page.getByRole("heading", { name: "Kolekts" }) });
    await expect.poll(() => kolekts.textContent()).toContain("0 / 10");
    expect(await page.getByText(/You have used \d+% of this limit/).count()).toBe(0);

    // The product uses 8 of the 10 kolekts through the API.
    for (let i = 0; i < 8; i++) {
      const res = await server.call("POST", "/v1/check", {
        auth: ADMIN_KEY,
        body: { org_id: org, feature: "kolekts" },
      });
      expect(res.body.allowed).toBe(true);
    }
    await page.reload();
    await expect.poll(() => kolekts.textContent()).toContain("8 / 10");
    await expect
      .poll(() => kolekts.getByRole("status").textContent())
      .toBe("You have used 80% of this limit.");
    // The chart (and the table behind it, for screen readers) shows today's 8.
    const perDay = kolekts.getByRole("table", { name: "Kolekts per month per day" });
    await expect.poll(() => perDay.locator("tbody tr").last().textContent()).toMatch(/^\d{4}-\d{2}-\d{2}8$/);
    expect(await kolekts.locator("canvas").count()).toBe(1);
    await shoot(page, "overview");
    // One more through the events API: the chart moves.
    const events = await server.call("POST", "/v1/events", {
      auth: ADMIN_KEY,
      body: { events: [{ id: "e2e-1", org_id: org, meter: "kolekts" }] },
    });
    expect(events.status, events.text).toBe(202);
    await page.reload();
    await expect.poll(() => perDay.locator("tbody tr").last().textContent()).toMatch(/^\d{4}-\d{2}-\d{2}9$/);

    // The quota runs out: the denial's upgrade URL lands on billing, offering the plan that gives more.
    await server.call("POST", "/v1/check", { auth: ADMIN_KEY, body: { org_id: org, feature: "kolekts" } });
    const denied = await server.call("POST", "/v1/check", {
      auth: ADMIN_KEY,
      body: { org_id: org, feature: "kolekts" },
    });
    expect(denied.body).toMatchObject({ allowed: false });
    await page.goto(denied.body.upgrade_url);
    await expect.poll(() => page.getByRole("status").first().textContent()).toContain("limit of kolekts");
    const recommended = page.getByRole("listitem").filter({ hasText: "Recommended for you" });
    // The cheapest plan that gives more kolekts, in the demo catalog: pay-as-you-go (no base fee).
    expect(new URL(denied.body.upgrade_url).searchParams.get("plan")).toBe("pay_as_you_go");
    await expect.poll(() => recommended.getByRole("heading").textContent()).toBe("Pay-as-you-go");
    await shoot(page, "upgrade");

    // The session survives a reload (the refresh token), and signing out ends it.
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByRole("heading", { name: "Sign in" }).waitFor();
    await page.goto(`${server.url}/dashboard`);
    await page.getByRole("heading", { name: "Sign in" }).waitFor();
    expect(page.url()).toContain("/login?next=%2Fdashboard");
    await page.close();
  });

  it("creates an API key and shows it exactly once", async () => {
    const context = await browser.newContext({ viewport: DESKTOP });
    await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: server.url });
    const page = await context.newPage();
    await page.goto(`${server.url}/signup`);
    await page.getByLabel("Name").fill("Grace Hopper");
    await page.getByLabel("E-mail").fill("grace@example.com");
    await page.getByLabel("Password").fill("correct horse battery staple");
    await page.getByRole("button", { name: "Create account" }).click();
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    await page
      .getByRole("navigation", { name: "Organization" })
      .getByRole("link", { name: "API keys" })
      .click();
    await page.getByRole("heading", { name: "API keys", level: 1 }).waitFor();
    await page.getByLabel("Name").fill("Production backend");
    await page.getByRole("button", { name: "Create key" }).click();
    const secret = page.locator("code.secret");
    await secret.waitFor();
    const key = (await secret.textContent()) ?? "";
    expect(key).toMatch(/^tg_\w{20,}/);
    await page.getByRole("button", { name: "Copy key" }).click();
    expect(await page.evaluate<string>("navigator.clipboard.readText()")).toBe(key);
    await shoot(page, "api-keys");
    // The key works…
    const verified = await server.call("POST", "/v1/keys/verify", { auth: ADMIN_KEY, body: { key } });
    expect(verified.body).toMatchObject({ valid: true, scopes: ["usage:read"] });
    // …and is never shown again: not after "Done", not after a reload; the list shows its prefix.
    await page.getByRole("button", { name: "Done" }).click();
    expect(await page.content()).not.toContain(key);
    await page.reload();
    await page.getByRole("cell", { name: "Production backend", exact: true }).waitFor();
    expect(await page.content()).not.toContain(key);
    expect(await page.getByRole("cell", { name: `${key.slice(0, 12)}…` }).count()).toBe(1);
    await context.close();
  });

  it("upgrades through the local checkout, then shows the invoice and its PDF", async () => {
    const page = await browser.newPage({ viewport: DESKTOP, acceptDownloads: true });
    await page.goto(`${server.url}/signup`);
    await page.getByLabel("Name").fill("Linus");
    await page.getByLabel("E-mail").fill("linus@example.com");
    await page.getByLabel("Password").fill("correct horse battery staple");
    await page.getByRole("button", { name: "Create account" }).click();
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    await page
      .getByRole("navigation", { name: "Organization" })
      .getByRole("link", { name: "Billing" })
      .click();
    await page.getByRole("heading", { name: "Current plan: Free" }).waitFor();
    expect(await page.getByText("No invoices yet.").count()).toBe(1);

    // The exact preview first: what the switch posts, and what is due now.
    await page.getByRole("button", { name: "Switch to Pro" }).click();
    const preview = page.getByRole("region", { name: /Switch to Pro/ });
    await preview.waitFor();
    await expect
      .poll(() => preview.getByRole("row", { name: /Due now/ }).textContent())
      .toContain("USD 9.99");
    await shoot(page, "billing");
    await page.getByRole("button", { name: "Confirm the switch" }).click();

    // No card yet: the local provider's test-mode checkout.
    await page.waitForURL(/\/checkout\/chk_/);
    await page.getByLabel("Card number").fill("4242 4242 4242 4242");
    await page.getByRole("button", { name: /^Pay/ }).click();
    await page.getByRole("heading", { name: "Payment received" }).waitFor();
    await page.getByRole("link", { name: "Back to billing" }).click();

    await page.getByRole("heading", { name: "Current plan: Pro" }).waitFor();
    const row = page.getByRole("row").filter({ hasText: "USD 9.99" });
    await expect.poll(() => row.textContent()).toContain("paid");
    const download = page.waitForEvent("download");
    await row.getByRole("button", { name: /PDF/ }).click();
    const file = await download;
    expect(file.suggestedFilename()).toMatch(/\.pdf$/);
    const saved = path.join(dataDir, "invoice.pdf");
    await file.saveAs(saved);
    expect(readFileSync(saved).subarray(0, 5).toString()).toBe("%PDF-");

    // A coupon, then cancel at the period end, then change one's mind.
    const coupon = await server.call("POST", "/v1/admin/coupons", {
      auth: ADMIN_KEY,
      body: { code: "WELCOME20", type: "percentage", percent_off: "20", duration: "forever" },
    });
    expect(coupon.status, coupon.text).toBe(201);
    await page.getByLabel("Coupon code").fill("WELCOME20");
    await page.getByRole("button", { name: "Redeem" }).click();
    await expect
      .poll(() => page.getByRole("region", { name: "Coupons and credit" }).textContent())
      .toContain("WELCOME20 — 20% off (forever)");
    page.once("dialog", (dialog) => void dialog.accept());
    await page.getByRole("button", { name: "Cancel the subscription" }).click();
    await page.getByRole("button", { name: "Keep my subscription" }).click();
    await page.getByRole("button", { name: "Cancel the subscription" }).waitFor();
    await page.close();
  });

  it("invites a member, who then sees only what the role allows", async () => {
    const owner = await browser.newPage({ viewport: DESKTOP });
    await owner.goto(`${server.url}/signup`);
    await owner.getByLabel("Name").fill("Olive Owner");
    await owner.getByLabel("E-mail").fill("olive@example.com");
    await owner.getByLabel("Password").fill("correct horse battery staple");
    await owner.getByRole("button", { name: "Create account" }).click();
    await owner.getByRole("heading", { name: "Overview" }).waitFor();
    await owner.getByRole("navigation", { name: "Organization" }).getByRole("link", { name: "Team" }).click();
    await owner.getByLabel("E-mail to invite").fill("mia@example.com");
    await owner.getByLabel("Role", { exact: true }).selectOption("member");
    await owner.getByRole("button", { name: "Send invitation" }).click();
    await expect
      .poll(() => owner.getByRole("status").textContent())
      .toBe("Invitation sent to mia@example.com.");
    await shoot(owner, "team");

    // Mia follows the link from the e-mail (kept in the outbox: no SMTP here), signs up, verifies her
    // address, and accepts.
    const link = async (template: string, pattern: RegExp) => {
      const mails = (await server.call("GET", "/v1/admin/emails?to=mia@example.com", { auth: ADMIN_KEY }))
        .body.data;
      const mail = mails.find((m: { template: string }) => m.template === template);
      const found = pattern.exec(mail?.text ?? "")?.[0];
      if (!found) throw new Error(`no ${template} link in ${JSON.stringify(mails)}`);
      return found.replace(/^https?:\/\/[^/]+/, server.url);
    };
    const mia = await browser.newPage({ viewport: DESKTOP });
    await mia.goto(await link("invitation", /https?:\/\/\S+\/invitations\/[\w-]+/));
    await mia.getByRole("link", { name: "create an account" }).click();
    await mia.getByLabel("Name").fill("Mia");
    await mia.getByLabel("E-mail").fill("mia@example.com");
    await mia.getByLabel("Password").fill("correct horse battery staple");
    await mia.getByRole("button", { name: "Create account" }).click();
    await mia.getByRole("heading", { name: "Join an organization" }).waitFor();
    const invitationPage = mia.url();
    await mia.goto(await link("verify_email", /https?:\/\/\S+\/verify-email\?token=[\w-]+/));
    await expect.poll(() => mia.getByRole("status").textContent()).toContain("verified");
    await mia.goto(invitationPage);
    await mia.getByRole("button", { name: "Accept the invitation" }).click();
    await mia.getByRole("heading", { name: "Overview" }).waitFor();
    // A member: usage, keys (read only) and the team (read only); no billing.
    const tabs = mia.getByRole("navigation", { name: "Organization" }).getByRole("link");
    await expect
      .poll(() => tabs.allTextContents())
      .toEqual(["Overview", "API keys", "Team", "Webhooks", "Settings"]);
    await tabs.filter({ hasText: "Team" }).click();
    await mia.getByRole("cell", { name: "olive@example.com" }).waitFor();
    expect(await mia.getByRole("button", { name: "Send invitation" }).count()).toBe(0);
    expect(await mia.getByRole("table", { name: "Members" }).getByRole("combobox").count()).toBe(0);
    await tabs.filter({ hasText: "API keys" }).click();
    await mia.getByRole("heading", { name: "API keys", level: 1 }).waitFor();
    expect(await mia.getByRole("button", { name: "Create key" }).count()).toBe(0);
    // Typing the billing address anyway: the API refuses, and the page says so.
    await mia.goto(mia.url().replace(/\/keys$/, "/billing"));
    await expect
      .poll(() => mia.getByRole("alert").textContent())
      .toMatch(/role \(member\) does not allow billing:read/);
    await owner.close();
    await mia.close();
  });

  it("shows the pricing page from the catalog, with an estimator that matches the API", async () => {
    const page = await browser.newPage({ viewport: DESKTOP });
    await page.goto(`${server.url}/pricing`);
    await page.getByRole("heading", { name: "Pricing", level: 1 }).waitFor();
    const plans = page.getByRole("list", { name: "Plans" }).getByRole("listitem");
    await expect.poll(() => plans.count()).toBe(5);
    const pro = plans.filter({ has: page.getByRole("heading", { name: "Pro", exact: true }) });
    await expect.poll(() => pro.textContent()).toContain("USD 9.99 / month");
    const kolekts = page.getByRole("row", { name: /^Kolekts per month/ });
    await expect.poll(() => kolekts.textContent()).toContain("10 / month");

    const estimate = page.getByRole("region", { name: "Estimate your bill" });
    await estimate.getByLabel("Plan").selectOption("pay_as_you_go");
    await estimate.getByLabel("Kolekts formatted per month").fill("1500");
    await estimate.getByLabel("API calls per month").fill("200");
    await estimate.getByRole("button", { name: "Estimate" }).click();
    const expected = await server.call("POST", "/v1/pricing/estimate", {
      body: { plan: "pay_as_you_go", usage: { kolekts: "1500", api_calls: "200" } },
    });
    expect(expected.status, expected.text).toBe(200);
    await expect
      .poll(() => estimate.getByRole("row", { name: /Usage total/ }).textContent())
      .toContain(`USD ${expected.body.total}`);
    await shoot(page, "pricing");
    await page.close();
  });

  it("adds a webhook endpoint, shows its secret once, and logs the deliveries", async () => {
    const page = await browser.newPage({ viewport: DESKTOP });
    await page.goto(`${server.url}/signup`);
    await page.getByLabel("Name").fill("Wendy");
    await page.getByLabel("E-mail").fill("wendy@example.com");
    await page.getByLabel("Password").fill("correct horse battery staple");
    await page.getByRole("button", { name: "Create account" }).click();
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    const nav = page.getByRole("navigation", { name: "Organization" });
    await nav.getByRole("link", { name: "Webhooks" }).click();
    await page.getByLabel("Endpoint URL").fill(receiverUrl);
    await page.getByLabel(/^Events/).fill("api_key.*");
    await page.getByRole("button", { name: "Add endpoint" }).click();
    const secret = page.locator("code.secret");
    await secret.waitFor();
    expect(await secret.textContent()).toMatch(/^whsec_/);
    // Something happens to the org: its API key is created.
    await nav.getByRole("link", { name: "API keys" }).click();
    await page.getByLabel("Name").fill("Hooked");
    await page.getByRole("button", { name: "Create key" }).click();
    await page.locator("code.secret").waitFor();
    await nav.getByRole("link", { name: "Webhooks" }).click();
    const log = page.getByRole("table", { name: `Recent deliveries to ${receiverUrl}` });
    await expect
      .poll(
        async () => {
          await page.reload();
          return log
            .getByRole("row")
            .nth(1)
            .textContent({ timeout: 2000 })
            .catch(() => "");
        },
        { timeout: 15_000 },
      )
      .toMatch(/api_key\.created.*succeeded/);
    await shoot(page, "webhooks");
    await page.close();
  });

  it("shows the operator's revenue, and MRR moves when an org upgrades", async () => {
    const page = await browser.newPage({ viewport: DESKTOP });
    await page.goto(`${server.url}/signup`);
    await page.getByLabel("Name").fill("Root");
    await page.getByLabel("E-mail").fill("root@example.com");
    await page.getByLabel("Password").fill("correct horse battery staple");
    await page.getByRole("button", { name: "Create account" }).click();
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    // Not an admin until the address is verified (anyone could register it first).
    expect(await page.getByRole("link", { name: "Revenue" }).count()).toBe(0);
    const mails = (await server.call("GET", "/v1/admin/emails?to=root@example.com", { auth: ADMIN_KEY })).body
      .data;
    const verify = /https?:\/\/\S+\/verify-email\?token=[\w-]+/.exec(
      mails.find((m: { template: string }) => m.template === "verify_email")?.text ?? "",
    )?.[0];
    if (!verify) throw new Error("no verification link");
    await page.goto(verify.replace(/^https?:\/\/[^/]+/, server.url));
    await expect.poll(() => page.getByRole("status").textContent()).toContain("verified");
    await page.goto(`${server.url}/login`);
    await page.getByLabel("E-mail").fill("root@example.com");
    await page.getByLabel("Password").fill("correct horse battery staple");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("link", { name: "Revenue" }).click();
    await page.getByRole("heading", { name: "Revenue" }).waitFor();
    const mrr = page.locator(".stat").filter({ hasText: /^MRR/ }).locator("dd");
    await expect.poll(() => mrr.textContent()).toMatch(/^USD \d+\.\d\d$/);
    const before = Number((await mrr.textContent())?.replace("USD ", ""));

    // An org upgrades to Pro (9.99 a month).
    const org = (await server.call("POST", "/v1/orgs", { auth: ADMIN_KEY, body: { name: "Upgrader" } })).body
      .id;
    const upgraded = await server.call("POST", `/v1/orgs/${org}/subscription`, {
      auth: ADMIN_KEY,
      body: { plan: "pro", skip_payment: true },
    });
    expect(upgraded.status, upgraded.text).toBe(200);
    await page.reload();
    await expect.poll(() => mrr.textContent()).toBe(`USD ${(before + 9.99).toFixed(2)}`);
    await shoot(page, "revenue");

    // The rest of the operator's pages: search users, broadcast, and find the message in the outbox.
    const admin = page.getByRole("navigation", { name: "Administration" });
    await admin.getByRole("link", { name: "Users" }).click();
    await page.getByLabel("Name, e-mail or id", { exact: true }).fill("ROOT@");
    await page.getByRole("button", { name: "Search" }).click();
    await expect.poll(() => page.getByRole("table", { name: "Users" }).getByRole("row").count()).toBe(2);
    expect(await page.getByRole("cell", { name: "root@example.com" }).count()).toBe(1);
    await admin.getByRole("link", { name: "Broadcast" }).click();
    await page.getByLabel("Subject").fill("Maintenance on Sunday");
    await page.getByLabel("Message").fill("We will be down for ten minutes.");
    // It asks first: a broadcast cannot be taken back.
    page.once("dialog", (dialog) => void dialog.accept());
    await page.getByRole("button", { name: "Send" }).click();
    await expect.poll(() => page.getByRole("status").textContent()).toMatch(/^Sent to \d+ address(es)?\.$/);
    await admin.getByRole("link", { name: "Outbox" }).click();
    await expect.poll(() => page.getByText("Maintenance on Sunday").count()).toBeGreaterThan(0);
    await admin.getByRole("link", { name: "Dead jobs" }).click();
    await page.getByRole("heading", { name: "Dead jobs" }).waitFor();
    await page.close();
  });

  it("applies the org's white-label branding to the dashboard once saved", async () => {
    const page = await browser.newPage({ viewport: DESKTOP });
    await page.goto(`${server.url}/signup`);
    await page.getByLabel("Name").fill("Brandon");
    await page.getByLabel("E-mail").fill("brandon@example.com");
    await page.getByLabel("Password").fill("correct horse battery staple");
    await page.getByRole("button", { name: "Create account" }).click();
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    await page
      .getByRole("navigation", { name: "Organization" })
      .getByRole("link", { name: "Settings" })
      .click();
    await page.getByLabel("Display name").fill("Acme Cloud");
    await page.getByLabel("Primary colour").fill("#aa3300");
    await page.getByLabel("Support e-mail").fill("help@acme.test");
    await page.getByRole("button", { name: "Save branding" }).click();
    await expect.poll(() => page.getByRole("status").textContent()).toBe("Saved.");
    await expect
      .poll(() => page.getByRole("banner").getByRole("link").first().textContent())
      .toBe("Acme Cloud");
    const brandColour = () =>
      page.evaluate<string>("getComputedStyle(document.documentElement).getPropertyValue('--brand').trim()");
    await expect.poll(brandColour).toBe("#aa3300");
    // It sticks: a reload shows the org's brand.
    await page.reload();
    await expect.poll(brandColour).toBe("#aa3300");
    await shoot(page, "settings");
    await page.close();
  });

  it("follows the e-mails' links: a password reset, and billing without an org in the link", async () => {
    const page = await browser.newPage({ viewport: DESKTOP });
    await page.goto(`${server.url}/login`);
    await page.getByRole("link", { name: "Forgot your password?" }).click();
    await page.getByLabel("E-mail").fill("linus@example.com");
    await page.getByRole("button", { name: "Send the link" }).click();
    await expect.poll(() => page.getByRole("status").textContent()).toContain("on its way");
    const mails = (await server.call("GET", "/v1/admin/emails?to=linus@example.com", { auth: ADMIN_KEY }))
      .body.data;
    const link = /https?:\/\/\S+\/reset-password\?token=[\w-]+/.exec(
      mails.find((m: { template: string }) => m.template === "reset_password")?.text ?? "",
    )?.[0];
    if (!link) throw new Error("no reset link");
    await page.goto(link.replace(/^https?:\/\/[^/]+/, server.url));
    await page.getByLabel("New password").fill("a brand new passphrase");
    await page.getByRole("button", { name: "Set the password" }).click();
    await page.getByRole("link", { name: "Sign in" }).click();
    await page.getByLabel("E-mail").fill("linus@example.com");
    await page.getByLabel("Password").fill("a brand new passphrase");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    // The billing e-mails link to /billing: the first org's billing page.
    await page.goto(`${server.url}/billing`);
    await page.getByRole("heading", { name: /^Current plan/ }).waitFor();
    expect(page.url()).toMatch(/\/dashboard\/orgs\/org_\w+\/billing$/);
    await page.close();
  });

  it("refuses a wrong password with the server's message, announced to screen readers", async () => {
    const page = await browser.newPage({ viewport: DESKTOP });
    await page.goto(`${server.url}/login`);
    await page.getByLabel("E-mail").fill("ada@example.com");
    await page.getByLabel("Password").fill("not the password");
    await page.getByRole("button", { name: "Sign in" }).click();
    await expect.poll(() => page.getByRole("alert").textContent()).toMatch(/password|credentials/i);
    await page.close();
  });

  it("keeps the account: profile, two-factor (then signing in with it), a data export, and deletion", async () => {
    const email = "margaret@example.com";
    const password = "correct horse battery staple";
    const registered = await server.call("POST", "/v1/auth/register", {
      body: { email, password, name: "Grace" },
    });
    expect(registered.status, registered.text).toBe(201);
    const page = await browser.newPage({ viewport: DESKTOP, acceptDownloads: true });
    const signIn = async (code?: string) => {
      await page.goto(`${server.url}/login`);
      await page.getByLabel("E-mail").fill(email);
      await page.getByLabel("Password", { exact: true }).fill(password);
      await page.getByRole("button", { name: "Sign in" }).click();
      if (code === undefined) return;
      await page.getByLabel("Two-factor code (or a recovery code)").fill(code);
      await page.getByRole("button", { name: "Sign in" }).click();
    };
    await signIn();
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    await page.getByRole("banner").getByRole("link", { name: email }).click();
    await page.getByRole("heading", { name: "Your account", exact: true }).waitFor();

    await page.getByLabel("Name").fill("Grace Hopper");
    await page.getByRole("button", { name: "Save profile" }).click();
    await expect.poll(() => page.getByRole("status").first().textContent()).toBe("Saved.");

    // Two-factor: the password again, then the QR code and its key, then a code from the "app".
    await page.getByLabel("Confirm your password").fill(password);
    await page.getByRole("button", { name: "Set up two-factor authentication" }).click();
    await page.getByRole("img", { name: "QR code for your authenticator app" }).waitFor();
    const secret = (await page.locator("code.secret").textContent()) ?? "";
    expect(secret).toMatch(/^[A-Z2-7]{16,}$/);
    await page.getByLabel("Code from the app").fill(generateSync({ secret }));
    await page.getByRole("button", { name: "Turn on" }).click();
    const codes = page.getByRole("list", { name: "Recovery codes" }).getByRole("listitem");
    await expect.poll(() => codes.count()).toBe(10);
    const recovery = await codes.allTextContents();
    await shoot(page, "account");
    await page.getByRole("button", { name: "I have saved them" }).click();
    await page.getByText("Signing in asks for a code from your authenticator app.").waitFor();

    // Signing in now asks for the second factor (a recovery code here: single use).
    await page.getByRole("button", { name: "Sign out" }).click();
    await signIn(recovery[0]);
    await page.getByRole("heading", { name: "Overview" }).waitFor();

    // The export: everything about Grace, no secrets.
    await page.goto(`${server.url}/dashboard/account`);
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.getByRole("button", { name: "Download my data" }).click(),
    ]);
    expect(download.suggestedFilename()).toMatch(/^tollgate-export-\d{4}-\d{2}-\d{2}\.json$/);
    const exported = readFileSync((await download.path()) ?? "", "utf8");
    expect(JSON.parse(exported).user).toMatchObject({ email, name: "Grace Hopper" });
    expect(exported).not.toMatch(/_hash|totp_secret|argon2/);

    // Deletion: the e-mail typed out, the password and a second factor.
    const deletion = page.getByRole("region", { name: "Delete your account" });
    await deletion.getByLabel("Type your e-mail address to confirm").fill(email);
    await deletion.getByLabel("Password", { exact: true }).fill(password);
    await deletion.getByLabel("Two-factor code").fill(recovery[1] ?? "");
    page.once("dialog", (dialog) => void dialog.accept());
    await page.getByRole("button", { name: "Delete my account" }).click();
    await page.getByText("Your account has been deleted.").waitFor();
    expect(new URL(page.url()).pathname).toBe("/login");
    const again = await server.call("POST", "/v1/auth/login", {
      body: { email, password, recovery_code: recovery[2] },
    });
    expect(again.status).toBe(401);
    await page.close();
  });

  it("signs in with single sign-on, and the account can then set a password", async () => {
    const page = await browser.newPage({ viewport: DESKTOP });
    await page.goto(`${server.url}/login`);
    await page.getByRole("link", { name: "Continue with Mock" }).click();
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    // The tokens came in the fragment, which is gone from the address bar.
    expect(new URL(page.url()).hash).toBe("");
    await page.getByRole("banner").getByRole("link", { name: "hedy@example.com" }).click();
    await page.getByRole("heading", { name: "Your account", exact: true }).waitFor();
    expect(await page.getByLabel("Current password").count()).toBe(0);
    await page.getByLabel("New password (at least 10 characters)").fill("frequency hopping rocks");
    await page.getByRole("button", { name: "Set password" }).click();
    await expect.poll(() => page.getByRole("status").first().textContent()).toMatch(/^Password saved/);
    const login = await server.call("POST", "/v1/auth/login", {
      body: { email: "hedy@example.com", password: "frequency hopping rocks" },
    });
    expect(login.status).toBe(200);
    await page.close();
  });

  it("carries the plan picked on /pricing through sign-up to billing", async () => {
    const page = await browser.newPage({ viewport: DESKTOP });
    await page.goto(`${server.url}/pricing`);
    await page.getByRole("link", { name: "Get started with Pro" }).click();
    await page.getByRole("heading", { name: "Create your account" }).waitFor();
    await page.getByLabel("Name").fill("Annie");
    await page.getByLabel("E-mail").fill("annie@example.com");
    await page.getByLabel("Password").fill("correct horse battery staple");
    await page.getByRole("button", { name: "Create account" }).click();
    await page.getByText("The plan you picked").waitFor();
    // The demo catalog sells monthly only; an annual pick would come through as interval=year.
    expect(page.url()).toMatch(/\/dashboard\/orgs\/org_\w+\/billing\?plan=pro&interval=month$/);
    const picked = page
      .getByRole("list", { name: "Plans" })
      .getByRole("listitem")
      .filter({ hasText: "The plan you picked" });
    expect(await picked.getByRole("heading").textContent()).toBe("Pro");
    await page.close();
  });

  it("serves hashed assets for good and the page never from cache, with a strict CSP", async () => {
    const res = await fetch(`${server.url}/dashboard`);
    expect(res.headers.get("cache-control")).toBe("no-cache");
    expect(res.headers.get("content-security-policy")).toContain("script-src 'self'");
    const html = await res.text();
    const asset = /src="(\/assets\/[^"]+\.js)"/.exec(html)?.[1];
    if (!asset) throw new Error(`no script in ${html}`);
    const js = await fetch(`${server.url}${asset}`);
    expect(js.headers.get("cache-control")).toContain("immutable");
    // The initial JavaScript (the entry and what it preloads) stays within the 250 KB budget,
    // gzipped; lazily loaded chunks (the QR code library) are not part of it.
    const initial = [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+\.js)"/g)].map((m) => m[1] ?? "");
    let gzipped = 0;
    for (const file of initial) {
      gzipped += gzipSync(Buffer.from(await (await fetch(`${server.url}${file}`)).arrayBuffer())).length;
    }
    expect(gzipped).toBeGreaterThan(50_000);
    expect(gzipped).toBeLessThanOrEqual(250 * 1024);
    expect((await fetch(`${server.url}/assets/..%2Fpackage.json`)).status).toBe(404);
    // The API keeps its own 404s.
    const api = await fetch(`${server.url}/v1/nothing-here`);
    expect(api.headers.get("content-type")).toContain("application/problem+json");
  });
});
