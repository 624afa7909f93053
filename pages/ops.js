// The operator page: every drop live (units left, outcomes per second,
// p99 of reserve, the queue, the order writer) from GET /admin/v1/live once
// a second, and the admin API's levers: limits, admit rates, restock, new
// drops, promotions and coupon batches, order search and after-sale review.
"use strict";

const { t, api, money, when, el, askForm, sleep } = DG;

DG.addWords({
  ops_title: ["运营台", "Operations"],
  sign_out: ["退出", "Sign out"],
  admin_sign_in: ["管理员令牌", "Admin token"],
  admin_token: ["admin_token（配置文件或 DROPGATE_ADMIN_TOKEN）", "admin_token (config file or DROPGATE_ADMIN_TOKEN)"],
  connect: ["连接", "Connect"],
  wrong_token: ["令牌不正确", "That token is not the admin token"],
  demo_token: ["演示模式的令牌：{token}", "The demo's token: {token}"],
  live: ["实时", "Live"],
  limits: ["限流", "Rate limits"],
  save: ["保存", "Save"],
  saved: ["已生效", "In force"],
  orders: ["订单", "Orders"],
  user: ["用户", "User"],
  drop: ["活动", "Drop"],
  any_status: ["全部状态", "Any status"],
  search: ["查询", "Search"],
  pending_refunds: ["待审核退款", "Refunds to review"],
  pending_returns: ["待审核退货", "Returns to review"],
  restock: ["补货", "Restock"],
  restocked: ["已补货：剩余 {n}", "Restocked: {n} left"],
  create: ["新建", "Create"],
  new_drop: ["活动", "Drop"],
  new_promotion: ["促销", "Promotion"],
  new_coupon: ["优惠券批次", "Coupon batch"],
  template: ["示例", "Example"],
  created: ["已创建", "Created"],
  promotions: ["促销", "Promotions"],
  coupon_batches: ["优惠券批次", "Coupon batches"],
  end: ["结束", "End"],
  writer: ["写入积压 {lag} · 死信 {dead} · 引擎中 {inflight} · 连接 {conns}", "Writer lag {lag} · dead letters {dead} · in engine {inflight} · connections {conns}"],
  round: ["本轮 {id}", "Round {id}"],
  opens: ["开售 {at}", "Opens {at}"],
  sku: ["SKU", "SKU"],
  left_of: ["剩余 / 本轮初始库存", "Left / round stock"],
  per_second: ["每秒", "per s"],
  total: ["累计", "total"],
  o_won: ["成交", "won"],
  o_sold_out: ["售罄", "sold out"],
  o_limit_exceeded: ["超限购", "limit"],
  o_rate_limited: ["限流", "rate limited"],
  o_overloaded: ["过载", "overloaded"],
  o_unavailable: ["后端不可用", "unavailable"],
  o_other: ["其他", "other"],
  p99: ["p99（近 1 秒）", "p99 (last second)"],
  queue: ["排队", "Queue"],
  q_waiting: ["等待", "waiting"],
  q_admitted: ["已放行", "admitted"],
  q_held: ["占用件数", "units held"],
  q_rate: ["放行速率/秒", "admit rate/s"],
  q_measured: ["实测", "measured"],
  set: ["设置", "Set"],
  cancel_order: ["取消", "Cancel"],
  approve: ["同意", "Approve"],
  reject: ["驳回", "Reject"],
  review_note: ["备注", "Note"],
  ship: ["发货（演示承运商）", "Ship (demo carrier)"],
  deliver: ["签收（演示承运商）", "Deliver (demo carrier)"],
  gateway_refund: ["退款到账（演示网关）", "Refund paid (demo gateway)"],
  no_results: ["没有订单", "No orders"],
  st_upcoming: ["未开始", "upcoming"],
  st_open: ["销售中", "open"],
  st_sold_out: ["已售罄", "sold out"],
  st_closed: ["已结束", "closed"],
});

