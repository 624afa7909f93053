// The shopper page: drops with a countdown on the server's clock, the buy
// button as it should behave at the opening second, the waiting room,
// checkout after a win, and the shopper's orders with their after-sale
// requests. Everything goes through the public API (see README).
"use strict";

const { t, api, clock, money, span, when, el, fill, askForm, sleep } = DG;

DG.addWords({
  store_title: ["抢购", "Flash sale"],
  sign_in: ["登录", "Sign in"],
  sign_out: ["退出", "Sign out"],
  student: ["学生认证", "Student"],
  name_placeholder: ["用户名（字母、数字）", "User name (letters, digits)"],
  signed_in_as: ["你好，{user}", "Hello, {user}"],
  student_badge: ["学生", "student"],
  demo_sign_in_note: ["演示模式：输入任意用户名即可登录。", "Demo: any user name signs you in."],
  store_sign_in_note: [
    "请从商城登录：登录页跳转到本页时在地址后附上 #token=<令牌>。",
    "Sign in through the store: its login sends you here with #token=<token> after the address.",
  ],
  my_orders: ["我的订单", "My orders"],
  refresh: ["刷新", "Refresh"],
  opens_in: ["距开售", "Opens in"],
  closes_in: ["距结束", "Closes in"],
  opens_at: ["开售时间 {at}", "Opens {at}"],
  state_upcoming: ["即将开售", "Coming soon"],
  state_open: ["抢购中", "On sale"],
  state_sold_out: ["已售罄", "Sold out"],
  state_closed: ["本轮已结束", "This round has closed"],
  left: ["剩 {n} 件", "{n} left"],
  none_left: ["无货", "None left"],
  deposit: ["定金 {amount}", "Deposit {amount}"],
  per_user_limit: ["每人限购 {n} 件", "Limit {n} per person"],
  quantity: ["数量", "Quantity"],
  presale_terms: [
    "我已阅读并同意预售条款：定金不退，尾款须在规定时间内支付。",
    "I accept the presale terms: the deposit is not refunded if the balance is not paid in time.",
  ],
  buy: ["立即购买", "Buy now"],
  buying: ["抢购中…", "Buying…"],
  sign_in_to_buy: ["登录后购买", "Sign in to buy"],
  wait_for_queue: ["排队后购买", "Join the queue to buy"],
  won: ["抢购成功！请在 {left} 内完成支付。", "You got it! Pay within {left}."],
  replayed: ["这次抢购已成功，订单见下方。", "This purchase already went through; see the order below."],
  err_sold_out: ["已售罄", "Sold out"],
  err_limit_exceeded: ["已达限购数量（每人限 {limit} 件）", "Limit reached ({limit} per person)"],
  err_not_open: ["尚未开售，开售时间 {at}", "Not open yet — opens {at}"],
  err_closed: ["本轮已结束", "This round has closed"],
  err_queue_required: ["请先排队，轮到你后再购买", "Join the waiting room; buy when it is your turn"],
  err_unauthorized: ["登录已失效，请重新登录", "Your sign-in has expired; sign in again"],
  busy_retry: ["人太多了，{s} 秒后自动重试（第 {n} 次）", "Too busy: retrying in {s} s (try {n})"],
  gave_up: ["网络拥挤，请稍后再点一次", "Still busy; press again in a moment"],
  network_retry: ["网络异常，{s} 秒后自动重试", "Network error: retrying in {s} s"],
  queue: ["排队", "Waiting room"],
  queue_join: ["进入排队", "Join the queue"],
  queue_opens_in: ["排队将于 {left} 后开放", "The queue opens in {left}"],
  queue_draw: ["开售后 {s} 秒内进入的用户随机排序，先到不占优势。", "Everyone in by {s} s after the opening is placed at random: arriving first gives no edge."],
  queue_waiting: ["排队中：第 {pos} 位，预计等待 {wait}", "Waiting: place {pos}, about {wait}"],
  queue_drawing: ["等待抽签，预计等待 {wait}", "Waiting for the draw, about {wait}"],
  queue_unknown_wait: ["排队中：第 {pos} 位", "Waiting: place {pos}"],
  queue_admitted: ["轮到你了！请在 {left} 内下单。", "Your turn! Buy within {left}."],
  queue_expired: ["购买资格已过期，请重新排队。", "Your turn has expired; join again."],
  queue_sold_out: ["已售罄，排队结束。", "Sold out: the queue has ended."],
  queue_not_open: ["排队尚未开放", "The queue is not open yet"],
  promo_percent: ["限时{zhe}折", "{p}% off"],
  promo_student: ["学生{zhe}折", "Students {p}% off"],
  promo_every: ["每满{threshold}减{off}", "¥{off} off every ¥{threshold}"],
  promo_once: ["满{threshold}减{off}", "¥{off} off over ¥{threshold}"],
  checkout: ["确认订单", "Checkout"],
  order_no: ["订单号 {id}", "Order {id}"],
  pay_within: ["剩余支付时间 {left}", "Pay within {left}"],
  balance_within: ["尾款支付剩余 {left}", "Balance due within {left}"],
  list_amount: ["商品金额", "List amount"],
  amount_due: ["应付", "To pay"],
  deposit_due: ["定金", "Deposit"],
  balance_due: ["尾款", "Balance"],
  address: ["收货地址", "Delivery address"],
  add_address: ["新增收货地址", "Add an address"],
  default_address: ["默认", "default"],
  set_default: ["设为默认地址", "Make it the default"],
  addr_name: ["收货人", "Name"],
  addr_phone: ["手机号", "Mobile number"],
  addr_region: ["省份", "Province"],
  addr_detail: ["详细地址", "Street address"],
  ships_to: ["配送至：{to}", "Ships to: {to}"],
  coupon: ["优惠券", "Coupon"],
  no_coupon: ["不使用优惠券", "No coupon"],
  claim_coupon: ["领取优惠券", "Claim a coupon"],
  coupon_batch: ["优惠券编号", "Coupon code"],
  coupon_claimed: ["已领取", "Claimed"],
  payment_method: ["支付方式", "Payment method"],
  installments: ["分期", "Instalments"],
  n_installments: ["{n} 期免息", "{n} months interest-free"],
  pay: ["去支付 {amount}", "Pay {amount}"],
  pay_cod: ["提交订单（货到付款）", "Place the order (cash on delivery)"],
  cod_rule: ["订单金额不超过 {max} 可用；预售定金不可用", "Up to {max} per order; not for presale deposits"],
  cod_over: ["本单超过 {max}，不可货到付款", "This order is over {max}: no cash on delivery"],
  installment_rule: ["可选 {periods} 期免息", "{periods} months, interest-free"],
  m_alipay: ["支付宝", "Alipay"],
  m_wechat_pay: ["微信支付", "WeChat Pay"],
  m_mi_wallet: ["小米钱包", "Mi Wallet"],
  m_unionpay: ["银联", "UnionPay"],
  m_huabei: ["花呗分期", "Huabei"],
  m_cash_on_delivery: ["货到付款", "Cash on delivery"],
  m_installment: ["信用卡分期", "Card instalments"],
  intent_issued: ["支付单 {id} 已创建，请在支付网关完成支付。", "Payment {id} created: complete it at the payment gateway."],
  cod_placed: ["已下单，货到付款。", "Order placed: cash on delivery."],
  cancel_order: ["取消订单", "Cancel order"],
  pay_now: ["去支付", "Pay"],
  pay_balance: ["支付尾款", "Pay the balance"],
  refund: ["申请退款", "Ask for a refund"],
  refund_reason: ["退款原因", "Reason"],
  return: ["退货/换货", "Return or exchange"],
  return_reason: ["原因", "Reason"],
  no_reason: ["7天无理由", "No reason (7 days)"],
  quality: ["质量问题（15天）", "Quality problem (15 days)"],
  return_kind: ["类型", "Kind"],
  kind_return: ["退货退款", "Return for a refund"],
  kind_exchange: ["换货", "Exchange"],
  note: ["说明", "Note"],
  return_windows: ["无理由退货至 {a}；质量问题退换至 {b}", "No-reason returns until {a}; quality returns until {b}"],
  invoice: ["申请发票", "Ask for an invoice"],
  invoice_title: ["发票抬头", "Invoice title"],
  invoice_tax_id: ["税号（企业，可不填）", "Tax id (companies; optional)"],
  invoice_email: ["接收邮箱", "E-mail"],
  invoice_status: ["发票：{status}", "Invoice: {status}"],
  tracking: ["物流", "Tracking"],
  ship_date: ["预计 {date} 发货", "Ships around {date}"],
  no_orders: ["还没有订单", "No orders yet"],
  s_pending_payment: ["待支付", "Awaiting payment"],
  s_paid: ["已支付", "Paid"],
  s_awaiting_delivery: ["货到付款·待发货", "Cash on delivery: to ship"],
  s_deposit_paid: ["已付定金", "Deposit paid"],
  s_shipped: ["已发货", "Shipped"],
  s_delivered: ["已签收", "Delivered"],
  s_completed: ["已完成", "Completed"],
  s_cancelled: ["已取消", "Cancelled"],
  s_expired: ["超时未支付", "Expired unpaid"],
  s_forfeited: ["尾款逾期，定金不退", "Forfeited (balance unpaid)"],
  s_refund_requested: ["退款审核中", "Refund requested"],
  s_refunding: ["退款中", "Refunding"],
  s_refunded: ["已退款", "Refunded"],
  s_return_requested: ["退货审核中", "Return requested"],
  s_return_approved: ["退货已同意，请寄回", "Return approved: send it back"],
  s_returned: ["已退货", "Returned"],
  s_exchanged: ["已换货", "Exchanged"],
});

