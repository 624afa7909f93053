// Shared by the shopper page, the operator page and the demo gateway:
// words in two languages (Chinese first), calls to the API, the server's
// clock, and small DOM helpers. Plain JavaScript, no build step.
"use strict";

const DG = (() => {
  const words = { zh: {}, en: {} };
  let lang = localStorage.getItem("dg.lang") || "zh";

  /** Adds a page's words: {key: [zh, en]}. */
  function addWords(table) {
    for (const [key, [zh, en]] of Object.entries(table)) {
      words.zh[key] = zh;
      words.en[key] = en;
    }
  }

  /** The word for `key` in the current language, `{name}` filled from `params`. */
  function t(key, params = {}) {
    const text = words[lang][key] ?? words.zh[key] ?? key;
    return text.replace(/\{(\w+)\}/g, (_, name) => (name in params ? params[name] : `{${name}}`));
  }

  const switched = [];
  function setLang(next) {
    lang = next;
    localStorage.setItem("dg.lang", next);
    document.documentElement.lang = next === "zh" ? "zh-CN" : "en";
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
      el.placeholder = t(el.dataset.i18nPlaceholder);
    }
    for (const fn of switched) fn();
  }
  function onLangChange(fn) {
    switched.push(fn);
  }

  // --- the connection: a banner while the server does not answer ---------
  function connection(up) {
    const banner = document.getElementById("offline");
    if (banner) banner.hidden = up;
  }

  /**
   * One API call. Resolves to {status, body, headers}, whatever the status;
   * rejects only when the server could not be reached (the banner shows).
   */
  async function api(method, path, { body, token, headers = {} } = {}) {
    const init = { method, headers: { ...headers }, cache: "no-store" };
    if (token) init.headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      connection(false);
      throw e;
    }
    connection(true);
    const text = await response.text();
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = { error: "bad_response", message: text.slice(0, 200) };
    }
    return { status: response.status, body: parsed, headers: response.headers };
  }

  // --- the server's clock --------------------------------------------------
  // Countdowns run on the server's time, not the device's: the device's
  // clock may be minutes off. Each sync takes a few samples of
  // GET /api/v1/time and keeps the one with the shortest round trip,
  // assuming the answer was stamped halfway through it.
  const clock = {
    offset: 0,
    rtt: null,
    synced: false,
    localNow: () => performance.timeOrigin + performance.now(),
    now() {
      return this.localNow() + this.offset;
    },
    async sync(samples = 4) {
      let best = null;
      for (let i = 0; i < samples; i++) {
        const sent = this.localNow();
        let answer;
        try {
          answer = await api("GET", "/api/v1/time");
        } catch {
          return false;
        }
        const received = this.localNow();
        if (answer.status !== 200) continue;
        const rtt = received - sent;
        const offset = answer.body.unix_ms + rtt / 2 - received;
        if (!best || rtt < best.rtt) best = { rtt, offset };
      }
      if (!best) return false;
      this.offset = best.offset;
      this.rtt = best.rtt;
      this.synced = true;
      return true;
    },
    /** Syncs now, every `every` ms, and whenever the page is shown again. */
    keepSynced(every = 60_000) {
      this.sync();
      setInterval(() => this.sync(), every);
      document.addEventListener("visibilitychange", () => {
        if (!document.hidden) this.sync();
      });
    },
  };

  // --- formatting -----------------------------------------------------------
  function money(amount) {
    return amount == null ? "—" : `¥${amount}`;
  }
  function pad(n) {
    return String(n).padStart(2, "0");
  }
  /** "1d 02:03:04" / "02:03:04" / "03:04" for a span in ms. */
  function span(ms) {
    const total = Math.max(0, Math.ceil(ms / 1000));
    const days = Math.floor(total / 86400);
    const h = Math.floor((total % 86400) / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = total % 60;
    const clockText = h || days ? `${pad(h)}:${pad(m)}:${pad(s)}` : `${pad(m)}:${pad(s)}`;
    return days ? `${days}${t("days_short")} ${clockText}` : clockText;
  }
  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return d.toLocaleString(lang === "zh" ? "zh-CN" : "en-GB", { hour12: false });
  }

  /** A random idempotency key (works where crypto.randomUUID does not). */
  function randomKey() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** Builds an element: el("button", {class: "x", onclick}, "text", child…). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value == null || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key in node && key !== "list") node[key] = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child == null || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  /** Replaces a node's children, skipping null and false as el() does. */
  function fill(node, ...children) {
    node.replaceChildren(...children.flat().filter((c) => c != null && c !== false));
  }

  /**
   * A form in a <dialog>: fields [{name, label, type, options, value,
   * required}]; resolves to the values, or null when cancelled.
   */
  function askForm(title, fields, submitLabel) {
    return new Promise((resolve) => {
      const inputs = {};
      const rows = fields.map((f) => {
        let input;
        if (f.type === "select") {
          input = el("select", { name: f.name },
            f.options.map(([value, label]) => el("option", { value, selected: value === f.value }, label)));
        } else if (f.type === "checkbox") {
          input = el("input", { type: "checkbox", name: f.name, checked: !!f.value });
        } else {
          input = el("input", { type: f.type || "text", name: f.name, value: f.value ?? "", required: !!f.required });
        }
        inputs[f.name] = input;
        return el("label", { class: f.type === "checkbox" ? "check" : "" }, el("span", {}, f.label), input);
      });
      const dialog = el("dialog", { class: "form-dialog" });
      const form = el("form", { method: "dialog" },
        el("h3", {}, title),
        rows,
        el("div", { class: "actions" },
          el("button", { type: "button", class: "secondary", onclick: () => dialog.close("cancel") }, t("cancel")),
          el("button", { type: "submit", value: "ok" }, submitLabel || t("confirm"))));
      dialog.append(form);
      dialog.addEventListener("close", () => {
        const ok = dialog.returnValue === "ok";
        const values = {};
        for (const [name, input] of Object.entries(inputs)) {
          values[name] = input.type === "checkbox" ? input.checked : input.value.trim();
        }
        dialog.remove();
        resolve(ok ? values : null);
      });
      document.body.append(dialog);
      dialog.showModal();
    });
  }

  addWords({
    days_short: ["天", "d"],
    cancel: ["取消", "Cancel"],
    confirm: ["确定", "OK"],
    offline: ["与服务器的连接中断，正在重试…", "Lost the connection to the server; retrying…"],
  });

  return { addWords, t, setLang, onLangChange, get lang() { return lang; }, api, clock, money, span, when, randomKey, sleep, el, fill, askForm };
})();
