// The chat page at / in a real browser (playwright-core driving Debian's chromium) against a
// real `wick serve` on SmolLM2 ($WICK_TEST_MODEL_SMOLLM2, $WICK_BIN): a streamed answer, the
// stop button (the server's running-request gauge drops to 0), the conversation found again
// after a reload, Markdown rendered without injecting the model's HTML, reasoning collapsed,
// and the API key asked for once on a 401. Screenshots go to target/ui-screenshots/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const ROOT = resolve(import.meta.dirname, "../..");
const SHOTS = join(ROOT, "target", "ui-screenshots");
const MODEL = process.env.WICK_TEST_MODEL_SMOLLM2;
const BIN = process.env.WICK_BIN || join(process.env.CARGO_TARGET_DIR || join(ROOT, "target"), "release", "wick");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const skip = MODEL ? false : "WICK_TEST_MODEL_SMOLLM2 unset: notice, the browser test did not run";

const servers = [];
let browser;

function freePort() {
  return new Promise((ok) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => ok(p)); });
  });
}

async function startServer(...extra) {
  const port = await freePort();
  const data = mkdtempSync(join(tmpdir(), "wick-ui-"));
  const proc = spawn(BIN, ["serve", "--model", MODEL, "--port", String(port), "--offline", "--served-model-name", "test-model",
    "--data-dir", data, ...extra], { stdio: ["ignore", "ignore", "inherit"] });
  servers.push(proc);
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 180_000;
  for (;;) {
    try { if ((await fetch(url + "/ready")).status === 200) return url; } catch {}
    if (proc.exitCode !== null) throw new Error(`wick serve exited with ${proc.exitCode}`);
    if (Date.now() > deadline) throw new Error("wick serve not ready in time");
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function running(url, key) {
  const headers = key ? { Authorization: "Bearer " + key } : {};
  const text = await (await fetch(url + "/metrics", { headers })).text();
  // Summed over label sets (the gauge carries `model_name`).
  const lines = text.split("\n").filter((l) => /^wick:num_requests_running[ {]/.test(l));
  return lines.length ? lines.reduce((sum, l) => sum + Number(l.split(" ").pop()), 0) : NaN;
}

async function waitFor(what, check, ms = 15_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// A fresh browser page on `url`; `setup` runs before the page loads (dialog handlers).
async function newPage(url, setup = () => {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 }, colorScheme: "light" });
  const page = await context.newPage();
  setup(page);
  const outside = [];
  page.on("request", (r) => { if (!r.url().startsWith(url)) outside.push(r.url()); });
  await page.goto(url + "/");
  return { page, outside };
}

before(async () => {
  if (skip) return;
  mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  for (const p of servers) p.kill("SIGTERM");
});

test("chat, stop mid-answer, and find the conversation after a reload", { skip, timeout: 300_000 }, async () => {
  const url = await startServer();
  const { page, outside } = await newPage(url);
  await page.getByTestId("model").filter({ hasText: "test-model" }).waitFor();
  await page.fill("#max-tokens", "1500");
  await page.fill("#temperature", "0.7");

  // A long answer, stopped while it streams.
  await page.getByTestId("input").fill("Write a very long story about a dragon who learns to cook. Make it at least two thousand words.");
  await page.getByTestId("input").press("Enter");
  const answer = page.locator(".msg.assistant .body").last();
  await waitFor("streamed text", async () => (await answer.innerText()).trim().length > 20, 60_000);
  assert.equal(await running(url), 1, "the answer is generating on the server");
  await page.screenshot({ path: join(SHOTS, "streaming.png") });
  await page.getByTestId("stop").click();
  await page.locator(".msg.assistant .stopped").waitFor();
  await waitFor("the running gauge to drop to 0", async () => (await running(url)) === 0, 10_000);
  const stoppedText = await answer.innerText();
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(await answer.innerText(), stoppedText, "no more text after stop");

  // A short answer to the end.
  await page.fill("#max-tokens", "60");
  await page.getByTestId("input").fill("Say hello in one short sentence.");
  await page.getByTestId("send").click();
  await page.getByTestId("send").waitFor({ state: "visible", timeout: 60_000 });
  assert.equal(await page.locator(".msg").count(), 4);
  assert.ok((await page.locator(".msg.assistant .body").last().innerText()).trim().length > 0);
  await page.screenshot({ path: join(SHOTS, "chat.png") });

  // Reload: the conversation is in the list and opens again.
  await page.reload();
  const item = page.getByTestId("conversations").locator("li", { hasText: "Write a very long story" });
  await item.waitFor();
  await page.click("#new-chat");
  assert.equal(await page.locator(".msg").count(), 0);
  await item.click();
  await page.locator(".msg").nth(3).waitFor();
  assert.equal(await page.locator(".msg.user .body").first().innerText(), "Write a very long story about a dragon who learns to cook. Make it at least two thousand words.");
  assert.equal(await page.locator(".msg.assistant .stopped").count(), 1);
  await page.screenshot({ path: join(SHOTS, "reloaded.png") });
  assert.deepEqual(outside, [], "the page talks to its own origin only");
});

test("Markdown is rendered from escaped text; reasoning is collapsed", { skip, timeout: 120_000 }, async () => {
  const url = await startServer("--responses-store", "off");
  const { page } = await newPage(url);
  const content = "# Title\n**bold** and `x < y`\n\n```js\nlet a = \"<b>not bold</b>\";\n```\n- one\n- two\n\n<img src=x onerror=\"window.pwned=1\"> [link](https://example.com/a?b=1&c=2) [bad](javascript:alert(1))";
  await page.evaluate((content) => {
    localStorage.setItem("wick.conversations", JSON.stringify([{ id: "md", title: "markdown", messages: [
      { role: "user", content: "<i>show</i> me" },
      { role: "assistant", content, reasoning: "I should use a list." }] }]));
  }, content);
  await page.reload();
  const body = page.locator(".msg.assistant .body");
  await body.waitFor();
  assert.equal(await body.locator("h1").innerText(), "Title");
  assert.equal(await body.locator("strong").innerText(), "bold");
  assert.equal(await body.locator("p code").first().innerText(), "x < y");
  assert.equal(await body.locator("pre code.language-js").innerText(), 'let a = "<b>not bold</b>";');
  assert.equal(await body.locator("li").count(), 2);
  assert.equal(await body.locator("img, b").count(), 0, "model HTML is text, never markup");
  assert.equal(await page.locator(".msg.user i").count(), 0);
  assert.equal(await page.evaluate(() => window.pwned), undefined);
  assert.equal(await body.locator("a").count(), 1, "only http(s) links become links");
  assert.equal(await body.locator("a").getAttribute("href"), "https://example.com/a?b=1&c=2");
  const details = page.locator("details.reasoning");
  assert.equal(await details.getAttribute("open"), null, "reasoning starts collapsed");
  await details.locator("summary").click();
  assert.equal(await details.locator(".text").innerText(), "I should use a list.");
  await page.screenshot({ path: join(SHOTS, "markdown.png") });
});

test("the API key is asked for once on a 401 and kept", { skip, timeout: 180_000 }, async () => {
  const url = await startServer("--api-key", "sk-page", "--responses-store", "off");
  // The handler is in place before the first load: the page asks on its first 401.
  let asked = 0;
  const { page } = await newPage(url, (p) => p.on("dialog", (d) => { asked++; d.accept("sk-page"); }));
  await page.getByTestId("model").filter({ hasText: "test-model" }).waitFor();
  assert.equal(asked, 1);
  await page.fill("#max-tokens", "10");
  await page.getByTestId("input").fill("Hi");
  await page.getByTestId("input").press("Enter");
  await page.getByTestId("send").waitFor({ state: "visible", timeout: 60_000 });
  assert.equal(await page.locator(".msg.assistant .error").count(), 0);
  await page.reload();
  await page.getByTestId("model").filter({ hasText: "test-model" }).waitFor();
  assert.equal(asked, 1, "the key is kept in local storage");
  assert.equal(await page.evaluate(() => localStorage.getItem("wick.apiKey")), "sk-page");
});
