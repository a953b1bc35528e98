// End-to-end test of the web app in headless Chromium (playwright-core).
// Run by crates/merit/tests/browser.rs against a real `merit serve`:
//   MERIT_URL, MERIT_TOKEN, MERIT_GOOD_FILE, MERIT_BAD_FILE, MERIT_SHOTS (a folder for screenshots).
import { chromium } from "playwright-core";
import assert from "node:assert/strict";

const url = process.env.MERIT_URL;
const shots = process.env.MERIT_SHOTS;
const step = (name) => console.log(`- ${name}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const failures = [];

/** Every visible form control of the page has a label (a <label>, aria-label or aria-labelledby). */
async function labelled(page) {
  const bare = await page.evaluate(() => Array.from(document.querySelectorAll("input, select, textarea"))
    .filter((e) => e.type !== "hidden" && e.offsetParent !== null)
    .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute("aria-label") && !e.getAttribute("aria-labelledby"))
    .map((e) => e.id || e.name || e.outerHTML.slice(0, 60)));
  assert.deepEqual(bare, [], `${page.url()}: controls without a label`);
}
try {
  {
    const viewport = { width: 1280, height: 900 };
    const page = await browser.newPage({ viewport });
    page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
    const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });

    step("signing in with an API token");
    await page.goto(`${url}/runs`);
    assert.match(page.url(), /\/login\?next=\/runs/);
    await page.getByLabel("API token").fill("mrt_not_a_token");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByText("That API token is not valid").waitFor();
    await page.getByLabel("API token").fill(process.env.MERIT_TOKEN);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.waitForURL(/\/runs$/);
    await page.getByText("Signed in as").waitFor();
    const cookies = await page.context().cookies();
    const session = cookies.find((c) => c.name === "merit_session");
    assert.ok(session && session.httpOnly && session.sameSite === "Strict", "the session cookie is HttpOnly and SameSite=Strict");
    await shot("01-signed-in");

    step("a change without the page's CSRF token is refused");
    const forged = await page.evaluate(async () => {
      const r = await fetch("/api/v1/datanets", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name: "forged", policy: "" }) });
      return r.status;
    });
    assert.equal(forged, 403);

    step("creating a datanet with the form (a bad value is named next to its field)");
    await page.goto(`${url}/datanets/new`);
    await page.getByLabel("Name").fill("essays");
    await page.getByLabel("Summary").fill("Short essays in English");
    await page.getByLabel("Description (markdown)").fill("Essays **about anything**.\n\n<script>alert(1)</script>");
    await page.getByLabel("Tags (comma-separated)").fill("essays, english");
    await page.getByLabel("Largest file (bytes)").fill("0");
    await page.locator('[id="err-max_file_bytes"]:not([hidden])').waitFor(); // checked as it is typed
    await page.getByLabel("Publish now").check();
    await page.getByLabel("Largest file (bytes)").fill("300000000");
    await page.getByRole("button", { name: "Create datanet" }).click();
    await page.locator('[id="err-max_file_bytes"]:not([hidden])').waitFor();
    await shot("02-datanet-form-error");
    await page.getByLabel("Largest file (bytes)").fill("5000000");
    await page.getByLabel(/Languages/).fill("english");
    await page.locator('[id="err-gates.languages"]:not([hidden])').waitFor();
    await page.getByLabel(/Languages/).fill("en");
    await page.getByRole("button", { name: "Create datanet" }).click();
    await page.waitForURL(/\/datanets\/essays$/);
    assert.equal(await page.locator(".markdown strong").textContent(), "about anything");
    assert.equal(await page.locator(".markdown script").count(), 0, "raw HTML in a description is not run");
    await shot("03-datanet");

    step("uploading one good and one bad file: two verdicts, the failing gate named");
    await page.getByLabel("Files").setInputFiles([process.env.MERIT_GOOD_FILE, process.env.MERIT_BAD_FILE]);
    await page.getByRole("button", { name: "Check only (dry run)" }).click();
    await page.locator(".verdict").nth(1).waitFor();
    assert.match(await page.locator("#verdicts").textContent(), /dry run/);
    await page.getByRole("button", { name: "Upload" }).click();
    await page.locator(".verdict-accepted").waitFor();
    await page.locator(".verdict-rejected").waitFor();
    assert.match(await page.locator(".verdict-rejected .reasons").textContent(), /min_words|words/);
    await shot("04-verdicts");

    step("the rows table and the leaderboard show the accepted file");
    await page.reload();
    await page.locator("table.rows tbody tr").first().waitFor();
    await page.getByLabel("Search rows").fill("zzzz-no-such-text");
    await page.getByRole("button", { name: "Search", exact: true }).last().click();
    await page.getByText("No rows match").waitFor();
    await page.goto(`${url}/leaderboard`);
    const row = page.locator("table.board tbody tr").first();
    assert.match(await row.textContent(), /ann/);
    assert.match(await row.textContent(), /1\/2/);
    await page.getByRole("button", { name: "Accepted" }).click();
    await shot("05-leaderboard");

    step("starting a tiny training run and watching its loss chart draw");
    await page.goto(`${url}/runs/new`);
    await page.getByRole("button", { name: "Quick check" }).click();
    await page.getByLabel("essays @ version 1").check();
    assert.match(await page.locator("#estimates").textContent(), /Trainable parameters/);
    await page.getByLabel(/Or stop after steps/).fill("12");
    await page.locator("#eval_split").evaluate((e) => { e.value = "0"; e.dispatchEvent(new Event("input", { bubbles: true })); });
    await page.getByLabel(/Evaluate every N steps/).fill("4");
    await shot("06-new-run");
    await page.getByRole("button", { name: "Start training" }).click();
    await page.waitForURL(/\/runs\/\d+$/);
    await page.waitForFunction(
      () => Number(document.body.dataset.points || 0) >= 1 || /failed/.test(document.querySelector("#run-status").textContent),
      null, { timeout: 120000 });
    assert.ok(Number(await page.evaluate(() => document.body.dataset.points || 0)) >= 1, `the run failed: ${await page.locator("#log").textContent()}`);
    assert.ok(await page.locator("#chart-loss canvas").count() >= 1, "the loss chart is drawn");
    await page.locator("#run-status", { hasText: "done" }).waitFor({ timeout: 180000 });
    assert.ok(Number(await page.evaluate(() => document.body.dataset.points)) === 12);
    await page.getByRole("button", { name: "Publish adapter" }).click();
    await page.locator("#published:not([hidden])").waitFor();
    assert.match(await page.locator("#adapter-sha").textContent(), /^[0-9a-f]{64}$/);
    await shot("07-run");

    step("base and tuned answers side by side, then chatting with the tuned model (streamed)");
    await page.getByLabel("Prompts, one a line").fill("Write about the river.");
    await page.getByRole("button", { name: "Compare" }).click();
    await page.waitForFunction(() => {
      const cells = Array.from(document.querySelectorAll("#eval-table tbody td"));
      return cells.length === 3 && cells.every((c) => c.textContent !== "…");
    }, null, { timeout: 60000 });
    assert.equal(await page.locator("#eval-table td.error").count(), 0, await page.locator("#eval-table").textContent());
    await shot("08-evaluate");
    await page.getByRole("link", { name: "chat with the tuned model" }).click();
    await page.waitForURL(/\/chat\?model=tiny:run-\d+/);
    await page.waitForFunction(() => document.querySelector("#chat-model").value.startsWith("tiny:run-"));
    await page.getByLabel("Max new tokens").fill("12");
    await page.getByLabel("Message").fill("Hello there");
    await page.keyboard.press("Enter");
    await page.locator(".msg-assistant .muted", { hasText: "tokens" }).waitFor({ timeout: 60000 });
    assert.ok((await page.locator(".msg-assistant .answer").textContent()).length > 0, "the answer streamed in");
    // The published adapter's answer comes with its attribution (contributions or none found).
    await page.locator(".msg-assistant .attribution").waitFor({ timeout: 60000 });
    // The same by gradient influence.
    await page.getByLabel("Attribution").selectOption("gradient");
    await page.getByLabel("Message").fill("And then?");
    await page.keyboard.press("Enter");
    await page.locator(".msg-assistant .attribution").nth(1).waitFor({ timeout: 60000 });
    await shot("09-chat");

    step("comparing runs overlays their curves");
    await page.goto(`${url}/runs`);
    await page.locator("input.compare").first().check();
    await page.locator("#compare-chart canvas").waitFor();
    await shot("10-runs");

    step("the ledger: a proof verified in the page");
    await page.goto(`${url}/ledger`);
    await page.locator("button.verify").first().click();
    await page.locator("#proof-result", { hasText: "Verified" }).waitFor();
    await shot("11-ledger-proof");

    step("a failed request shows a readable message");
    const resp = await page.goto(`${url}/datanets/no-such-datanet`);
    assert.equal(resp.status(), 404);
    assert.match(await page.locator(".error-page").textContent(), /not found/);
    await shot("12-not-found");

    step("every page: labelled controls at laptop width, no sideways scrolling at phone width");
    const pages = ["/datanets", "/datanets/new", "/datanets/essays", "/datanets/essays/edit", "/leaderboard", "/runs",
      "/runs/new", "/runs/1", "/chat", "/ledger", "/login", "/account"];
    for (const p of pages) {
      await page.goto(url + p);
      await labelled(page);
    }
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, storageState: await page.context().storageState() });
    const small = await phone.newPage();
    for (const p of pages) {
      await small.goto(url + p);
      await small.waitForLoadState("networkidle");
      const wide = await small.evaluate(() => document.documentElement.scrollWidth);
      assert.ok(wide <= 391, `${p} is ${wide}px wide on a 390px phone`);
      await small.screenshot({ path: `${shots}/phone${p.replaceAll("/", "-")}.png`, fullPage: true });
    }
    await phone.close();

    step("keyboard only: the skip link and the chat form");
    await page.goto(`${url}/chat`);
    await page.keyboard.press("Tab");
    assert.equal(await page.evaluate(() => document.activeElement.textContent), "Skip to content");

    step("the account page: a token made, shown once, listed, revoked");
    await page.goto(`${url}/account`);
    await page.locator("#tokens table").waitFor();
    await page.getByLabel("Label").fill("browser");
    await page.getByRole("button", { name: "New token" }).click();
    await page.locator("#new-token-value code", { hasText: "mrt_" }).waitFor();
    const made = await page.locator("#new-token-value code").textContent();
    assert.match(made, /^mrt_[0-9a-f]{64}$/);
    const tokenRow = page.locator("#tokens tr", { hasText: "browser" });
    await tokenRow.getByRole("button", { name: /Revoke/ }).click();
    await tokenRow.locator(".state", { hasText: "revoked" }).waitFor();
    const after = await page.evaluate(async (t) => (await fetch("/api/v1/me", { headers: { Authorization: `Bearer ${t}` } })).status, made);
    assert.equal(after, 401);
    await shot("13-account");

    step("signing out ends the session");
    await page.goto(`${url}/datanets`);
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByRole("link", { name: "Sign in" }).waitFor();
    const status = await page.evaluate(async () => (await fetch("/api/v1/me")).status);
    assert.equal(status, 401);
    await page.close();
  }
  if (failures.length) throw new Error(failures.join("\n"));
  console.log("browser test passed");
} finally {
  await browser.close();
}
