import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import axe from "axe-core";
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  freePort,
  killAllTollgates,
  startTollgate,
  type TollgateProcess,
} from "./support/tollgate-process.js";

/**
 * The dashboard's accessibility, audited in a real browser (Debian's Chromium, driven by
 * playwright-core) against a real Tollgate on its embedded defaults: axe-core's WCAG 2.0/2.1 A and
 * AA rules on every page, at desktop and phone widths, with the page's content loaded; the Tab key
 * reaching every control in document order with a visible focus indicator; and no page scrolling
 * sideways on a phone (tables scroll inside their own `.table-wrap`, on purpose).
 */

const CHROMIUM = "/usr/bin/chromium";
const ADMIN_KEY = "a11y-operator-key-0123456789abcdef";
const PASSWORD = "correct horse battery staple";
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const SIZES = [
  ["desktop", DESKTOP],
  ["phone", PHONE],
] as const;
/** Every WCAG 2.0 and 2.1 level A and AA rule axe-core has; nothing is disabled. */
const AXE_OPTIONS = { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } };

// CI installs Chromium (.ci/run); on a machine without it these tests say so instead of passing.
if (process.env.CI && !existsSync(CHROMIUM))
  throw new Error(`${CHROMIUM} is missing: apt-get install chromium`);

interface Violation {
  id: string;
  impact: string | null;
  help: string;
  nodes: { target: unknown; summary: string }[];
}

/** What an element is, for messages: its tag, type and accessible-ish name. */
const DESCRIBE = `(el) => {
  if (!el || el === document.body || el === document.documentElement) return "(nothing: the page itself)";
  const name = (el.getAttribute("aria-label") || (el.labels && el.labels[0] && el.labels[0].textContent) ||
    el.textContent || el.getAttribute("name") || el.getAttribute("placeholder") || "").replace(/\\s+/g, " ").trim();
  const type = el.tagName === "INPUT" ? "[type=" + el.type + "]" : "";
  const cls = el.className && typeof el.className === "string" ? "." + el.className.trim().split(/\\s+/).join(".") : "";
  return el.tagName.toLowerCase() + type + cls + ' "' + name.slice(0, 40) + '"';
}`;