// --- who is signed in ----------------------------------------------------------
const session = {
  token: null,
  user: null,
  student: false,
  load() {
    // A store's login page hands over its token in the fragment: taken, kept, and wiped from the address.
    const fragment = new URLSearchParams(location.hash.slice(1));
    if (fragment.get("token")) {
      localStorage.setItem("dg.token", fragment.get("token"));
      history.replaceState(null, "", location.pathname + location.search);
    }
    const token = localStorage.getItem("dg.token");
    const claims = token && decodeClaims(token);
    if (!claims || claims.exp * 1000 < Date.now()) {
      this.clear();
      return;
    }
    this.token = token;
    this.user = claims.sub;
    this.student = !!claims.student;
  },
  clear() {
    localStorage.removeItem("dg.token");
    this.token = this.user = null;
    this.student = false;
  },
};

function decodeClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch {
    return null;
  }
}

// --- the page's state -----------------------------------------------------------
const shop = {
  store: null, // GET /api/v1/store
  drops: new Map(), // drop id → card state
  orders: [],
  addresses: [],
  coupons: [],
  checkoutId: null, // the order being checked out
  message: null, // checkout's last message
};

function errorWords(body, drop) {
  const code = body && body.error;
  switch (code) {
    case "sold_out":
      return t("err_sold_out");
    case "limit_exceeded":
      return t("err_limit_exceeded", { limit: body.limit ?? drop?.per_user_limit ?? "" });
    case "not_open":
      return t("err_not_open", { at: when(body.opens_at) });
    case "closed":
      return t("err_closed");
    case "queue_required":
      return t("err_queue_required");
    case "unauthorized":
      return t("err_unauthorized");
    default:
      return (body && body.message) || String(code || "error");
  }
}

