// Signs in to the SRE console in a real headless Chromium (Debian's),
// through its login form, visits each page given, runs axe-core on each in
// the light and the dark scheme, takes a screenshot of each, and prints one
// JSON object on stdout for tests/tests/console.rs to assert on.
//
//   node tests/browser/console.mjs BASE_URL TOKEN SCREENSHOT_DIR PATH...
//
// Screenshots: console-<n>-<scheme>.png, n the index of PATH.
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
try {
  for (const colorScheme of ["light", "dark"]) {
    // The console's CSP allows no script; only axe, injected by the test,
    // needs this bypass. The pages themselves ship none.
    const context = await browser.newContext({ bypassCSP: true, colorScheme });
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
      await page.screenshot({ path: join(shots, `console-${n}-${colorScheme}.png`), fullPage: true });
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
    out.requests = [...new Set(requests.map((u) => new URL(u).origin))];
    await context.close();
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
