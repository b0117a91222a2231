// The gateway's /docs (and /redoc) in headless Chromium, with every request to another host
// blocked: the pages must work on a network without internet access.
//
//   node docs.mjs BASE_URL SCREENSHOT_PNG
//
// Opens /docs, checks the description, the quick start and every operation listed below, runs
// "Try it out" on putKey (a new key) and then getKey (expects 200 and the same body), saves a
// full-page screenshot; then opens /redoc and checks it renders the operations too. Exits 0 when
// all of that held, 1 with a message saying what did not (and a screenshot beside the requested
// one, "-failure.png"), 2 on bad usage. CHROMIUM overrides the browser (default: Debian's).

import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const OPERATIONS = [
  'getKey', 'headKey', 'putKey', 'deleteKey', 'invalidateKey',
  'livez', 'readyz', 'adminSummary', 'adminBreakers', 'adminTopology',
];
const LOCAL_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]']);
// ReDoc 2's "API docs by Redocly" footer asks for this image, and hides it when it cannot load.
const REDOC_LOGO = 'https://cdn.redoc.ly/redoc/logo-mini.svg';
const DEADLINE_MS = 45_000; // the whole run; the pytest side allows a little more
const STEP_MS = 15_000; // one wait or action

const [baseArg, screenshotArg] = process.argv.slice(2);
if (!baseArg || !screenshotArg) {
  console.error('usage: node docs.mjs BASE_URL SCREENSHOT_PNG');
  process.exit(2);
}
const base = baseArg.replace(/\/+$/, '');
const screenshot = path.resolve(screenshotArg);
const failureShot = screenshot.replace(/\.png$/, '') + '-failure.png';
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

class CheckFailed extends Error {}