function phaseOf(drop) {
  const now = clock.now();
  if (now < Date.parse(drop.round.opens_at)) return "upcoming";
  if (now >= Date.parse(drop.round.closes_at)) return "closed";
  if (drop.round.state === "sold_out" || drop.skus.every((s) => s.remaining === 0)) return "sold_out";
  return "open";
}

function promotionsFor(sku) {
  const now = clock.now();
  return (shop.store?.promotions || []).filter((p) => {
    if (p.skus && !p.skus.includes(sku.id)) return false;
    if (p.starts_at && Date.parse(p.starts_at) > now) return false;
    if (p.ends_at && Date.parse(p.ends_at) < now) return false;
    return true;
  });
}

function promotionWords(p) {
  const percent = Number(p.percent);
  const zhe = Math.round((100 - percent) * 10) / 100;
  switch (p.kind) {
    case "percent_off":
      return t("promo_percent", { zhe, p: percent });
    case "student":
      return t("promo_student", { zhe, p: percent });
    default:
      return t(p.repeat ? "promo_every" : "promo_once", { threshold: p.threshold, off: p.off });
  }
}

/** "promotion:<id>" and "coupon:<id>" in the shopper's words. */
function discountWords(source) {
  const [kind, id] = source.split(/:(.*)/s);
  const promotion = kind === "promotion" && (shop.store?.promotions || []).find((p) => p.id === id);
  if (promotion) return promotionWords(promotion);
  if (kind === "coupon") return `${t("coupon")} ${id}`;
  return source;
}

// --- the drops ---------------------------------------------------------------------
function dropCard(drop) {
  const card = {
    drop,
    sku: (drop.skus.find((s) => s.remaining > 0) || drop.skus[0]).id,
    quantity: 1,
    terms: false,
    busy: false,
    queue: null, // the shopper's entry, as GET/POST …/queue answered
    queueNextAt: 0, // when to look the entry up again
    els: {},
  };
  const e = card.els;
  e.root = el("article", { class: "panel drop", dataset: { drop: drop.id } });
  e.title = el("h2");
  e.badge = el("span", { class: "badge" });
  e.when = el("p", { class: "note" });
  e.countdownLabel = el("span", { class: "label" });
  e.countdown = el("span", { class: "countdown", dataset: { role: "countdown" } });
  e.skus = el("div", { class: "skus" });
  e.quantity = el("select", { class: "quantity", onchange: () => (card.quantity = Number(e.quantity.value)) });
  e.terms = el("input", { type: "checkbox", onchange: () => (card.terms = e.terms.checked) });
  e.termsRow = el("label", { class: "check terms" }, e.terms, el("span", { dataset: { i18n: "presale_terms" } }, t("presale_terms")));
  e.queue = el("div", { class: "queue" });
  e.queueText = el("p", { class: "queue-text" });
  e.queueJoin = el("button", { class: "secondary queue-join", onclick: () => joinQueue(card) });
  e.queue.append(el("h3", { dataset: { i18n: "queue" } }, t("queue")), e.queueText, e.queueJoin);
  e.buy = el("button", { class: "buy", onclick: () => buy(card) });
  e.message = el("p", { class: "message", role: "status" });
  e.limit = el("span", { class: "note" });
  e.root.append(
    el("div", { class: "row spread" }, e.title, e.badge),
    e.when,
    el("div", { class: "timer" }, e.countdownLabel, e.countdown),
    e.skus,
    el("div", { class: "row" }, el("label", {}, el("span", { dataset: { i18n: "quantity" } }, t("quantity")), e.quantity), e.limit),
    e.termsRow,
    e.queue,
    e.buy,
    e.message,
  );
  document.getElementById("drops").append(e.root);
  return card;
}

