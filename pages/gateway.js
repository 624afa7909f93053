// The demo's stand-in payment gateway: shows the payment intent it was
// sent with and, on "pay", sends the notice a real gateway would sign
// (POST /demo/v1/payments, served only with the demo secrets).
"use strict";

DG.addWords({
  gateway_title: ["演示支付网关", "Demo payment gateway"],
  gateway_warning: ["这是演示用的支付网关：不会扣款。", "A stand-in gateway for the demo: no money moves."],
  gw_order: ["订单", "Order"],
  gw_payment: ["支付单", "Payment"],
  gw_method: ["支付方式", "Method"],
  gw_amount: ["金额", "Amount"],
  gw_pay: ["确认支付", "Pay"],
  gw_back: ["返回商城", "Back to the store"],
  gw_paid: ["支付成功，正在返回商城…", "Paid. Taking you back to the store…"],
  gw_installments: ["{n} 期免息", "{n} months interest-free"],
});

const params = new URLSearchParams(location.search);
const intent = {
  order: params.get("order") || "",
  payment: params.get("payment") || "",
  amount: params.get("amount") || "",
  method: params.get("method") || "",
  installments: params.get("installments"),
};

function show() {
  document.getElementById("gw-order").textContent = intent.order;
  document.getElementById("gw-payment").textContent = intent.payment;
  document.getElementById("gw-method").textContent =
    intent.method + (intent.installments ? ` · ${DG.t("gw_installments", { n: intent.installments })}` : "");
  document.getElementById("gw-amount").textContent = DG.money(intent.amount);
  document.getElementById("lang").textContent = DG.lang === "zh" ? "EN" : "中文";
}

async function pay() {
  const button = document.getElementById("gw-pay");
  const message = document.getElementById("gw-message");
  button.disabled = true;
  // The transaction id stands for the gateway's own: one per payment, so a
  // second press is the same transaction and changes nothing.
  const body = {
    order_id: intent.order,
    transaction_id: `demo-${intent.payment}`,
    amount: intent.amount,
    method: intent.method,
  };
  let answer;
  try {
    answer = await DG.api("POST", "/demo/v1/payments", { body });
  } catch {
    button.disabled = false;
    return;
  }
  if (answer.status === 200) {
    message.textContent = DG.t("gw_paid");
    message.dataset.kind = "won";
    setTimeout(() => (location.href = "/#orders"), 1200);
  } else {
    message.textContent = answer.body?.message || answer.body?.error || String(answer.status);
    button.disabled = false;
  }
}

DG.onLangChange(show);
DG.setLang(DG.lang);
document.getElementById("lang").addEventListener("click", () => DG.setLang(DG.lang === "zh" ? "en" : "zh"));
document.getElementById("gw-pay").addEventListener("click", pay);
