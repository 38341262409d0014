// The customer's card page inside Telegram: a client of the gateway's
// /webapp/v1 API, authenticated by the initData Telegram hands the page.
//
// Money arrives as integers in minor units and is shown and read with string
// and integer arithmetic only: a float never carries an amount here.
// The card's number is fetched from the issuer's URL by this page itself, so
// it never passes through cardflow.
"use strict";

const API_BASE = new URL("v1/", document.baseURI);
const FEED_PAGE_SIZE = 20;
const EXPONENTS = JSON.parse(document.getElementById("minor-unit-exponents").textContent);
// The largest amount cardflow takes (schemas/money.py's AMOUNT_MINOR_MAX).
const AMOUNT_MINOR_MAX = 10 ** 15;
const MCC_PATTERN = /^[0-9]{4}$/;
const STATE_LABELS = {
  open: "Active",
  paused: "Frozen",
  closed: "Closed",
  pending_fulfillment: "Being made",
  pending_activation: "Waiting for activation",
  exception: "Waiting for a review",
  replaced: "Replaced",
  issuing: "Being issued",
};
const KIND_LABELS = {
  authorization: "Purchase",
  decline: "Declined purchase",
  reversal: "Purchase released",
  clearing: "Purchase",
  refund: "Refund",
  force_post: "Purchase",
  topup: "Top-up",
  fx: "Exchange",
  cashback: "Cashback",
  fee: "Fee",
  dispute: "Dispute",
  debt: "Debt",
  adjustment: "Adjustment",
};

// ----- where the initData comes from --------------------------------------------

/** The initData as Telegram hands it to a WebApp: its script's
 * `Telegram.WebApp.initData` when the page loaded it, else the launch
 * parameter `tgWebAppData` that Telegram puts in the URL's hash. */
function launchInitData() {
  const fromScript = window.Telegram?.WebApp?.initData;
  if (fromScript) {
    return fromScript;
  }
  const hash = location.hash.startsWith("#") ? location.hash.slice(1) : location.hash;
  return new URLSearchParams(hash).get("tgWebAppData") ?? "";
}

const INIT_DATA = launchInitData();

// ----- money ----------------------------------------------------------------------

function exponentOf(currency) {
  const exponent = EXPONENTS[currency];
  if (!Number.isInteger(exponent)) {
    throw new Error(`unknown currency ${currency}`);
  }
  return exponent;
}

/** `minor` units of `currency` as text, e.g. 8800 USD -> "88.00 USD". */
function formatMoney(minor, currency) {
  if (!Number.isSafeInteger(minor)) {
    throw new Error(`an amount is not an integer of minor units: ${minor}`);
  }
  const exponent = exponentOf(currency);
  const sign = minor < 0 ? "-" : "";
  const digits = String(Math.abs(minor)).padStart(exponent + 1, "0");
  const whole = digits.slice(0, digits.length - exponent);
  const fraction = exponent ? `.${digits.slice(digits.length - exponent)}` : "";
  return `${sign}${whole}${fraction} ${currency}`;
}

/** An amount typed in major units ("50", "12.5") as minor units; null for
 * an empty field (no limit). Throws with a message for anything else. */
function parseMoney(text, currency, what) {
  const typed = text.trim();
  if (typed === "") {
    return null;
  }
  const exponent = exponentOf(currency);
  const match = /^([0-9]{1,16})(?:\.([0-9]*))?$/.exec(typed);
  const fraction = match?.[2] ?? "";
  if (match === null || fraction.length > exponent) {
    const decimals = exponent ? `, with at most ${exponent} decimals` : ", with no decimals";
    throw new Error(`${what}: "${typed}" is not an amount of ${currency}${decimals}`);
  }
  const minor = Number(match[1] + fraction.padEnd(exponent, "0"));
  if (!Number.isSafeInteger(minor) || minor > AMOUNT_MINOR_MAX) {
    throw new Error(`${what}: ${typed} ${currency} is more than any limit can be`);
  }
  return minor;
}

/** Minor units as the form shows them: "50.00", or empty for no limit. */
function moneyField(minor, currency) {
  return minor === null ? "" : formatMoney(minor, currency).split(" ")[0];
}