function renderSkus(card) {
  const { drop, els } = card;
  els.skus.replaceChildren(
    ...drop.skus.map((sku) => {
      const radio = el("input", {
        type: "radio",
        name: `sku-${drop.id}`,
        value: sku.id,
        checked: sku.id === card.sku,
        onchange: () => {
          card.sku = sku.id;
          updateCard(card);
        },
      });
      const promos = promotionsFor(sku).map((p) => el("span", { class: "promo" }, promotionWords(p)));
      return el("label", { class: `sku${sku.remaining === 0 ? " gone" : ""}`, dataset: { sku: sku.id } },
        radio,
        el("span", { class: "sku-name" }, sku.name),
        el("span", { class: "price" }, money(sku.price)),
        sku.deposit ? el("span", { class: "deposit" }, t("deposit", { amount: money(sku.deposit) })) : null,
        el("span", { class: "left" }, sku.remaining > 0 ? t("left", { n: sku.remaining }) : t("none_left")),
        promos);
    }),
  );
  const limit = drop.per_user_limit;
  if (els.quantity.options.length !== limit) {
    els.quantity.replaceChildren(...Array.from({ length: limit }, (_, i) => el("option", { value: i + 1 }, i + 1)));
    els.quantity.value = String(Math.min(card.quantity, limit));
  }
  els.limit.textContent = t("per_user_limit", { n: limit });
}

/** Redraws what changes with time and with the drop's figures. */
function updateCard(card) {
  const { drop, els } = card;
  const phase = phaseOf(drop);
  els.title.textContent = drop.product;
  els.badge.textContent = t(`state_${phase}`);
  els.badge.dataset.state = phase;
  els.when.textContent = t("opens_at", { at: when(drop.round.opens_at) });
  if (phase === "upcoming") {
    els.countdownLabel.textContent = t("opens_in");
    els.countdown.textContent = span(Date.parse(drop.round.opens_at) - clock.now());
  } else if (phase === "open") {
    els.countdownLabel.textContent = t("closes_in");
    els.countdown.textContent = span(Date.parse(drop.round.closes_at) - clock.now());
  } else {
    els.countdownLabel.textContent = "";
    els.countdown.textContent = "";
  }
  els.termsRow.hidden = !drop.presale;
  updateQueue(card, phase);
  const sku = drop.skus.find((s) => s.id === card.sku);
  const admitted = card.queue?.state === "admitted" && Date.parse(card.queue.expires_at) > clock.now();
  let label = t("buy");
  let enabled = false;
  if (!session.token) label = t("sign_in_to_buy");
  else if (card.busy) label = t("buying");
  else if (phase !== "open") label = t(`state_${phase}`);
  else if (!sku || sku.remaining === 0) label = t("state_sold_out");
  else if (drop.queue && !admitted) label = t("wait_for_queue");
  else enabled = !drop.presale || card.terms;
  els.buy.textContent = label;
  els.buy.disabled = !enabled;
}

function updateQueue(card, phase) {
  const { drop, els } = card;
  els.queue.hidden = !drop.queue;
  if (!drop.queue) return;
  const now = clock.now();
  const entry = card.queue;
  const queueOpen = now >= Date.parse(drop.queue.opens_at) && phase !== "closed";
  let text;
  let canJoin = false;
  if (!queueOpen && phase === "upcoming") {
    text = t("queue_opens_in", { left: span(Date.parse(drop.queue.opens_at) - now) });
  } else if (!entry) {
    const drawSeconds = Math.round((Date.parse(drop.queue.draw_at) - Date.parse(drop.round.opens_at)) / 1000);
    text = t("queue_draw", { s: drawSeconds });
    canJoin = queueOpen && phase !== "sold_out";
  } else if (entry.state === "admitted") {
    const left = Date.parse(entry.expires_at) - now;
    text = left > 0 ? t("queue_admitted", { left: span(left) }) : t("queue_expired");
    canJoin = left <= 0;
  } else if (entry.state === "waiting") {
    const wait = entry.estimated_wait_s == null ? null : span(entry.estimated_wait_s * 1000);
    if (entry.position == null) text = t("queue_drawing", { wait: wait ?? "—" });
    else if (wait == null) text = t("queue_unknown_wait", { pos: entry.position });
    else text = t("queue_waiting", { pos: entry.position, wait });
  } else if (entry.state === "expired") {
    text = t("queue_expired");
    canJoin = true;
  } else {
    text = t("queue_sold_out");
  }
  els.queueText.textContent = text;
  els.queueText.dataset.state = entry?.state || "none";
  els.queueJoin.textContent = t("queue_join");
  els.queueJoin.hidden = !session.token || !canJoin;
}

async function joinQueue(card) {
  card.els.queueJoin.disabled = true;
  try {
    const answer = await api("POST", `/api/v1/drops/${card.drop.id}/queue`, { token: session.token });
    if (answer.status === 200 || answer.status === 201) card.queue = answer.body;
    else card.els.message.textContent = answer.body?.error === "queue_not_open" ? t("queue_not_open") : errorWords(answer.body, card.drop);
  } catch {
    // The banner says the server is away; the shopper presses again.
  } finally {
    card.queueNextAt = 0;
    card.els.queueJoin.disabled = false;
    updateCard(card);
  }
}

/** Looks the shopper's queue entry up again while it may change. */
async function pollQueue(card) {
  const { drop } = card;
  if (!drop.queue || !session.token) return;
  const now = clock.now();
  if (now < Date.parse(drop.queue.opens_at)) return;
  const entry = card.queue;
  const settled = entry && (entry.state === "sold_out" || (entry.state === "admitted" && Date.parse(entry.expires_at) > now));
  // Waiting: every 1–2 s (jittered, so a crowd does not poll in step); otherwise every 15 s.
  if (now < card.queueNextAt) return;
  card.queueNextAt = now + (entry && !settled ? 1000 + Math.random() * 1000 : 15000);
  try {
    const answer = await api("GET", `/api/v1/drops/${drop.id}/queue`, { token: session.token });
    if (answer.status === 200) card.queue = answer.body;
    else if (answer.body?.error === "not_in_queue") card.queue = null;
  } catch {
    /* the banner shows; the next tick tries again */
  }
}