const DROP_OUTCOMES = ["won", "sold_out", "limit_exceeded", "rate_limited", "overloaded", "unavailable", "other"];
const STATUSES = ["pending_payment", "paid", "awaiting_delivery", "deposit_paid", "shipped", "delivered", "completed",
  "cancelled", "expired", "forfeited", "refund_requested", "refunding", "refunded", "return_requested",
  "return_approved", "returned", "exchanged"];
const LIMIT_FIELDS = ["global_rps", "global_burst", "per_user_rps", "per_user_burst", "per_ip_rps", "per_ip_burst", "max_in_flight"];

const ops = {
  token: sessionStorage.getItem("dg.admin"),
  store: null,
  previous: null, // the last live snapshot and when it was taken
  blocks: new Map(), // drop id → its live block's elements
  drops: [],
  lastQuery: null,
};

function admin(method, path, body) {
  return api(method, path, { token: ops.token, body });
}

function errorText(answer) {
  return answer.body?.message || answer.body?.error || String(answer.status);
}

// --- live ---------------------------------------------------------------------------
/** The p99 of the requests between two snapshots, from their latency buckets. */
function p99(bounds, now, before) {
  const counts = now.map((n, i) => n - (before?.[i] ?? 0));
  const total = counts.reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    seen += counts[i];
    if (seen >= total * 0.99) return i < bounds.length ? `≤ ${bounds[i] * 1000} ms` : `> ${bounds[bounds.length - 1]} s`;
  }
  return null;
}

function liveBlock(drop) {
  const b = { root: el("div", { class: "live-drop", dataset: { drop: drop.id } }) };
  b.title = el("h3");
  b.badge = el("span", { class: "badge" });
  b.note = el("p", { class: "note" });
  b.skus = el("table", { class: "skus" });
  b.outcomes = el("table", { class: "outcomes" });
  b.queue = el("div", { class: "queue-figures" });
  b.rateInput = el("input", { type: "number", min: 1, class: "admit-rate" });
  b.rateMessage = el("span", { class: "message" });
  b.rateForm = el("form", { class: "row", onsubmit: (e) => setAdmitRate(e, drop.id, b) },
    el("label", {}, el("span", {}, t("q_rate")), b.rateInput), el("button", {}, t("set")), b.rateMessage);
  b.root.append(el("div", { class: "row spread" }, b.title, b.badge), b.note, b.skus, b.outcomes, b.queue, b.rateForm);
  document.getElementById("live-drops").append(b.root);
  return b;
}

async function setAdmitRate(event, dropId, block) {
  event.preventDefault();
  const answer = await admin("PUT", `/admin/v1/drops/${dropId}/queue`, { admit_rate: Number(block.rateInput.value) });
  block.rateMessage.textContent = answer.status === 200 ? t("saved") : errorText(answer);
}

function renderLive(snapshot, before, seconds) {
  document.getElementById("server-figures").textContent = t("writer", {
    lag: snapshot.order_writer_lag, dead: snapshot.dead_letters, inflight: snapshot.in_flight, conns: snapshot.open_connections,
  });
  ops.drops = snapshot.drops;
  for (const drop of snapshot.drops) {
    const b = ops.blocks.get(drop.id) || liveBlock(drop);
    ops.blocks.set(drop.id, b);
    const prior = before?.drops.find((d) => d.id === drop.id);
    b.title.textContent = `${drop.product} (${drop.id})`;
    b.badge.textContent = t(`st_${drop.round.state}`);
    b.badge.dataset.state = drop.round.state;
    b.note.textContent = `${t("round", { id: drop.round.id })} · ${t("opens", { at: when(drop.round.opens_at) })}`;
    b.skus.replaceChildren(
      el("tr", {}, el("th", {}, t("sku")), el("th", {}, t("left_of"))),
      ...drop.skus.map((s) => el("tr", { dataset: { sku: s.id } },
        el("td", {}, `${s.name} (${s.id})`),
        el("td", { class: "num remaining" }, `${s.remaining} / ${s.stock}`))));
    const now = drop.reserve.outcomes;
    const then = prior?.reserve.outcomes;
    const rate = (name) => (then && seconds > 0 ? (now[name] - then[name]) / seconds : 0);
    b.outcomes.replaceChildren(
      el("tr", {}, el("th"), DROP_OUTCOMES.map((o) => el("th", {}, t(`o_${o}`))), el("th", {}, t("p99"))),
      el("tr", { class: "rates" }, el("th", {}, t("per_second")),
        DROP_OUTCOMES.map((o) => el("td", { class: "num", dataset: { outcome: o, rate: rate(o) } }, rate(o).toFixed(1))),
        el("td", { class: "num p99" }, p99(snapshot.latency_buckets, drop.reserve.latency, prior?.reserve.latency) ?? "—")),
      el("tr", { class: "totals" }, el("th", {}, t("total")),
        DROP_OUTCOMES.map((o) => el("td", { class: "num", dataset: { outcome: o, total: now[o] } }, now[o])), el("td")));
    const q = drop.queue_figures;
    b.queue.hidden = !q;
    b.rateForm.hidden = !q;
    if (q) {
      b.queue.replaceChildren(el("strong", {}, t("queue")), " ",
        `${t("q_waiting")} ${q.waiting} · ${t("q_admitted")} ${q.admitted} · ${t("q_held")} ${q.held} · ${t("q_rate")} ${q.admit_rate} · ${t("q_measured")} ${q.measured_rate.toFixed(1)}`);
      if (document.activeElement !== b.rateInput) b.rateInput.value = q.admit_rate;
    }
  }
  fillRestockDrops();
}

