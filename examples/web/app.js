// The web example's page: follows one Confab chat live and posts to it, straight from the
// browser, with a client token that this page's own server (server.py) mints for it. The
// application token stays on that server.
//
// What the page shows is meant to be read by people and by the browser test
// (tests/e2e/browser.rs): #status carries data-state ("connecting", "live" or "error"), every
// message is an <li class="message" data-number="…"> in #messages, which gets
// data-history="loaded" once the messages written before the page opened are in, and the form
// counts its outcomes in data-sent and data-failed.
"use strict";

(() => {
  const statusEl = document.getElementById("status");
  const list = document.getElementById("messages");
  const form = document.getElementById("composer");
  const input = document.getElementById("body");
  const button = document.getElementById("send");

  /** The most messages kept on the page. */
  const KEEP = 200;
  /** Messages per page when loading what was written before the page opened. */
  const PER_PAGE = 50;

  let session = null; // the latest /token answer, plus when it should be renewed (renewAt)
  let source = null; // the EventSource following the chat
  let cursor = ""; // the id of the last event received: where a new subscription resumes
  let historyLoaded = false;
  let chatDeleted = false;
  let renewTimer = 0;
  let retryTimer = 0;
  let retryDelay = 1000;

  function setStatus(state, text) {
    statusEl.dataset.state = state;
    statusEl.textContent = text;
  }

  function describe(status, body) {
    const error = body && body.error;
    return error ? `${status} ${error.code}: ${error.message}` : `HTTP ${status}`;
  }

  function unreachable() {
    return (
      `cannot reach Confab at ${session.api}: it is down, or this page's origin ` +
      `(${location.origin}) is not among the application's allowed origins`
    );
  }

  function chatUrl(path) {
    const token = encodeURIComponent(session.token);
    return `${session.api}/api/v1/applications/${token}/chats/${session.chat}${path}`;
  }

  // --- The client token -------------------------------------------------------------------

  async function renewToken() {
    let response;
    try {
      response = await fetch("/token", { cache: "no-store" });
    } catch (e) {
      throw new Error(`cannot reach this page's server for a client token (${e.message})`);
    }
    const body = await response.json().catch(() => null);
    if (!response.ok || !body || !body.token) {
      throw new Error(`no client token: ${describe(response.status, body)}`);
    }
    // Plan the renewal on the lifetime the server states (expires_in), not on this machine's
    // clock against expires_at: the two clocks may disagree.
    const lifetime =
      Number(body.expires_in) > 0
        ? Number(body.expires_in) * 1000
        : Date.parse(body.expires_at) - Date.now();
    // Renew once four fifths of its life is over, so that a slow renewal still ends in time.
    body.renewAt = Date.now() + Math.max(5000, (lifetime || 60000) * 0.8);
    session = body;
    document.getElementById("chat-label").textContent = `#${body.chat}`;
    clearTimeout(renewTimer);
    renewTimer = setTimeout(renewInBackground, body.renewAt - Date.now());
    return body;
  }

  async function renewInBackground() {
    try {
      await renewToken();
    } catch (e) {
      setStatus("error", `${e.message}; trying again`);
      clearTimeout(renewTimer);
      renewTimer = setTimeout(renewInBackground, 5000);
      return;
    }
    // The stream's URL holds the token: carry on with the new one from where the old one was.
    if (source && !chatDeleted) subscribe();
  }

  // --- Showing messages ---------------------------------------------------------------------

  function show(message) {
    if (!message || typeof message.number !== "number") return;
    let item = list.querySelector(`li[data-number="${message.number}"]`);
    if (!item) {
      item = document.createElement("li");
      item.className = "message";
      item.dataset.number = String(message.number);
      const number = document.createElement("span");
      number.className = "number";
      number.textContent = `#${message.number}`;
      const body = document.createElement("span");
      body.className = "body";
      const time = document.createElement("time");
      time.className = "time";
      item.append(number, body, time);
      // In number order, whatever order they arrive in (live events, pages, own posts).
      const after = Array.from(list.children).find(
        (li) => Number(li.dataset.number) > message.number,
      );
      list.insertBefore(item, after || null);
      while (list.children.length > KEEP) list.firstElementChild.remove();
      if (!after) item.scrollIntoView({ block: "nearest" });
    }
    // textContent, never innerHTML: a message body is text, whatever it contains.
    if (typeof message.body === "string") item.querySelector(".body").textContent = message.body;
    if (message.created_at) {
      const time = item.querySelector(".time");
      time.dateTime = message.created_at;
      time.textContent = new Date(message.created_at).toLocaleTimeString();
    }
  }

  function forget(number) {
    const item = list.querySelector(`li[data-number="${number}"]`);
    if (item) item.remove();
  }

  /** A live event's message: SSE carries the message itself; accept a {type, data} frame too. */
  function payload(event) {
    const data = JSON.parse(event.data);
    return data && typeof data.number !== "number" && data.data ? data.data : data;
  }

  function nextLink(header) {
    const match = /<([^>]*)>\s*;\s*rel="next"/.exec(header || "");
    return match ? new URL(match[1], session.api).href : null;
  }

  /** What was written before the page subscribed: the chat's latest page of messages. */
  async function loadHistory() {
    let page = 1;
    try {
      const response = await fetch(chatUrl(""));
      if (response.ok) {
        const chat = await response.json();
        page = Math.max(1, Math.ceil((chat.messages_count || 0) / PER_PAGE));
      }
    } catch (e) {
      // Page 1, then; the request below says what is wrong, if anything is.
    }
    let url = chatUrl(`/messages?page=${page}&per_page=${PER_PAGE}`);
    // The count may lag the messages a little: follow "next" to the end (a few pages at most).
    for (let pages = 0; url && pages < 5; pages++) {
      let response;
      try {
        response = await fetch(url);
      } catch (e) {
        throw new Error(`cannot load the messages: ${unreachable()}`);
      }
      const body = await response.json().catch(() => null);
      if (!response.ok || !Array.isArray(body)) {
        throw new Error(`cannot load the messages: ${describe(response.status, body)}`);
      }
      if (body.length === 0 && page > 1 && pages === 0) {
        // The count ran ahead of the list (deletions): the page before holds the latest.
        page -= 1;
        url = chatUrl(`/messages?page=${page}&per_page=${PER_PAGE}`);
        continue;
      }
      body.forEach(show);
      url = nextLink(response.headers.get("Link"));
    }
    historyLoaded = true;
    list.dataset.history = "loaded";
  }

  // --- Following the chat -------------------------------------------------------------------

  /** Why the stream could not open: EventSource does not say, so ask with a plain request. */
  async function diagnose() {
    try {
      const response = await fetch(chatUrl("/messages?per_page=1"));
      if (response.ok) return "the stream was refused or cut off";
      return describe(response.status, await response.json().catch(() => null));
    } catch (e) {
      return unreachable();
    }
  }

  function subscribe() {
    clearTimeout(retryTimer);
    if (source) source.close();
    const resumeFrom = cursor;
    const query = resumeFrom ? `?since=${encodeURIComponent(resumeFrom)}` : "";
    const es = new EventSource(chatUrl(`/events${query}`));
    source = es;
    let ready = false;
    const current = () => es === source;

    es.addEventListener("ready", (event) => {
      if (!current()) return;
      ready = true;
      retryDelay = 1000;
      if (event.lastEventId) cursor = event.lastEventId;
      setStatus("live", `Following chat ${session.chat} live`);
      if (!historyLoaded) loadHistory().catch((e) => setStatus("error", e.message));
    });

    const onMessage = (event) => {
      if (!current()) return;
      if (event.lastEventId) cursor = event.lastEventId;
      show(payload(event));
    };
    es.addEventListener("message.created", onMessage);
    es.addEventListener("message.updated", onMessage);
    es.addEventListener("message.deleted", (event) => {
      if (!current()) return;
      if (event.lastEventId) cursor = event.lastEventId;
      forget(payload(event).number);
    });

    es.addEventListener("end", (event) => {
      if (!current()) return;
      let end = {};
      try {
        end = JSON.parse(event.data);
      } catch (e) {
        // An end without a reason: reconnect as for any other.
      }
      if (end.id) cursor = end.id;
      es.close();
      if (end.reason === "chat_deleted") {
        chatDeleted = true;
        setStatus("error", "This chat was deleted.");
        return;
      }
      setStatus("connecting", `The stream ended (${end.reason || "no reason given"}); reconnecting…`);
      // "revoked": the application token was rotated, which invalidates every client token.
      scheduleRetry(end.reason === "revoked");
    });

    es.onerror = async () => {
      if (!current()) return;
      // Reconnect here rather than leave it to EventSource, so that the new request carries
      // the current client token and the cursor (?since=), not the URL of the first one.
      es.close();
      if (ready) {
        setStatus("connecting", "Connection lost; reconnecting…");
        scheduleRetry(false);
        return;
      }
      if (resumeFrom) {
        // Perhaps the cursor is older than Confab keeps (410): start afresh from the list.
        cursor = "";
        historyLoaded = false;
      }
      const delay = retryDelay;
      scheduleRetry(true);
      let reason = await diagnose();
      if (resumeFrom && reason === "the stream was refused or cut off") {
        reason = "it could not resume from the last event received (too old?), so it starts afresh";
      }
      if (current() && !ready) {
        setStatus(
          "error",
          `Cannot follow chat ${session.chat}: ${reason}. Trying again in ${delay / 1000} s.`,
        );
      }
    };
  }

  /** Subscribes again after a growing delay; with `renew`, with a new client token first. */
  function scheduleRetry(renew) {
    clearTimeout(retryTimer);
    const delay = retryDelay;
    retryDelay = Math.min(retryDelay * 2, 30000);
    retryTimer = setTimeout(async () => {
      try {
        if (renew || !session || Date.now() >= session.renewAt) await renewToken();
        subscribe();
      } catch (e) {
        setStatus("error", e.message);
        scheduleRetry(true);
      }
    }, delay);
  }

  // --- Posting ------------------------------------------------------------------------------

  function newKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  }

  function post(text, key) {
    return fetch(chatUrl("/messages"), {
      method: "POST",
      // One Idempotency-Key per message: sent again, it cannot post the message twice.
      headers: { "Content-Type": "application/json", "Idempotency-Key": key },
      body: JSON.stringify({ body: text }),
    });
  }

  function count(name) {
    form.dataset[name] = String(Number(form.dataset[name] || 0) + 1);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value;
    if (!text.trim() || !session) return;
    button.disabled = true;
    try {
      const key = newKey();
      let response = await post(text, key);
      if (response.status === 401) {
        // Expired between renewals (a laptop that slept through one): renew, send again.
        await renewToken();
        response = await post(text, key);
      }
      const body = await response.json().catch(() => null);
      if (!response.ok) throw new Error(`Not sent: ${describe(response.status, body)}`);
      show(body);
      input.value = "";
      count("sent");
      if (source && source.readyState === EventSource.OPEN) {
        setStatus("live", `Following chat ${session.chat} live`);
      }
    } catch (e) {
      count("failed");
      setStatus("error", e instanceof TypeError ? `Not sent: ${unreachable()}` : e.message);
    } finally {
      button.disabled = false;
      input.focus();
    }
  });

  // --- Start --------------------------------------------------------------------------------

  async function start() {
    setStatus("connecting", "Getting a client token…");
    try {
      await renewToken();
    } catch (e) {
      setStatus("error", e.message);
      scheduleRetry(true);
      return;
    }
    setStatus("connecting", `Connecting to chat ${session.chat}…`);
    subscribe();
  }

  start();
})();