/**
 * One purchase attempt: one idempotency key, kept across every automatic
 * retry, so however often the request is sent it buys at most once. A 429
 * or 503 is retried after Retry-After plus random jitter (so a crowd does
 * not come back in step); any other answer ends the attempt.
 */
async function buy(card) {
  const { drop, els } = card;
  card.busy = true;
  updateCard(card);
  const key = DG.randomKey();
  const body = { sku: card.sku, quantity: card.quantity };
  if (drop.presale) body.accept_presale_terms = card.terms;
  const headers = { "Idempotency-Key": key };
  if (card.queue?.ticket) headers["Queue-Ticket"] = card.queue.ticket;
  const maxTries = 12;
  try {
    for (let attempt = 1; attempt <= maxTries; attempt++) {
      let answer;
      try {
        answer = await api("POST", `/api/v1/drops/${drop.id}/reserve`, { token: session.token, body, headers });
      } catch {
        const wait = Math.min(8, 2 ** (attempt - 1)) * (0.5 + Math.random());
        els.message.textContent = t("network_retry", { s: wait.toFixed(1) });
        await sleep(wait * 1000);
        continue;
      }
      if (answer.status === 201 || answer.status === 200) {
        const order = answer.body;
        els.message.textContent = answer.status === 201
          ? t("won", { left: span(Date.parse(order.pay_by) - clock.now()) })
          : t("replayed");
        els.message.dataset.kind = "won";
        refreshDrops();
        await loadOrders();
        openCheckout(order.id);
        return;
      }
      if (answer.status === 429 || answer.status === 503) {
        const retryAfter = Number(answer.headers.get("Retry-After")) || 1;
        const wait = retryAfter * (1 + Math.random());
        els.message.textContent = t("busy_retry", { s: wait.toFixed(1), n: attempt });
        els.message.dataset.kind = "busy";
        await sleep(wait * 1000);
        continue;
      }
      els.message.textContent = errorWords(answer.body, drop);
      els.message.dataset.kind = answer.body?.error || "error";
      if (answer.body?.error === "not_open") clock.sync();
      if (answer.body?.error === "unauthorized") signOut();
      if (answer.body?.error === "sold_out") refreshDrops();
      return;
    }
    els.message.textContent = t("gave_up");
  } finally {
    card.busy = false;
    updateCard(card);
  }
}

async function refreshDrops() {
  let answer;
  try {
    answer = await api("GET", "/api/v1/drops");
  } catch {
    return false;
  }
  if (answer.status !== 200) return false;
  for (const drop of answer.body.drops) {
    let card = shop.drops.get(drop.id);
    if (!card) {
      card = dropCard(drop);
      shop.drops.set(drop.id, card);
    }
    if (card.drop.round.id !== drop.round.id) card.queue = null;
    card.drop = drop;
    renderSkus(card);
    updateCard(card);
  }
  return true;
}

/** The drops again every few seconds (jittered), sooner while one is open. */
async function dropsLoop() {
  for (;;) {
    const ok = await refreshDrops();
    const anyOpen = [...shop.drops.values()].some((c) => phaseOf(c.drop) === "open");
    const base = ok ? (anyOpen ? 2000 : 5000) : 2000;
    await sleep(base * (0.75 + Math.random() * 0.5));
  }
}

// --- orders and checkout ------------------------------------------------------
async function loadOrders() {
  if (!session.token) return;
  let answer;
  try {
    answer = await api("GET", "/api/v1/orders?limit=100", { token: session.token });
  } catch {
    return;
  }
  if (answer.status === 401) return signOut();
  if (answer.status !== 200) return;
  const before = JSON.stringify(orderById(shop.checkoutId));
  shop.orders = answer.body.orders.slice().reverse();
  renderOrders();
  // Redrawn only when the order moved: a redraw would undo a choice being made.
  if (shop.checkoutId && JSON.stringify(orderById(shop.checkoutId)) !== before) renderCheckout();
}

async function loadAddressesAndCoupons() {
  const [addresses, coupons] = await Promise.all([
    api("GET", "/api/v1/addresses", { token: session.token }),
    api("GET", "/api/v1/coupons", { token: session.token }),
  ]);
  if (addresses.status === 200) shop.addresses = addresses.body.addresses;
  if (coupons.status === 200) shop.coupons = coupons.body.coupons;
}

function productOf(order) {
  const card = shop.drops.get(order.drop_id);
  const sku = card?.drop.skus.find((s) => s.id === order.sku);
  return `${card?.drop.product ?? order.drop_id} · ${sku?.name ?? order.sku} × ${order.quantity}`;
}

function inBalanceWindow(order) {
  const now = clock.now();
  return order.status === "deposit_paid" && order.balance_from && Date.parse(order.balance_from) <= now && now < Date.parse(order.balance_until);
}

async function openCheckout(id) {
  shop.checkoutId = id;
  shop.message = null;
  try {
    await loadAddressesAndCoupons();
  } catch {
    /* the banner shows */
  }
  renderCheckout();
  document.getElementById("checkout").scrollIntoView({ behavior: "smooth" });
}