describe.runIf(existsSync(CHROMIUM))("the dashboard's accessibility in Chromium", () => {
  let server: TollgateProcess;
  let browser: Browser;
  let dataDir: string;
  let receiver: Server;
  let receiverUrl: string;
  let visitor: BrowserContext;
  let owner: Page;
  let admin: Page;
  let org: string;

  /** Signs up through the API; returns the tokens and the personal org. */
  const register = async (name: string, email: string) => {
    const res = await server.call("POST", "/v1/auth/register", { body: { name, email, password: PASSWORD } });
    expect(res.status, res.text).toBe(201);
    return res.body as { access_token: string; refresh_token: string; org: { id: string } };
  };

  /** A browser context signed in as the holder of `refresh` (the page trades it, as after a reload). */
  const signedIn = async (refresh: string): Promise<Page> => {
    // The pages' CSP allows only same-origin scripts: axe-core is injected inline, so it is bypassed.
    const context = await browser.newContext({ viewport: DESKTOP, bypassCSP: true });
    const page = await context.newPage();
    await page.goto(`${server.url}/login`);
    await page.evaluate(`localStorage.setItem("tollgate.refresh", ${JSON.stringify(refresh)})`);
    return page;
  };

  beforeAll(async () => {
    // The pages under test were built from the current sources by test/support/global-setup.ts.
    dataDir = mkdtempSync(path.join(os.tmpdir(), "tollgate-a11y-"));
    receiver = createServer((req, res) => {
      req.resume();
      req.on("end", () => res.writeHead(204).end());
    });
    await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", () => resolve()));
    receiverUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hooks`;
    const port = await freePort();
    server = await startTollgate({
      TOLLGATE_WEBHOOK_ALLOWED_TARGETS: new URL(receiverUrl).host,
      TOLLGATE_PLATFORM_ADMINS: "root@a11y.example.com",
      PORT: String(port),
      TOLLGATE_PUBLIC_URL: `http://127.0.0.1:${port}`,
      TOLLGATE_DATA_DIR: dataDir,
      TOLLGATE_ADMIN_KEY: ADMIN_KEY,
    });
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--headless", "--no-sandbox"] });
    visitor = await browser.newContext({ viewport: DESKTOP, bypassCSP: true });

    // An org owner with some usage (8 of 10 kolekts: the 80% warning and the chart show) and a
    // webhook endpoint (which the key created later delivers to, so its log has a row).
    const ada = await register("Ada Lovelace", "ada@a11y.example.com");
    org = ada.org.id;
    for (let i = 0; i < 8; i++) {
      const res = await server.call("POST", "/v1/check", {
        auth: ADMIN_KEY,
        body: { org_id: org, feature: "kolekts" },
      });
      expect(res.body.allowed, res.text).toBe(true);
    }
    const endpoint = await server.call("POST", `/v1/orgs/${org}/webhook-endpoints`, {
      auth: ada.access_token,
      body: { url: receiverUrl, events: ["*"] },
    });
    expect(endpoint.status, endpoint.text).toBe(201);
    owner = await signedIn(ada.refresh_token);

    // A platform admin: a listed address, verified.
    const rootUser = await register("Root", "root@a11y.example.com");
    const mails = (await server.call("GET", "/v1/admin/emails?to=root@a11y.example.com", { auth: ADMIN_KEY }))
      .body.data as { template: string; text: string }[];
    const token = /verify-email\?token=([\w-]+)/.exec(
      mails.find((m) => m.template === "verify_email")?.text ?? "",
    )?.[1];
    if (!token) throw new Error(`no verification link in ${JSON.stringify(mails)}`);
    const verified = await server.call("POST", "/v1/auth/verify-email", { body: { token } });
    expect(verified.status, verified.text).toBeLessThan(300);
    admin = await signedIn(rootUser.refresh_token);
  }, 180_000);

  afterAll(async () => {
    await browser?.close();
    await killAllTollgates();
    receiver?.closeAllConnections();
    await new Promise((resolve) => receiver?.close(resolve));
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  /**
   * Opens a page and waits for its content: every request answered (the frame's user and branding
   * too), the h1, and no "Loading…" left.
   */
  const open = async (page: Page, pathname: string) => {
    await page.goto(`${server.url}${pathname}`, { waitUntil: "networkidle" });
    await settle(page);
  };
  const settle = async (page: Page) => {
    await page.getByRole("heading", { level: 1 }).first().waitFor();
    await expect.poll(() => page.getByText(/^Loading\b/).count(), { timeout: 10_000 }).toBe(0);
  };

  /**
   * axe-core at desktop and phone widths, and at phone width no sideways scrolling (outside the
   * tables' own scrolling boxes). Fails with each violation's rule, impact, help and first targets.
   */
  const audit = async (page: Page, what: string) => {
    const problems: string[] = [];
    for (const [size, viewport] of SIZES) {
      await page.setViewportSize(viewport);
      // Two frames: the layout (and the charts, which follow their box's size) settle.
      await page.evaluate("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))");
      if (!(await page.evaluate<boolean>("typeof window.axe === 'object'")))
        await page.addScriptTag({ content: axe.source });
      const violations = await page.evaluate<Violation[]>(
        `axe.run(document, ${JSON.stringify(AXE_OPTIONS)}).then((r) => r.violations.map((v) => ({
          id: v.id, impact: v.impact, help: v.help,
          nodes: v.nodes.map((n) => ({ target: n.target, summary: n.failureSummary })),
        })))`,
      );
      for (const v of violations) {
        const nodes = v.nodes
          .slice(0, 4)
          .map((n) => `      ${JSON.stringify(n.target)} — ${n.summary.replace(/\s+/g, " ").slice(0, 300)}`);
        const more = v.nodes.length > 4 ? [`      …and ${v.nodes.length - 4} more`] : [];
        problems.push([`${what} (${size}): ${v.id} [${v.impact}] ${v.help}`, ...nodes, ...more].join("\n"));
      }
      if (size === "phone") {
        const overflow = await page.evaluate<{ scrollWidth: number; innerWidth: number; wide: string[] }>(
          `(() => {
            const describe = ${DESCRIBE};
            const innerWidth = window.innerWidth;
            const scrollWidth = document.documentElement.scrollWidth;
            const wide = scrollWidth <= innerWidth ? [] : [...document.querySelectorAll("body *")]
              .filter((el) => !el.parentElement.closest(".table-wrap"))
              .filter((el) => el.getBoundingClientRect().right > innerWidth + 0.5)
              .slice(-5).map(describe);
            return { scrollWidth, innerWidth, wide };
          })()`,
        );
        if (overflow.scrollWidth > overflow.innerWidth)
          problems.push(
            `${what} (phone): scrolls sideways, ${overflow.scrollWidth} px wide in ${overflow.innerWidth}: ${overflow.wide.join("; ")}`,
          );
      }
    }
    await page.setViewportSize(DESKTOP);
    expect(problems, `\n${problems.join("\n")}\n`).toEqual([]);
  };

  /**
   * Tabs through a freshly loaded page from the top: every control (links, buttons, fields, anything with a
   * tabindex of 0 or more), in document order, each with a visible focus indicator.
   */
  const tabThrough = async (page: Page) => {
    const controls = await page.evaluate<string[]>(
      `(() => {
        const describe = ${DESCRIBE};
        const all = [...document.querySelectorAll("a[href], button, input, select, textarea, summary, [tabindex]")]
          .filter((el) => !el.disabled && el.tabIndex >= 0 && !el.closest("[inert], fieldset:disabled"))
          .filter((el) => el.checkVisibility({ visibilityProperty: true }))
          // Of a group of radio buttons, only the checked one is a Tab stop.
          .filter((el) => !(el.type === "radio" && !el.checked));
        all.forEach((el, i) => { el.dataset.tabStop = String(i); });
        return all.map(describe);
      })()`,
    );
    expect(controls.length).toBeGreaterThan(3);
    const reached: string[] = [];
    const unmarked: string[] = [];
    for (let i = 0; i < controls.length; i++) {
      await page.keyboard.press("Tab");
      const focused = await page.evaluate<{ stop: string | null; what: string; indicator: boolean }>(
        `(() => {
          const el = document.activeElement;
          const style = getComputedStyle(el);
          const outline = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0;
          const shadow = style.boxShadow !== "none";
          return { stop: el.dataset ? el.dataset.tabStop ?? null : null, what: (${DESCRIBE})(el), indicator: outline || shadow };
        })()`,
      );
      const stop = focused.stop === null ? undefined : controls[Number(focused.stop)];
      reached.push(stop ? `${focused.stop}: ${stop}` : `(not a control) ${focused.what}`);
      if (!focused.indicator) unmarked.push(focused.what);
    }
    expect(reached, "Tab order").toEqual(controls.map((control, i) => `${i}: ${control}`));
    expect(unmarked, "focused without a visible focus indicator").toEqual([]);
  };

  describe("public pages", () => {
    for (const [pathname, heading] of [
      ["/login", "Sign in"],
      ["/signup", "Create your account"],
      ["/pricing", "Pricing"],
      ["/forgot-password", "Reset your password"],
    ] as const) {
      it(pathname, async () => {
        const page = await visitor.newPage();
        await open(page, pathname);
        expect(await page.getByRole("heading", { level: 1 }).textContent()).toBe(heading);
        await audit(page, pathname);
        await page.close();
      });
    }

    it("/login after a refused sign-in (the error announced)", async () => {
      const page = await visitor.newPage();
      await open(page, "/login");
      await page.getByLabel("E-mail").fill("nobody@a11y.example.com");
      await page.getByLabel("Password").fill("not the password");
      await page.getByRole("button", { name: "Sign in" }).click();
      await page.getByRole("alert").waitFor();
      await audit(page, "/login (refused)");
      await page.close();
    });
  });

  describe("an org owner's pages", () => {
    it("overview, with usage and its chart", async () => {
      await open(owner, `/dashboard/orgs/${org}`);
      await owner.locator(".card canvas").first().waitFor();
      await expect.poll(() => owner.getByText("You have used 80% of this limit.").count()).toBe(1);
      await audit(owner, "overview");
    });

    it("billing, with a recommended plan and a change's preview", async () => {
      await open(owner, `/dashboard/orgs/${org}/billing?feature=kolekts&plan=pay_as_you_go`);
      await owner.getByText("Recommended for you").waitFor();
      await audit(owner, "billing");
      await owner.getByRole("button", { name: "Switch to Pro" }).click();
      await owner.getByRole("region", { name: /Switch to Pro/ }).waitFor();
      await audit(owner, "billing (preview)");
    });

    it("API keys, with a new key shown once", async () => {
      await open(owner, `/dashboard/orgs/${org}/keys`);
      await owner.getByLabel("Name").fill("Production backend");
      await owner.getByRole("button", { name: "Create key" }).click();
      await owner.locator("code.secret").waitFor();
      await settle(owner);
      await audit(owner, "keys");
    });

    it("team, after an invitation", async () => {
      await open(owner, `/dashboard/orgs/${org}/team`);
      await owner.getByLabel("E-mail to invite").fill("mia@a11y.example.com");
      await owner.getByRole("button", { name: "Send invitation" }).click();
      await owner.getByText("Invitation sent to mia@a11y.example.com.").waitFor();
      await audit(owner, "team");
    });

    it("webhooks, with a new endpoint's secret and a delivery log", async () => {
      // The key created above was delivered to the first endpoint.
      await expect
        .poll(
          async () => {
            await open(owner, `/dashboard/orgs/${org}/webhooks`);
            return owner.getByRole("table", { name: `Recent deliveries to ${receiverUrl}` }).count();
          },
          { timeout: 15_000 },
        )
        .toBe(1);
      await owner.getByLabel("Endpoint URL").fill(`${receiverUrl}/second`);
      await owner.getByLabel(/^Events/).fill("api_key.*");
      await owner.getByRole("button", { name: "Add endpoint" }).click();
      await owner.locator("code.secret").waitFor();
      await settle(owner);
      await audit(owner, "webhooks");
    });

    it("settings, and the frame in a light white-label colour", async () => {
      await open(owner, `/dashboard/orgs/${org}/settings`);
      await audit(owner, "settings");
      // An org may pick any colour: the frame stays readable in a light one (the rest of these
      // tests run in it too).
      await owner.getByLabel("Primary colour").fill("#ffd33d");
      await owner.getByRole("button", { name: "Save branding" }).click();
      await owner.getByText("Saved.").waitFor();
      const colour = (name: string) =>
        owner.evaluate<string>(
          `getComputedStyle(document.documentElement).getPropertyValue("${name}").trim()`,
        );
      await expect.poll(() => colour("--brand")).toBe("#ffd33d");
      expect(await colour("--brand-ink")).not.toBe("#ffd33d");
      await audit(owner, "settings (light brand)");
      await open(owner, `/dashboard/orgs/${org}/billing`);
      await audit(owner, "billing (light brand)");
    });

    it("the account page, and two-factor set-up", async () => {
      await open(owner, "/dashboard/account");
      await owner.getByRole("heading", { name: "Your account", level: 1 }).waitFor();
      await audit(owner, "account");
      await owner.getByLabel("Confirm your password").fill(PASSWORD);
      await owner.getByRole("button", { name: "Set up two-factor authentication" }).click();
      await owner.getByLabel("Code from the app").waitFor();
      await audit(owner, "account (two-factor set-up)");
    });
  });

  describe("a platform admin's pages", () => {
    for (const [pathname, heading] of [
      ["/dashboard/admin", "Revenue"],
      ["/dashboard/admin/orgs", "Organizations"],
      ["/dashboard/admin/users", "Users"],
      ["/dashboard/admin/outbox", "Mail outbox"],
      ["/dashboard/admin/jobs", "Dead jobs"],
      ["/dashboard/admin/broadcast", "Broadcast"],
    ] as const) {
      it(pathname, async () => {
        await open(admin, pathname);
        expect(await admin.getByRole("heading", { level: 1 }).textContent()).toBe(heading);
        await audit(admin, pathname);
      });
    }
  });

  describe("the keyboard", () => {
    it("tabs through the sign-in page in order, with the focus always visible", async () => {
      const page = await visitor.newPage();
      await open(page, "/login");
      await tabThrough(page);
      await page.close();
    });

    it("tabs through the API keys page in order, with the focus always visible", async () => {
      await open(owner, `/dashboard/orgs/${org}/keys`);
      await owner.getByRole("cell", { name: "Production backend", exact: true }).waitFor();
      await tabThrough(owner);
      // The first stop skips the top bar and the tabs: the next Tab is in the page's content.
      await open(owner, `/dashboard/orgs/${org}/keys`);
      await owner.keyboard.press("Tab");
      expect(await owner.evaluate<string>("document.activeElement.textContent")).toBe("Skip to content");
      await owner.keyboard.press("Enter");
      await owner.keyboard.press("Tab");
      expect(await owner.evaluate<boolean>("!!document.activeElement.closest('main')")).toBe(true);
      expect(await owner.evaluate<string>("document.activeElement.name")).toBe("name");
    });
  });
});
