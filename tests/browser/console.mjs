// Signs in to the SRE console in a real headless Chromium (Debian's),
// through its login form, visits each page given, runs axe-core on each in
// the light and the dark scheme, takes a screenshot of each, and prints one
// JSON object on stdout for tests/tests/console.rs to assert on.
//
//   node tests/browser/console.mjs BASE_URL TOKEN SCREENSHOT_DIR PATH...
//
// Screenshots: console-<n>-<scheme>.png, n the index of PATH. VIEWPORT_WIDTH
// (default 1280) sets the page's width; SCREENSHOT_MAX_HEIGHT, when set,
// cuts each full-page screenshot to that height (README's are kept short).
//
// Then, in the light scheme, the keyboard walks the agents a page of one
// at a time: Tab to the "Next" link, Enter, Tab to "Previous", Enter
// (`paging` in the output: where each step landed and which agent it showed).
import { chromium } from "playwright-core";
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const [base, token, shots, ...paths] = process.argv.slice(2);
const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});
const out = { login: null, pages: [] };

// The agents' pages by keyboard alone (signed in already).
async function walkPages(page) {
  const start = "/console/agents?n=1";
  const walk = { start, rows: [], agents: [], tabs: 0 };
  const here = () => {
    const u = new URL(page.url());
    return u.pathname + u.search;
  };
  const look = async () => {
    const [rows, agent] = await page.evaluate(() => [
      document.querySelectorAll("main tbody tr").length,
      document.querySelector("main tbody th")?.innerText.trim() ?? null,
    ]);
    walk.rows.push(rows);
    walk.agents.push(agent);
  };
  // Tab from the top of the page until a link with this rel has the focus.
  const follow = async (rel) => {
    for (let i = 0; i < 80; i++) {
      await page.keyboard.press("Tab");
      walk.tabs++;
      if (await page.evaluate((r) => document.activeElement?.getAttribute("rel") === r, rel)) {
        await Promise.all([page.waitForNavigation({ waitUntil: "load" }), page.keyboard.press("Enter")]);
        return here();
      }
    }
    return null;
  };
  await page.goto(base + start, { waitUntil: "load" });
  await look();
  walk.next = await follow("next");
  if (walk.next) {
    await look();
    walk.back = await follow("prev");
    if (walk.back) await look();
  }
  return walk;
}
try {
  for (const colorScheme of ["light", "dark"]) {
    // The console's CSP allows no script; only axe, injected by the test,
    // needs this bypass. The pages themselves ship none.
    const width = Number(process.env.VIEWPORT_WIDTH ?? 1280);
    const context = await browser.newContext({ bypassCSP: true, colorScheme, viewport: { width, height: 800 } });
    const page = await context.newPage();
    const requests = [];
    page.on("request", (r) => requests.push(r.url()));
    // Not signed in: the console answers with the sign-in form.
    const refused = await page.goto(base + "/console", { waitUntil: "load" });
    await page.fill("#token", token);
    await Promise.all([page.waitForNavigation({ waitUntil: "load" }), page.click("button[type=submit]")]);
    const cookies = await context.cookies();
    out.login = {
      refused: refused.status(),
      landed: new URL(page.url()).pathname,
      cookies: cookies.map((c) => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite, path: c.path, value_has_token: c.value.includes(token) })),
    };
    for (const [n, path] of paths.entries()) {
      const response = await page.goto(base + path, { waitUntil: "load" });
      // Counted before axe is injected: the page itself ships no script.
      const scripts = await page.evaluate(() => document.querySelectorAll("script").length);
      const bytes = await page.evaluate(() => document.documentElement.outerHTML.length);
      await page.addScriptTag({ content: axeSource });
      const result = await page.evaluate(() =>
        // eslint-disable-next-line no-undef
        axe.run(document, {
          runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"] },
          resultTypes: ["violations"],
        }),
      );
      const seen = await page.evaluate(() => ({
        title: document.title,
        h1: document.querySelector("h1")?.innerText ?? null,
        waterfalls: [...document.querySelectorAll("svg.waterfall")].map((svg) => ({
          label: svg.getAttribute("aria-label"),
          // Drawn bars only (a bar nested in another element by broken
          // markup has no box on screen).
          smtp: [...svg.querySelectorAll("rect[data-lane=smtp]")].filter((r) => r.getBoundingClientRect().width > 0).length,
          imap: [...svg.querySelectorAll("rect[data-lane=imap]")].filter((r) => r.getBoundingClientRect().width > 0).length,
          bands: [...svg.querySelectorAll("rect.band")].filter((r) => r.getBoundingClientRect().width > 0).length,
          labels: [...svg.querySelectorAll("text")].filter((t) => t.getBoundingClientRect().width > 0).length,
          width: svg.getBoundingClientRect().width,
        })),
        buttons: [...document.querySelectorAll("main button")].map((b) => b.innerText),
        background: getComputedStyle(document.body).backgroundColor,
      }));
      const maxHeight = Number(process.env.SCREENSHOT_MAX_HEIGHT ?? 0);
      const height = await page.evaluate(() => document.documentElement.scrollHeight);
      await page.screenshot({
        path: join(shots, `console-${n}-${colorScheme}.png`),
        fullPage: true,
        ...(maxHeight > 0 && height > maxHeight ? { clip: { x: 0, y: 0, width, height: maxHeight } } : {}),
      });
      out.pages.push({
        path,
        colorScheme,
        status: response.status(),
        scripts,
        bytes,
        violations: result.violations.map((v) => ({
          id: v.id,
          impact: v.impact,
          help: v.help,
          nodes: v.nodes.slice(0, 3).map((x) => x.target.join(" ")),
        })),
        ...seen,
      });
    }
    if (colorScheme === "light") {
      out.paging = await walkPages(page);
    }
    out.requests = [...new Set(requests.map((u) => new URL(u).origin))];
    await context.close();
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