function orderById(id) {
  return shop.orders.find((o) => o.id === id);
}

async function editOrder(order, change) {
  const answer = await api("PATCH", `/api/v1/orders/${order.id}`, { token: session.token, body: change });
  if (answer.status === 200) {
    // By id: the list may have been fetched again while the request ran.
    shop.orders = shop.orders.map((o) => (o.id === answer.body.id ? answer.body : o));
    shop.message = null;
  } else {
    shop.message = errorWords(answer.body);
  }
  renderCheckout();
}

async function addAddress(order) {
  const values = await askForm(t("add_address"), [
    { name: "name", label: t("addr_name"), required: true },
    { name: "phone", label: t("addr_phone"), type: "tel", required: true },
    { name: "region", label: t("addr_region"), type: "select", options: (shop.store?.regions || []).map((r) => [r, r]) },
    { name: "detail", label: t("addr_detail"), required: true },
    { name: "default", label: t("set_default"), type: "checkbox", value: shop.addresses.length === 0 },
  ]);
  if (!values) return;
  const answer = await api("POST", "/api/v1/addresses", { token: session.token, body: values });
  if (answer.status !== 201) {
    shop.message = errorWords(answer.body);
    return renderCheckout();
  }
  await loadAddressesAndCoupons();
  if (order) await editOrder(order, { address_id: answer.body.id });
}

async function claimCoupon() {
  const values = await askForm(t("claim_coupon"), [{ name: "batch", label: t("coupon_batch"), required: true }]);
  if (!values) return;
  const answer = await api("POST", `/api/v1/coupons/${encodeURIComponent(values.batch)}/claim`, { token: session.token });
  shop.message = answer.status === 201 ? t("coupon_claimed") : errorWords(answer.body);
  await loadAddressesAndCoupons();
  renderCheckout();
}

function methodRule(method, rules, order, stage) {
  const max = money(rules.cod_max_amount);
  if (method === "cash_on_delivery") {
    const over = Number(order.amount_due) > Number(rules.cod_max_amount);
    return { note: over ? t("cod_over", { max }) : t("cod_rule", { max }), allowed: !over && stage !== "deposit" };
  }
  if (method === "huabei" || method === "installment") {
    return { note: t("installment_rule", { periods: rules.installment_periods.join("/") }), allowed: true };
  }
  return { note: "", allowed: true };
}

function renderCheckout() {
  const panel = document.getElementById("checkout");
  const order = orderById(shop.checkoutId);
  const payable = order && (order.status === "pending_payment" || inBalanceWindow(order));
  panel.hidden = !payable;
  if (!payable) return;
  const rules = shop.store?.payments?.[order.drop_id] || { methods: [], cod_max_amount: "0", installment_periods: [] };
  const stage = order.status === "deposit_paid" ? "balance" : order.balance_due ? "deposit" : "full";
  const due = stage === "deposit" ? order.deposit_due : stage === "balance" ? order.balance_due : order.amount_due;
  const deadline = stage === "balance" ? order.balance_until : order.pay_by;
  const editable = order.status === "pending_payment";

  const lines = [
    el("div", { class: "line" }, el("span", {}, t("list_amount")), el("span", {}, money(order.pricing.list_amount))),
    ...order.pricing.discounts.map((d) => el("div", { class: "line discount" }, el("span", {}, discountWords(d.source)), el("span", {}, `-${money(d.amount)}`))),
    el("div", { class: "line total" }, el("span", {}, t("amount_due")), el("span", {}, money(order.amount_due))),
    order.balance_due ? el("div", { class: "line" }, el("span", {}, t("deposit_due")), el("span", {}, money(order.deposit_due))) : null,
    order.balance_due ? el("div", { class: "line" }, el("span", {}, t("balance_due")), el("span", {}, money(order.balance_due))) : null,
  ];

  const addressList = el("div", { class: "choices addresses" },
    shop.addresses.map((a) => el("label", { class: "choice" },
      el("input", {
        type: "radio", name: "address", value: a.id, disabled: !editable,
        checked: order.address ? order.address.detail === a.detail && order.address.phone === a.phone : a.default,
        onchange: () => editOrder(order, { address_id: a.id }),
      }),
      el("span", {}, `${a.name} ${a.phone} ${a.region} ${a.detail}`),
      a.default ? el("span", { class: "badge" }, t("default_address")) : null)),
    editable ? el("button", { class: "secondary add-address", onclick: () => addAddress(order) }, t("add_address")) : null);

  const available = shop.coupons.filter((c) => c.status === "available" || c.id === order.coupon_id);
  const couponSelect = el("select", {
    class: "coupon", disabled: !editable,
    onchange: (e) => editOrder(order, { coupon_id: e.target.value || null }),
  },
  el("option", { value: "" }, t("no_coupon")),
  available.map((c) => el("option", { value: c.id, selected: c.id === order.coupon_id },
    `${c.batch.id}: ${c.batch.kind === "percent" ? `${c.batch.value}%` : money(c.batch.value)}${c.batch.min_spend ? ` (≥ ${money(c.batch.min_spend)})` : ""}`)));

  const chosen = panel.dataset.method || order.payment_method || rules.methods[0];
  const methodList = el("div", { class: "choices methods" },
    rules.methods.map((m) => {
      const rule = methodRule(m, rules, order, stage);
      return el("label", { class: `choice${rule.allowed ? "" : " gone"}` },
        el("input", {
          type: "radio", name: "method", value: m, disabled: !rule.allowed, checked: m === chosen && rule.allowed,
          onchange: () => {
            panel.dataset.method = m;
            renderCheckout();
          },
        }),
        el("span", {}, t(`m_${m}`)),
        rule.note ? el("span", { class: "note" }, rule.note) : null);
    }));
  const installments = chosen === "huabei" || chosen === "installment"
    ? el("label", {}, el("span", {}, t("installments")),
      el("select", { class: "installments" }, rules.installment_periods.map((n) => el("option", { value: n }, t("n_installments", { n })))))
    : null;

  const payButton = el("button", { class: "pay", onclick: () => pay(order, panel) },
    chosen === "cash_on_delivery" ? t("pay_cod") : t("pay", { amount: money(due) }));

  fill(panel,
    el("h2", {}, t("checkout")),
    el("p", { class: "note" }, t("order_no", { id: order.id })),
    el("p", {}, productOf(order)),
    el("p", { class: "countdown pay-by", dataset: { deadline } }),
    el("div", { class: "pricing" }, lines),
    el("h3", {}, t("address")),
    order.address ? el("p", { class: "note ships-to" }, t("ships_to", { to: `${order.address.name} ${order.address.region} ${order.address.detail}` })) : null,
    addressList,
    el("h3", {}, t("coupon")),
    el("div", { class: "row" }, couponSelect, editable ? el("button", { class: "secondary", onclick: claimCoupon }, t("claim_coupon")) : null),
    el("h3", {}, t("payment_method")),
    methodList,
    installments,
    payButton,
    el("p", { class: "message checkout-message", role: "status" }, shop.message || ""),
  );
  tickCheckout();
}