async function liveLoop() {
  for (;;) {
    if (ops.token) {
      try {
        const answer = await admin("GET", "/admin/v1/live");
        if (answer.status === 200) {
          const at = answer.body.unix_ms;
          const before = ops.previous;
          const seconds = before ? (at - before.at) / 1000 : 0;
          renderLive(answer.body, before?.snapshot, seconds);
          ops.previous = { at, snapshot: answer.body };
        } else if (answer.status === 401) {
          signOut(t("wrong_token"));
        }
      } catch {
        /* the banner shows */
      }
    }
    await sleep(1000);
  }
}

// --- limits ---------------------------------------------------------------------------
async function loadLimits() {
  const answer = await admin("GET", "/admin/v1/limits");
  if (answer.status !== 200) return false;
  const form = document.getElementById("limits-form");
  form.replaceChildren(
    ...LIMIT_FIELDS.map((f) => el("label", {}, el("span", {}, f), el("input", { type: "number", min: 1, name: f, value: answer.body[f] }))),
    el("button", {}, t("save")));
  return true;
}

async function saveLimits(event) {
  event.preventDefault();
  const body = {};
  for (const f of LIMIT_FIELDS) body[f] = Number(event.target.elements[f].value);
  const answer = await admin("PUT", "/admin/v1/limits", body);
  document.getElementById("limits-message").textContent = answer.status === 200 ? t("saved") : errorText(answer);
}

// --- orders --------------------------------------------------------------------------
async function searchOrders(query) {
  ops.lastQuery = query;
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v) params.set(k, v);
  const answer = await admin("GET", `/admin/v1/orders?${params}`);
  const results = document.getElementById("order-results");
  if (answer.status !== 200) {
    results.replaceChildren(el("p", { class: "message" }, errorText(answer)));
    return;
  }
  const orders = answer.body.orders;
  if (!orders.length) {
    results.replaceChildren(el("p", { class: "note" }, t("no_results")));
    return;
  }
  results.replaceChildren(el("table", { class: "orders" },
    el("tr", {}, ["id", "user", "drop / sku", "qty", "status", "amount", "created", ""].map((h) => el("th", {}, h))),
    orders.map((o) => el("tr", { dataset: { order: o.id, status: o.status } },
      el("td", {}, o.id), el("td", {}, o.user_id), el("td", {}, `${o.drop_id} / ${o.sku}`), el("td", { class: "num" }, o.quantity),
      el("td", {}, o.status), el("td", { class: "num" }, money(o.paid_amount ?? o.amount_due)), el("td", {}, when(o.created_at)),
      el("td", { class: "actions" }, orderActions(o))))));
}