// ----- the API --------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    this.status = status;
    this.code = code;
  }
}

function detailOf(answer, status) {
  if (typeof answer?.detail === "string") {
    return answer.detail;
  }
  if (Array.isArray(answer?.detail)) {
    return answer.detail.map((error) => `${(error.loc ?? []).join(".")}: ${error.msg}`).join("; ");
  }
  return `the server answered ${status}`;
}

async function api(path, { method = "GET", body, idempotencyKey } = {}) {
  const headers = { Authorization: `tma ${INIT_DATA}` };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
  }
  if (idempotencyKey !== undefined) {
    headers["Idempotency-Key"] = idempotencyKey;
  }
  const response = await fetch(new URL(path, API_BASE), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
  const answer = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, answer?.code ?? "", detailOf(answer, response.status));
  }
  return answer;
}

function cardPath(cardId, rest = "") {
  return `cards/${encodeURIComponent(cardId)}${rest}`;
}

/** A new Idempotency-Key: one per press, so a press acts once however often it is sent. */
function newIdempotencyKey() {
  if (typeof crypto.randomUUID === "function") {
    return crypto.randomUUID();
  }
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

// ----- the page ---------------------------------------------------------------------

const page = {
  loading: document.getElementById("loading"),
  refused: document.getElementById("refused"),
  balances: document.getElementById("balances"),
  wallets: document.getElementById("wallets"),
  debts: document.getElementById("debts"),
  cards: document.getElementById("cards"),
  noCards: document.getElementById("no-cards"),
  cardList: document.getElementById("card-list"),
  feed: document.getElementById("feed"),
  noEntries: document.getElementById("no-entries"),
  entries: document.getElementById("entries"),
  feedMessage: document.getElementById("feed-message"),
  more: document.getElementById("more"),
};
let refused = false;
let nextCursor = null;

function element(tag, className, text) {
  const made = document.createElement(tag);
  if (className) {
    made.className = className;
  }
  if (text !== undefined) {
    made.textContent = text;
  }
  return made;
}

/** Show why nothing is shown, and nothing else: every piece of data goes. */
function refuse(title, detail) {
  refused = true;
  for (const section of [page.balances, page.cards, page.feed]) {
    section.hidden = true;
  }
  for (const list of [page.wallets, page.debts, page.cardList, page.entries]) {
    list.replaceChildren();
  }
  page.loading.hidden = true;
  document.getElementById("refused-title").textContent = title;
  document.getElementById("refused-detail").textContent = detail;
  page.refused.hidden = false;
}

/** An error of the whole page: a refused initData or user ends it. */
function failed(error) {
  if (error instanceof ApiError && error.status === 401) {
    refuse("Open this page from the bot", error.message);
  } else if (error instanceof ApiError && error.status === 403) {
    refuse("This Telegram account is not linked to a customer", error.message);
  } else {
    refuse("Something went wrong", error.message);
  }
}

/** Whether `error` ended the page (so the caller shows nothing of its own). */
function endedThePage(error) {
  if (error instanceof ApiError && error.status === 401) {
    failed(error);
    return true;
  }
  return refused;
}

function showBalances(me) {
  page.wallets.replaceChildren(
    ...me.wallets.map((wallet) => {
      const item = element("li", "wallet");
      item.dataset.currency = wallet.currency;
      item.append(
        element("span", "currency", wallet.currency),
        element("span", "available", formatMoney(wallet.available_minor, wallet.currency)),
        " available, ",
        element("span", "held", formatMoney(wallet.pending_minor, wallet.currency)),
        " held",
      );
      return item;
    }),
  );
  page.debts.replaceChildren(
    ...me.debts
      .filter((debt) => debt.outstanding_minor > 0)
      .map((debt) =>
        element("li", "debt", `Owed: ${formatMoney(debt.outstanding_minor, debt.currency)}`),
      ),
  );
  page.balances.hidden = false;
}

// ----- cards ------------------------------------------------------------------------

function showCards(me) {
  page.noCards.hidden = me.cards.length > 0;
  page.cardList.replaceChildren(...me.cards.map((card) => cardElement(card)));
  page.cards.hidden = false;
}

function cardElement(summary) {
  const fragment = document.getElementById("card-template").content.cloneNode(true);
  const root = fragment.querySelector(".card");
  root.dataset.cardId = summary.card_id;
  root.setAttribute("aria-label", `Card ${summary.card_id}`);
  const part = (selector) => root.querySelector(selector);
  part(".kind").textContent = summary.kind === "physical" ? "Physical" : "Virtual";
  part(".card-id").textContent = summary.card_id;
  const card = { id: summary.card_id, state: summary.state, view: null, root, part };
  showState(card);
  part(".toggle").addEventListener("click", () => toggle(card));
  part(".reveal").addEventListener("click", () => reveal(card));
  part(".hide").addEventListener("click", () => hideSecret(card));
  part(".limits").addEventListener("submit", (event) => {
    event.preventDefault();
    saveLimits(card);
  });
  loadCard(card);
  return root;
}

function say(card, text, isError = false) {
  const message = card.part(".message");
  message.textContent = text;
  message.classList.toggle("error", isError);
}

function showState(card) {
  const state = card.view?.state ?? card.state;
  card.part(".state").textContent = STATE_LABELS[state] ?? state;
  card.root.dataset.state = state;
  const toggle = card.part(".toggle");
  const acts = card.view !== null && (state === "open" || state === "paused");
  toggle.hidden = !acts;
  toggle.textContent = state === "paused" ? "Unfreeze" : "Freeze";
  card.part(".reveal").hidden = card.view === null || state === "closed";
  card.part(".limits").hidden = card.view === null || state === "closed";
}

function showLimits(card) {
  const { limits, currency } = card.view;
  const form = card.part(".limits");
  form.elements.per_transaction.value = moneyField(limits.per_transaction_minor, currency);
  form.elements.per_day.value = moneyField(limits.per_day_minor, currency);
  form.elements.per_month.value = moneyField(limits.per_month_minor, currency);
  form.elements.blocked_mccs.value = limits.blocked_mccs.join(", ");
  card.part(".spent").textContent =
    `Spent today ${formatMoney(card.view.spent_day_minor, currency)}, ` +
    `this month ${formatMoney(card.view.spent_month_minor, currency)}`;
}

/** The card as its own process has it now: its state and limits. */
async function loadCard(card) {
  try {
    card.view = await api(cardPath(card.id));
  } catch (error) {
    if (!endedThePage(error)) {
      // A card still being issued has no process to ask yet.
      card.view = null;
      if (!(error instanceof ApiError && error.status === 404)) {
        say(card, error.message, true);
      }
    }
    return;
  }
  showState(card);
  showLimits(card);
}

async function toggle(card) {
  const button = card.part(".toggle");
  const action = card.view.state === "paused" ? "unfreeze" : "freeze";
  button.disabled = true;
  say(card, action === "freeze" ? "Freezing…" : "Unfreezing…");
  try {
    await api(cardPath(card.id, "/actions"), {
      method: "POST",
      body: { action },
      idempotencyKey: newIdempotencyKey(),
    });
    card.view = await api(cardPath(card.id));
    showState(card);
    say(card, action === "freeze" ? "Card frozen" : "Card unfrozen");
  } catch (error) {
    if (!endedThePage(error)) {
      say(card, error.message, true);
    }
  } finally {
    button.disabled = false;
  }
}

function limitsOf(card) {
  const form = card.part(".limits");
  const currency = card.view.currency;
  const mccs = form.elements.blocked_mccs.value
    .split(/[\s,]+/)
    .filter((mcc) => mcc !== "");
  const wrong = mccs.find((mcc) => !MCC_PATTERN.test(mcc));
  if (wrong !== undefined) {
    throw new Error(`"${wrong}" is not a merchant code: an MCC is 4 digits`);
  }
  return {
    per_transaction_minor: parseMoney(form.elements.per_transaction.value, currency, "Per purchase"),
    per_day_minor: parseMoney(form.elements.per_day.value, currency, "Per day"),
    per_month_minor: parseMoney(form.elements.per_month.value, currency, "Per month"),
    blocked_mccs: mccs,
  };
}

async function saveLimits(card) {
  let limits;
  try {
    limits = limitsOf(card);
  } catch (error) {
    say(card, error.message, true);
    return;
  }
  const button = card.part(".limits button[type=submit]");
  button.disabled = true;
  say(card, "Saving limits…");
  try {
    const stored = await api(cardPath(card.id, "/limits"), {
      method: "PUT",
      body: limits,
      idempotencyKey: newIdempotencyKey(),
    });
    card.view = { ...card.view, limits: stored };
    showLimits(card);
    say(card, "Limits saved");
  } catch (error) {
    if (!endedThePage(error)) {
      say(card, error.message, true);
    }
  } finally {
    button.disabled = false;
  }
}

/** The number, expiry and CVV, from the issuer itself with a single-use token. */
async function reveal(card) {
  const button = card.part(".reveal");
  button.disabled = true;
  say(card, "Asking the issuer…");
  try {
    const token = await api(cardPath(card.id, "/reveal"), { method: "POST" });
    const url = new URL(token.url);
    if (url.protocol !== "https:" && url.protocol !== "http:") {
      throw new Error("the issuer's address is not a web address");
    }
    // No initData and no cookies go to the issuer: the token is all it needs.
    const response = await fetch(url, {
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    const details = await response.json().catch(() => null);
    if (!response.ok) {
      throw new Error(`the issuer did not show the card: ${detailOf(details, response.status)}`);
    }
    card.part(".pan").textContent = details.pan.replace(/(.{4})(?=.)/g, "$1 ");
    card.part(".expiry").textContent =
      `${String(details.exp_month).padStart(2, "0")}/${String(details.exp_year).slice(-2)}`;
    card.part(".cvv").textContent = details.cvv;
    card.part(".secret").hidden = false;
    say(card, "");
  } catch (error) {
    if (!endedThePage(error)) {
      say(card, error.message, true);
    }
  } finally {
    button.disabled = false;
  }
}

function hideSecret(card) {
  for (const selector of [".pan", ".expiry", ".cvv"]) {
    card.part(selector).textContent = "";
  }
  card.part(".secret").hidden = true;
}

// ----- the feed ----------------------------------------------------------------------

function entryElement(entry) {
  const item = element("li", `entry ${entry.kind}`);
  item.dataset.entryId = entry.id;
  item.dataset.kind = entry.kind;
  const what = entry.merchant?.name ?? KIND_LABELS[entry.kind] ?? entry.kind;
  const when = entry.occurred_at.slice(0, 16).replace("T", " ");
  item.append(
    element("span", "what", what),
    element("span", "amount", formatMoney(entry.amount_minor, entry.currency)),
    element("span", "status", entry.status),
    element("time", "when", when),
  );
  if (entry.reason) {
    item.append(element("p", "reason", entry.reason));
  }
  return item;
}

async function loadFeed(cursor) {
  const query = new URLSearchParams({ limit: String(FEED_PAGE_SIZE) });
  if (cursor !== null) {
    query.set("cursor", cursor);
  }
  const feedPage = await api(`transactions?${query}`);
  if (refused) {
    return;
  }
  page.entries.append(...feedPage.data.map(entryElement));
  nextCursor = feedPage.next_cursor;
  page.more.hidden = nextCursor === null;
  page.noEntries.hidden = page.entries.childElementCount > 0;
  page.feed.hidden = false;
}

page.more.addEventListener("click", async () => {
  page.more.disabled = true;
  page.feedMessage.textContent = "";
  try {
    await loadFeed(nextCursor);
  } catch (error) {
    if (!endedThePage(error)) {
      page.feedMessage.textContent = error.message;
    }
  } finally {
    page.more.disabled = false;
  }
});

// ----- start ---------------------------------------------------------------------------

async function start() {
  const telegram = window.Telegram?.WebApp;
  telegram?.ready?.();
  telegram?.expand?.();
  if (!INIT_DATA) {
    refuse(
      "Open this page from the bot",
      "This page shows your cards and money when the bot opens it in Telegram.",
    );
    return;
  }
  try {
    const [me] = await Promise.all([api("me"), loadFeed(null)]);
    if (refused) {
      return;
    }
    showBalances(me);
    showCards(me);
    page.loading.hidden = true;
  } catch (error) {
    failed(error);
  }
}

start();