function tickCheckout() {
  const deadline = document.querySelector("#checkout .pay-by");
  if (!deadline || !deadline.dataset.deadline) return;
  const order = orderById(shop.checkoutId);
  const key = order?.status === "deposit_paid" ? "balance_within" : "pay_within";
  deadline.textContent = t(key, { left: span(Date.parse(deadline.dataset.deadline) - clock.now()) });
}

async function pay(order, panel) {
  const method = panel.querySelector("input[name=method]:checked")?.value;
  if (!method) return;
  const body = { method };
  const periods = panel.querySelector("select.installments");
  if (periods) body.installments = Number(periods.value);
  const answer = await api("POST", `/api/v1/orders/${order.id}/pay`, { token: session.token, body });
  if (answer.status !== 200) {
    shop.message = errorWords(answer.body);
    return renderCheckout();
  }
  const intent = answer.body;
  if (method === "cash_on_delivery") {
    shop.message = t("cod_placed");
    shop.checkoutId = null;
    await loadOrders();
    return;
  }
  if (shop.store?.demo?.gateway) {
    const params = new URLSearchParams({
      order: intent.order_id, payment: intent.payment_id, amount: intent.amount, method: intent.method,
    });
    if (intent.installments) params.set("installments", intent.installments);
    location.href = `/demo/gateway?${params}`;
    return;
  }
  shop.message = t("intent_issued", { id: intent.payment_id });
  renderCheckout();
}

async function orderAction(order, path, body) {
  const answer = await api("POST", `/api/v1/orders/${order.id}/${path}`, { token: session.token, body });
  if (answer.status !== 200) alertLine(order, errorWords(answer.body));
  await loadOrders();
}

function alertLine(order, text) {
  const row = document.querySelector(`[data-order="${order.id}"] .message`);
  if (row) row.textContent = text;
}

async function askRefund(order) {
  const values = await askForm(t("refund"), [{ name: "reason", label: t("refund_reason"), required: true }]);
  if (values) await orderAction(order, "refund", { reason: values.reason });
}

async function askReturn(order) {
  const values = await askForm(t("return"), [
    { name: "reason", label: t("return_reason"), type: "select", options: [["no_reason", t("no_reason")], ["quality", t("quality")]] },
    { name: "kind", label: t("return_kind"), type: "select", options: [["return", t("kind_return")], ["exchange", t("kind_exchange")]] },
    { name: "note", label: t("note") },
  ]);
  if (values) await orderAction(order, "return", { reason: values.reason, kind: values.kind, note: values.note || null });
}

async function askInvoice(order) {
  const values = await askForm(t("invoice"), [
    { name: "title", label: t("invoice_title"), required: true },
    { name: "tax_id", label: t("invoice_tax_id") },
    { name: "email", label: t("invoice_email"), type: "email", required: true },
  ]);
  if (values) await orderAction(order, "invoice", { title: values.title, tax_id: values.tax_id || null, email: values.email });
}