function orderActions(order) {
  const s = order.status;
  const button = (label, fn, cls = "secondary") => el("button", { class: cls, onclick: fn }, label);
  const actions = [];
  if (s === "pending_payment") actions.push(button(t("cancel_order"), () => act(`/admin/v1/orders/${order.id}/cancel`)));
  for (const [status, path] of [["refund_requested", "refund"], ["return_requested", "return"]]) {
    if (s === status) {
      actions.push(button(t("approve"), () => review(order, path, true), "approve"));
      actions.push(button(t("reject"), () => review(order, path, false)));
    }
  }
  const demo = ops.store?.demo;
  if (demo?.carrier && (s === "paid" || s === "awaiting_delivery")) actions.push(button(t("ship"), () => carrier(order, "shipped")));
  if (demo?.carrier && s === "shipped") actions.push(button(t("deliver"), () => carrier(order, "delivered")));
  if (demo?.gateway && (s === "refunding" || s === "return_approved")) {
    actions.push(button(t("gateway_refund"), () => act("/demo/v1/refunds", {
      order_id: order.id, refund_id: `demo-refund-${order.id}`, amount: order.paid_amount ?? order.amount_due,
    })));
  }
  return actions;
}

async function act(path, body) {
  const answer = await admin("POST", path, body);
  if (answer.status !== 200) alert(errorText(answer));
  if (ops.lastQuery) await searchOrders(ops.lastQuery);
}

async function review(order, path, approve) {
  const values = await askForm(approve ? t("approve") : t("reject"), [{ name: "note", label: t("review_note") }]);
  if (values) await act(`/admin/v1/orders/${order.id}/${path}`, { approve, note: values.note || null });
}

function carrier(order, event) {
  return act("/demo/v1/logistics", {
    order_id: order.id, event, at: new Date().toISOString(), carrier: "SF Express",
    tracking_number: `SF${order.id.replace(/[^A-Za-z0-9]/g, "").slice(-12)}`,
  });
}

// --- restock, create, promotions, coupons ---------------------------------------------
function fillRestockDrops() {
  const select = document.getElementById("restock-drop");
  const ids = ops.drops.map((d) => d.id);
  if ([...select.options].map((o) => o.value).join() !== ids.join()) {
    const chosen = select.value;
    select.replaceChildren(...ids.map((id) => el("option", { value: id, selected: id === chosen }, id)));
    fillRestockSkus();
  }
}

function fillRestockSkus() {
  const drop = ops.drops.find((d) => d.id === document.getElementById("restock-drop").value);
  document.getElementById("restock-sku").replaceChildren(...(drop?.skus || []).map((s) => el("option", { value: s.id }, s.id)));
}

async function restock(event) {
  event.preventDefault();
  const f = event.target.elements;
  // One id per press: a retried request adds the units once.
  const answer = await admin("POST", `/admin/v1/drops/${f.drop.value}/restock`, {
    sku: f.sku.value, units: Number(f.units.value), restock_id: DG.randomKey(),
  });
  document.getElementById("restock-message").textContent =
    answer.status === 200 ? t("restocked", { n: answer.body.stock?.remaining ?? "" }) : errorText(answer);
}

function iso(offsetMinutes) {
  return new Date(Date.now() + offsetMinutes * 60_000).toISOString().replace(/\.\d+Z$/, "Z");
}

const TEMPLATES = {
  drop: () => ({
    id: `drop-${Date.now().toString(36)}`, product: "Redmi K80", per_user_limit: 1, pay_within: "15m",
    opens_at: iso(10), closes_at: iso(130),
    skus: [{ id: `k80-12-256-${Date.now().toString(36)}`, name: "12GB+256GB", price: "2499.00", stock: 100 }],
  }),
  promotion: () => ({ id: `festival-${Date.now().toString(36)}`, kind: "percent_off", percent: 10, starts_at: iso(0), ends_at: iso(60 * 24) }),
  coupon: () => ({
    id: `coupon-${Date.now().toString(36)}`, kind: "amount", value: "100.00", min_spend: "1000.00",
    valid_from: iso(0), valid_until: iso(60 * 24 * 7), total: 1000, per_user: 1,
  }),
};
const CREATE_PATHS = { drop: "/admin/v1/drops", promotion: "/admin/v1/promotions", coupon: "/admin/v1/coupons" };