function check(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

let blocked = []; // requests to other hosts, aborted
let pageErrors = []; // uncaught exceptions and console errors in the page
const log = (message) => console.log(`docs.mjs: ${message}`);
let context; // the browser, closed in every way out
let userDataDir;

async function cleanUp() {
  await context?.close().catch(() => {});
  if (userDataDir) await rm(userDataDir, { recursive: true, force: true }).catch(() => {});
}

async function main() {
  userDataDir = await mkdtemp(path.join(tmpdir(), 'cachegw-chromium-'));
  let page;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
      viewport: { width: 1280, height: 900 },
      timeout: STEP_MS,
    });
    context.setDefaultTimeout(STEP_MS);
    await context.route('**/*', (route) => {
      const url = new URL(route.request().url());
      if (LOCAL_HOSTS.has(url.hostname) || LOCAL_HOSTS.has(`[${url.hostname}]`)) {
        return route.continue();
      }
      blocked.push(url.href);
      return route.abort('blockedbyclient');
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('pageerror', (error) => pageErrors.push(`uncaught: ${error.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error') pageErrors.push(`console: ${message.text()}`);
    });

    await checkSwaggerUi(page);
    await mkdir(path.dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });
    log(`screenshot: ${screenshot}`);
    check(blocked.length === 0, `/docs asked for other hosts: ${blocked.join(', ')}`);
    check(pageErrors.length === 0, `/docs had errors:\n  ${pageErrors.join('\n  ')}`);

    await checkRedoc(page);
    const unexpected = blocked.filter((url) => url !== REDOC_LOGO);
    check(unexpected.length === 0, `/redoc asked for other hosts: ${unexpected.join(', ')}`);
    const uncaught = pageErrors.filter((error) => error.startsWith('uncaught'));
    check(uncaught.length === 0, `/redoc had errors:\n  ${uncaught.join('\n  ')}`);
    if (blocked.length) log(`/redoc: blocked (hidden by ReDoc when it fails): ${REDOC_LOGO}`);
    log('ok');
  } catch (error) {
    if (page) {
      await page.screenshot({ path: failureShot, fullPage: true }).catch(() => {});
      console.error(`docs.mjs: page at failure: ${page.url()} (screenshot: ${failureShot})`);
    }
    if (blocked.length) console.error(`docs.mjs: blocked requests: ${blocked.join(', ')}`);
    if (pageErrors.length) console.error(`docs.mjs: page errors:\n  ${pageErrors.join('\n  ')}`);
    throw error;
  } finally {
    await cleanUp();
  }
}

// The opblock of an operation: Swagger UI gives it the id `operations-{tag}-{operationId}`.
function operationBlock(page, operationId) {
  return page.locator(`div.opblock[id^="operations-"][id$="-${operationId}"]`);
}

async function checkSwaggerUi(page) {
  const response = await page.goto(`${base}/docs`, { waitUntil: 'load' });
  check(response?.status() === 200, `GET /docs answered ${response?.status()}`);
  await page.locator('.swagger-ui .information-container .info .title').waitFor();
  const info = await page.locator('.swagger-ui .information-container').innerText();
  check(info.includes('cachegw'), `the title is missing from the page: ${info.slice(0, 200)}`);
  check(info.includes('A cache gateway'), 'the description is missing from the page');
  check(/quick start/i.test(info), 'the quick start is missing from the page');

  await page.locator('div.opblock').first().waitFor();
  const ids = await page.locator('div.opblock').evaluateAll((els) => els.map((el) => el.id));
  const missing = OPERATIONS.filter(
    (op) => !ids.some((id) => id.startsWith('operations-') && id.endsWith(`-${op}`)),
  );
  check(missing.length === 0, `operations missing from /docs: ${missing.join(', ')}`);
  log(`all ${OPERATIONS.length} operations listed (${ids.length} on the page)`);

  const key = `docs-browser-${Date.now()}`;
  const value = `hello from the docs page ${key}`;

  const put = await openForTrying(page, 'putKey');
  await fillParameter(put, 'key', key);
  const body = put.locator('.opblock-section-request-body');
  const file = body.locator('input[type="file"]');
  if (await file.count()) {
    const buffer = Buffer.from(value);
    await file.setInputFiles({ name: 'value.txt', mimeType: 'text/plain', buffer });
  } else {
    await body.locator('textarea').fill(value);
  }
  const putStatus = await execute(put);
  check(['200', '201'].includes(putStatus), `putKey answered ${putStatus}, expected 201 or 200`);
  log(`putKey ${key}: ${putStatus}`);

  const get = await openForTrying(page, 'getKey');
  await fillParameter(get, 'key', key);
  const getStatus = await execute(get);
  check(getStatus === '200', `getKey answered ${getStatus}, expected 200`);
  const details = get.locator('.live-responses-table tbody .response-col_description').first();
  const shown = await details.filter({ hasText: value }).waitFor().then(
    () => true,
    () => false,
  );
  const text = shown ? '' : await details.innerText();
  check(shown, `getKey's response on the page lacks the value: ${text.slice(0, 300)}`);
  log(`getKey ${key}: 200 with the value`);
}

async function openForTrying(page, operationId) {
  const block = operationBlock(page, operationId);
  await block.scrollIntoViewIfNeeded();
  if (!(await block.evaluate((el) => el.classList.contains('is-open')))) {
    await block.locator('.opblock-summary').first().click();
  }
  await block.locator('.opblock-body').waitFor();
  const tryOut = block.locator('button.try-out__btn', { hasText: 'Try it out' });
  if (await tryOut.count()) await tryOut.click(); // absent when tryItOutEnabled opens it already
  await block.locator('button.execute').waitFor();
  return block;
}

async function fillParameter(block, name, value) {
  const input = block.locator(`tr[data-param-name="${name}"] input`).first();
  await input.fill(value);
}

async function execute(block) {
  await block.locator('button.execute').click();
  const status = block.locator('.live-responses-table tbody .response-col_status').first();
  await status.waitFor();
  return (await status.innerText()).trim();
}

async function checkRedoc(page) {
  blocked = [];
  pageErrors = [];
  const response = await page.goto(`${base}/redoc`, { waitUntil: 'load' });
  check(response?.status() === 200, `GET /redoc answered ${response?.status()}`);
  await page.locator('.api-content h1').first().waitFor();
  const text = await page.locator('.api-content').innerText();
  check(text.includes('A cache gateway'), '/redoc lacks the description');
  const missing = [];
  for (const op of OPERATIONS) {
    if (!(await page.locator(`[id$="/operation/${op}"]`).count())) missing.push(op);
  }
  check(missing.length === 0, `operations missing from /redoc: ${missing.join(', ')}`);
  log('/redoc renders the description and every operation');
}

const timer = setTimeout(async () => {
  console.error(`docs.mjs: FAILED: not done within ${DEADLINE_MS / 1000} s`);
  await cleanUp();
  process.exit(1);
}, DEADLINE_MS);
timer.unref();

main().then(
  () => process.exit(0),
  (error) => {
    const message = error instanceof CheckFailed ? error.message : error.stack || String(error);
    console.error(`docs.mjs: FAILED: ${message}`);
    process.exit(1);
  },
);