function renderOrders() {
  const list = document.getElementById("order-list");
  if (!shop.orders.length) {
    list.replaceChildren(el("p", { class: "note" }, t("no_orders")));
    return;
  }
  list.replaceChildren(...shop.orders.map((order) => {
    const s = order.status;
    const actions = [];
    if (s === "pending_payment") {
      actions.push(el("button", { onclick: () => openCheckout(order.id) }, t("pay_now")));
      actions.push(el("button", { class: "secondary", onclick: () => orderAction(order, "cancel") }, t("cancel_order")));
    }
    if (inBalanceWindow(order)) actions.push(el("button", { onclick: () => openCheckout(order.id) }, t("pay_balance")));
    if (s === "paid" || s === "deposit_paid") actions.push(el("button", { class: "secondary", onclick: () => askRefund(order) }, t("refund")));
    if (s === "delivered") actions.push(el("button", { class: "secondary", onclick: () => askReturn(order) }, t("return")));
    if ((s === "delivered" || s === "completed") && !order.invoice) {
      actions.push(el("button", { class: "secondary", onclick: () => askInvoice(order) }, t("invoice")));
    }
    const tracking = (order.tracking || []).map((e) => el("li", {}, `${when(e.at)} ${e.carrier} ${e.tracking_number} · ${t(`s_${e.event}`)}`));
    return el("div", { class: "order", dataset: { order: order.id, status: s } },
      el("div", { class: "row spread" },
        el("strong", {}, productOf(order)),
        el("span", { class: "badge status" }, t(`s_${s}`))),
      el("p", { class: "note" }, `${t("order_no", { id: order.id })} · ${when(order.created_at)} · ${money(order.paid_amount ?? order.amount_due)}`),
      order.estimated_ship_date && ["paid", "deposit_paid", "awaiting_delivery"].includes(s)
        ? el("p", { class: "note" }, t("ship_date", { date: order.estimated_ship_date })) : null,
      tracking.length ? el("ul", { class: "tracking" }, tracking) : null,
      s === "delivered" && order.no_reason_return_until
        ? el("p", { class: "note" }, t("return_windows", { a: when(order.no_reason_return_until), b: when(order.quality_return_until) })) : null,
      order.invoice ? el("p", { class: "note" }, t("invoice_status", { status: order.invoice.status })) : null,
      el("div", { class: "row actions" }, actions),
      el("p", { class: "message" }));
  }));
}

const ENDED = ["cancelled", "expired", "forfeited", "refunded", "returned", "exchanged", "completed"];

/**
 * The orders again every 10 s (jittered) while the tab is shown and an
 * order can still move (by the gateway, the carrier, the operator, the
 * clock): a page left open on ended orders reads nothing from the store.
 */
async function ordersLoop() {
  for (;;) {
    await sleep(10000 * (0.75 + Math.random() * 0.5));
    if (!document.hidden && shop.orders.some((o) => !ENDED.includes(o.status))) await loadOrders();
  }
}

// --- sign-in ------------------------------------------------------------------------
function showSession() {
  document.getElementById("who").textContent = session.user
    ? t("signed_in_as", { user: session.user }) + (session.student ? ` · ${t("student_badge")}` : "")
    : "";
  document.getElementById("sign-out").hidden = !session.user;
  document.getElementById("sign-in").hidden = !!session.user;
  document.getElementById("orders").hidden = !session.user;
  const demo = shop.store?.demo?.sign_in;
  document.getElementById("sign-in-form").hidden = !demo;
  document.getElementById("sign-in-note").textContent = demo ? t("demo_sign_in_note") : t("store_sign_in_note");
  for (const card of shop.drops.values()) updateCard(card);
}

function signOut() {
  session.clear();
  shop.orders = [];
  shop.checkoutId = null;
  for (const card of shop.drops.values()) card.queue = null;
  document.getElementById("checkout").hidden = true;
  showSession();
}

async function signIn(event) {
  event.preventDefault();
  const name = document.getElementById("sign-in-name").value.trim();
  const student = document.getElementById("sign-in-student").checked;
  const answer = await api("POST", "/demo/v1/sign-in", { body: { name, student } });
  if (answer.status !== 201) {
    document.getElementById("sign-in-note").textContent = errorWords(answer.body);
    return;
  }
  localStorage.setItem("dg.token", answer.body.token);
  session.load();
  showSession();
  await loadOrders();
}

// --- start --------------------------------------------------------------------------
async function loadStore() {
  for (;;) {
    try {
      const answer = await api("GET", "/api/v1/store");
      if (answer.status === 200) {
        shop.store = answer.body;
        return;
      }
    } catch {
      /* the banner shows */
    }
    await sleep(2000);
  }
}

async function start() {
  session.load();
  DG.setLang(DG.lang);
  document.getElementById("lang").addEventListener("click", () => DG.setLang(DG.lang === "zh" ? "en" : "zh"));
  document.getElementById("sign-in-form").addEventListener("submit", signIn);
  document.getElementById("sign-out").addEventListener("click", signOut);
  document.getElementById("orders-refresh").addEventListener("click", loadOrders);
  DG.onLangChange(() => {
    document.getElementById("lang").textContent = DG.lang === "zh" ? "EN" : "中文";
    showSession();
    for (const card of shop.drops.values()) renderSkus(card);
    renderOrders();
    renderCheckout();
  });
  clock.keepSynced();
  await loadStore();
  showSession();
  dropsLoop();
  if (session.token) await loadOrders();
  ordersLoop();
  // The countdowns and the buy buttons follow the server's clock to the tenth of a second.
  setInterval(() => {
    for (const card of shop.drops.values()) {
      pollQueue(card);
      updateCard(card);
    }
    tickCheckout();
  }, 100);
}

start();