function fillTemplate() {
  const kind = document.getElementById("create-kind").value;
  document.getElementById("create-body").value = JSON.stringify(TEMPLATES[kind](), null, 2);
}

async function create() {
  const kind = document.getElementById("create-kind").value;
  const message = document.getElementById("create-message");
  let body;
  try {
    body = JSON.parse(document.getElementById("create-body").value);
  } catch (e) {
    message.textContent = String(e.message);
    return;
  }
  const answer = await admin("POST", CREATE_PATHS[kind], body);
  message.textContent = answer.status === 201 ? t("created") : errorText(answer);
  await loadLists();
}

async function loadLists() {
  const [promotions, coupons] = await Promise.all([admin("GET", "/admin/v1/promotions"), admin("GET", "/admin/v1/coupons")]);
  if (promotions.status === 200) {
    document.getElementById("promotion-list").replaceChildren(...promotions.body.promotions.map((p) =>
      el("div", { class: "row" }, el("code", {}, JSON.stringify(p)),
        el("button", { class: "secondary", onclick: async () => {
          await admin("DELETE", `/admin/v1/promotions/${encodeURIComponent(p.id)}`);
          loadLists();
        } }, t("end")))));
  }
  if (coupons.status === 200) {
    document.getElementById("coupon-list").replaceChildren(...coupons.body.batches.map((b) => el("div", {}, el("code", {}, JSON.stringify(b)))));
  }
}

// --- start ----------------------------------------------------------------------------
function signOut(note) {
  ops.token = null;
  sessionStorage.removeItem("dg.admin");
  document.getElementById("console").hidden = true;
  document.getElementById("sign-in").hidden = false;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("sign-in-note").textContent = typeof note === "string" ? note : "";
}

async function connect(token) {
  ops.token = token;
  const ok = await loadLimits().catch(() => false);
  if (!ok) return signOut(t("wrong_token"));
  sessionStorage.setItem("dg.admin", token);
  document.getElementById("console").hidden = false;
  document.getElementById("sign-in").hidden = true;
  document.getElementById("sign-out").hidden = false;
  fillTemplate();
  loadLists();
}

async function start() {
  DG.setLang(DG.lang);
  const statusFilter = document.getElementById("status-filter");
  statusFilter.append(el("option", { value: "" }, t("any_status")), ...STATUSES.map((s) => el("option", { value: s }, s)));
  document.getElementById("lang").addEventListener("click", () => DG.setLang(DG.lang === "zh" ? "en" : "zh"));
  DG.onLangChange(() => (document.getElementById("lang").textContent = DG.lang === "zh" ? "EN" : "中文"));
  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    connect(document.getElementById("admin-token").value.trim());
  });
  document.getElementById("sign-out").addEventListener("click", () => signOut());
  document.getElementById("limits-form").addEventListener("submit", saveLimits);
  document.getElementById("orders-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const f = e.target.elements;
    searchOrders({ user: f.user.value.trim(), drop: f.drop.value.trim(), status: f.status.value });
  });
  document.getElementById("pending-refunds").addEventListener("click", () => searchOrders({ status: "refund_requested" }));
  document.getElementById("pending-returns").addEventListener("click", () => searchOrders({ status: "return_requested" }));
  document.getElementById("restock-drop").addEventListener("change", fillRestockSkus);
  document.getElementById("restock-form").addEventListener("submit", restock);
  document.getElementById("create-kind").addEventListener("change", fillTemplate);
  document.getElementById("create-template").addEventListener("click", fillTemplate);
  document.getElementById("create-send").addEventListener("click", create);
  const store = await api("GET", "/api/v1/store").catch(() => null);
  ops.store = store?.body;
  if (ops.store?.demo?.admin_token) {
    document.getElementById("sign-in-note").textContent = t("demo_token", { token: "dropgate-demo-admin_token-not-for-production" });
  }
  if (ops.token) await connect(ops.token);
  liveLoop();
}

start();
