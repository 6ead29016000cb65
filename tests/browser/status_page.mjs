// Loads a status page in a real headless Chromium (Debian's, never a
// downloaded one), runs axe-core on it in the light and the dark colour
// scheme, reads what a visitor sees, and prints one JSON object on stdout
// for coordinator/tests/status_page.rs to assert on.
//
//   node tests/browser/status_page.mjs URL SCREENSHOT_DIR [NAME]
//
// NAME (default `status`) prefixes the screenshots: NAME-light.png, NAME-dark.png.
// VIEWPORT_WIDTH (default 1280) sets the page's width (the screenshots of
// `make screenshots` are taken narrower, to stay small).
import { chromium } from "playwright-core";
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const [url, shots, name = "status"] = process.argv.slice(2);
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
const out = { schemes: {} };
try {
  for (const colorScheme of ["light", "dark"]) {
    // The page's CSP allows no script; axe is injected by the test, so
    // this context alone bypasses it. JavaScript on the page itself: none.
    const width = Number(process.env.VIEWPORT_WIDTH ?? 1280);
    const context = await browser.newContext({ bypassCSP: true, colorScheme, viewport: { width, height: 720 } });
    const page = await context.newPage();
    const requests = [];
    page.on("request", (r) => requests.push(r.url()));
    const response = await page.goto(url, { waitUntil: "load" });
    // Counted before axe is injected: the page itself ships no script.
    const scripts = await page.evaluate(() => document.querySelectorAll("script").length);
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
      overall: document.querySelector(".overall")?.innerText ?? null,
      checks: [...document.querySelectorAll("article.check")].map((a) => ({
        name: a.querySelector("h3")?.innerText ?? null,
        state: a.querySelector(".state")?.innerText ?? null,
        // Days drawn: a run of alike days spans its columns (class sN).
        cells: [...a.querySelectorAll("ol.bar > li")]
          .map((li) => Number((li.className.match(/\bs(\d+)\b/) ?? [0, 1])[1]))
          .reduce((x, y) => x + y, 0),
        runs: a.querySelectorAll("ol.bar > li").length,
        cell_labels: [...a.querySelectorAll("ol.bar > li")].filter((li) => li.innerText.trim() !== "").length,
        uptime: [...a.querySelectorAll(".uptime dd")].map((d) => d.innerText),
      })),
      incidents: [...document.querySelectorAll(".incident h3, .incident h2")].map((h) => h.innerText),
      // A check's page: its charts as drawn (points per line, the colour
      // the scheme gave it, the size it takes).
      charts: [...document.querySelectorAll("svg.chart")].map((svg) => ({
        role: svg.getAttribute("role"),
        title: svg.querySelector(":scope > title")?.textContent ?? null,
        desc: svg.querySelector(":scope > desc")?.textContent ?? null,
        width: Math.round(svg.getBoundingClientRect().width),
        lines: [...svg.querySelectorAll("path.line")].map((p) => ({
          title: p.querySelector("title")?.textContent ?? null,
          points: (p.getAttribute("d").match(/[ML]/g) ?? []).length,
          stroke: getComputedStyle(p).stroke,
        })),
      })),
      background: getComputedStyle(document.body).backgroundColor,
    }));
    // Keyboard: what Tab reaches, in order, and whether a day's text shows
    // while its link has the focus.
    const focus = [];
    for (let n = 0; n < 40; n++) {
      await page.keyboard.press("Tab");
      const f = await page.evaluate(() => {
        const a = document.activeElement;
        if (!a || a === document.body) return null;
        const span = a.querySelector("span");
        return {
          tag: a.tagName.toLowerCase(),
          href: a.getAttribute("href"),
          text: a.textContent,
          shown: span ? getComputedStyle(span).width !== "1px" : null,
        };
      });
      if (!f) break;
      focus.push(f);
    }
    await page.keyboard.press("Escape");
    await page.screenshot({ path: join(shots, `${name}-${colorScheme}.png`), fullPage: true });
    out.schemes[colorScheme] = {
      status: response.status(),
      violations: result.violations.map((v) => ({
        id: v.id,
        impact: v.impact,
        help: v.help,
        nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")),
      })),
      scripts,
      requests,
      focus,
      ...seen,
    };
    await context.close();
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
