#!/usr/bin/env python3
"""The shopper page and the operator page, driven in a real headless
Chromium (Debian's) by Playwright, against a dropgate started here on a free
loopback port with a SQLite file in a temp dir.

A shopper waits for the countdown, joins the waiting room, is admitted,
wins, adds an address, checks out and pays in the demo gateway; a second
shopper sees the drop sold out; an operator watches the sale live, lowers a
limit and sees 429s appear; the server is restarted under the open page,
which keeps working (a refund is asked, approved on the operator page and
paid back by the demo gateway). Then the newcomer's path: `dropgate serve`
with no config, the demo phone bought at its opening and paid. What was
sold is checked from the SQLite files, not from the pages. The screenshots in the README are taken here (SCREENSHOTS=DIR
keeps them; default: the temp dir).

    python3 tests/browser/test_pages.py     # needs: pip install playwright; apt-get install chromium
"""
import json
import re
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
DROP = "page-phone"
SKU = "pp-8-256-black"
CASE = "page-case"  # a drop without a waiting room
CASE_SKU = "pc-blue"
# The demo's public secrets: with them the server runs the demo sign-in and
# the stand-in gateway and carrier (and refuses to listen off loopback).
SECRETS = {
    f: f"dropgate-demo-{f}-not-for-production"
    for f in ["jwt_secret", "admin_token", "payment_secret", "logistics_secret", "queue_secret"]
}
OPENS_IN = 15  # seconds from the server's start to the opening
TIMEOUT_MS = 20_000


def fail(message):
    print(f"tests/browser/test_pages.py: {message}", file=sys.stderr)
    sys.exit(1)


try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    fail("Playwright for Python is missing: pip install playwright")
if not Path(CHROMIUM).exists():
    fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set CHROMIUM)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Server:
    """One dropgate on loopback; stop() and start() again on the same files."""

    def __init__(self, work):
        self.work = work
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        now = datetime.now(timezone.utc)
        self.opens_at = now.replace(microsecond=0) + timedelta(seconds=OPENS_IN)
        auth = "\n".join(f'{k} = "{v}"' for k, v in SECRETS.items())
        (work / "dropgate.toml").write_text(f"""
listen = "127.0.0.1:{self.port}"
[auth]
{auth}
[limits]
global_rps = 100000
global_burst = 100000
per_user_rps = 50
per_user_burst = 100
per_ip_rps = 100000
per_ip_burst = 100000
max_in_flight = 1024

[[drops]]
id = "{DROP}"
product = "Page Phone"
per_user_limit = 1
pay_within = "15m"
opens_at = "{iso(self.opens_at)}"
closes_at = "{iso(self.opens_at + timedelta(hours=2))}"
queue = {{ opens_before = "10m", draw_window = "2s", admit_rate = 5, ticket_ttl = "2m" }}

[[drops.skus]]
id = "{SKU}"
name = "8GB+256GB Black"
price = "1999.00"
stock = 1

[[drops]]
id = "{CASE}"
product = "Page Case"
per_user_limit = 1
pay_within = "15m"
opens_at = "{iso(self.opens_at)}"
closes_at = "{iso(self.opens_at + timedelta(hours=2))}"

[[drops.skus]]
id = "{CASE_SKU}"
name = "Blue"
price = "99.00"
stock = 5

[[promotions]]
id = "page-festival"
kind = "full_reduction"
threshold = "1000.00"
off = "100.00"
repeat = true
""")
        self.process = None
        self.log = open(work / "server.log", "ab")

    def start(self):
        self.process = subprocess.Popen(
            [str(ROOT / "target/debug/dropgate"), "serve", "--config", str(self.work / "dropgate.toml"),
             "--data-dir", str(self.work / "data")],
            stdout=self.log, stderr=self.log, env={**os.environ, "RUST_LOG": "warn"})
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.base}/healthz", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        fail(f"dropgate did not start; see {self.work / 'server.log'}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def call(self, method, path, body=None, token=None, headers=None):
        request = urllib.request.Request(f"{self.base}{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode())
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            request.add_header(k, v)
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def orders(self):
        """The orders as the SQLite file holds them."""
        db = sqlite3.connect(self.work / "data" / "orders.db")
        try:
            return db.execute("SELECT user_id, sku, quantity, status FROM orders ORDER BY created_at").fetchall()
        finally:
            db.close()


def sign_in(page, base, name):
    page.goto(base + "/")
    page.fill("#sign-in-name", name)
    page.click("#sign-in-form button[type=submit]")
    expect(page.locator("#who")).to_contain_text(name)


def add_address(page, name, phone, region, detail):
    """Adds an address in the checkout's dialog; it goes on the order."""
    checkout = page.locator("#checkout")
    checkout.locator(".add-address").click()
    dialog = page.locator("dialog")
    dialog.locator("input[name=name]").fill(name)
    dialog.locator("input[name=phone]").fill(phone)
    dialog.locator("select[name=region]").select_option(region)
    dialog.locator("input[name=detail]").fill(detail)
    dialog.locator("button[type=submit]").click()
    expect(checkout.locator(".ships-to")).to_contain_text(name)


def pay_in_gateway(page, base, shows):
    """Presses pay at checkout, then pay in the demo gateway, which says
    `shows`; back in the shop the order is paid."""
    page.locator("#checkout .pay").click()
    page.wait_for_url("**/demo/gateway?**")
    expect(page.locator(".facts")).to_contain_text(shows)
    page.click("#gw-pay")
    page.wait_for_url(f"{base}/#orders", timeout=TIMEOUT_MS)
    expect(page.locator('#order-list [data-status="paid"]')).to_have_count(1)


def test(server, browser, shots):
    card = f'[data-drop="{DROP}"]'
    buy = f"{card} .buy"

    # --- alice: the countdown, the waiting room, the win ---------------------------
    alice = browser.new_context(locale="zh-CN").new_page()
    errors = []
    alice.on("pageerror", lambda e: errors.append(str(e)))
    sign_in(alice, server.base, "alice")
    expect(alice.locator(f"{card} .countdown")).to_have_text(re.compile(r"^\d\d:\d\d$"))
    expect(alice.locator(buy)).to_be_disabled()
    expect(alice.locator(f"{card} .promo")).to_contain_text("每满1000.00减100.00")
    alice.click(f"{card} .queue-join")
    expect(alice.locator(f"{card} .queue-text")).to_have_attribute("data-state", "waiting")
    # The button stays disabled until the opening on the server's clock, and
    # the admission after the draw.
    alice.wait_for_function(f"!document.querySelector('{buy}').disabled", timeout=(OPENS_IN + 20) * 1000)
    enabled_at = alice.evaluate("DG.clock.now()")
    assert enabled_at >= server.opens_at.timestamp() * 1000, "the buy button was enabled before the opening"
    expect(alice.locator(f"{card} .queue-text")).to_have_attribute("data-state", "admitted")
    alice.click(buy)
    expect(alice.locator(f"{card} .message")).to_have_attribute("data-kind", "won")

    # --- checkout: an address, the payment rules, the demo gateway -----------------
    checkout = alice.locator("#checkout")
    expect(checkout).to_be_visible()
    expect(checkout.locator(".pay-by")).to_contain_text("剩余支付时间")
    expect(checkout.locator(".discount")).to_contain_text("100.00")
    expect(checkout.locator(".methods")).to_contain_text("订单金额不超过 ¥3000.00 可用")
    add_address(alice, "王小明", "13800138000", "广西壮族自治区", "南宁市青秀区民族大道 100 号")
    checkout.locator("input[name=method][value=alipay]").check()
    shots and alice.screenshot(path=str(shots / "shop-checkout.png"), full_page=True)
    pay_in_gateway(alice, server.base, "¥1899.00")
    assert server.orders() == [("alice", SKU, 1, "paid")], server.orders()

    # --- bob: sold out, in words -------------------------------------------------
    bob = browser.new_context(locale="zh-CN").new_page()
    bob.on("pageerror", lambda e: errors.append(str(e)))
    sign_in(bob, server.base, "bob")
    expect(bob.locator(f"{card} .badge")).to_have_attribute("data-state", "sold_out")
    expect(bob.locator(buy)).to_be_disabled()
    expect(bob.locator(buy)).to_have_text("已售罄")
    bob.click("#lang")
    expect(bob.locator(buy)).to_have_text("Sold out")
    shots and bob.screenshot(path=str(shots / "shop-sold-out.png"), full_page=True)

    # --- the operator: the sale live, a lower limit, 429s --------------------------
    ops = browser.new_context(locale="zh-CN").new_page()
    ops.on("pageerror", lambda e: errors.append(str(e)))
    ops.goto(server.base + "/ops")
    ops.fill("#admin-token", SECRETS["admin_token"])
    ops.click("#token-form button[type=submit]")
    live = ops.locator(f'#live-drops [data-drop="{DROP}"]')
    expect(live.locator(".remaining")).to_have_text("0 / 1")
    expect(live.locator('.totals [data-outcome="won"]')).to_have_text("1")
    ops.fill("#limits-form input[name=per_user_rps]", "1")
    ops.fill("#limits-form input[name=per_user_burst]", "1")
    ops.click("#limits-form button")
    expect(ops.locator("#limits-message")).to_have_text("已生效")
    status, body = server.call("POST", "/demo/v1/sign-in", {"name": "mallory"})
    assert status == 201, body
    token = body["token"]
    answers = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            answers.append(server.call("POST", f"/api/v1/drops/{DROP}/reserve", {"sku": SKU, "quantity": 1}, token)[0])
            time.sleep(0.02)

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        ops.wait_for_function(
            f"""() => {{
                const cell = document.querySelector('#live-drops [data-drop="{DROP}"] .rates [data-outcome="rate_limited"]');
                return cell && Number(cell.dataset.rate) > 0;
            }}""", timeout=TIMEOUT_MS)
    finally:
        stop.set()
        worker.join()
    assert 429 in answers, answers
    shots and ops.screenshot(path=str(shots / "ops.png"), full_page=True)

    # carol's page meets the lowered limit: the 429 is retried after
    # Retry-After (with jitter) under the same key, and buys once.
    carol = browser.new_context(locale="zh-CN").new_page()
    carol.on("pageerror", lambda e: errors.append(str(e)))
    sign_in(carol, server.base, "carol")
    case = f'[data-drop="{CASE}"]'
    expect(carol.locator(f"{case} .buy")).to_be_enabled()
    status, body = server.call("POST", "/demo/v1/sign-in", {"name": "carol"})
    assert status == 201, body
    # Empties carol's bucket (one token a second): the page's press is refused.
    while server.call("GET", "/api/v1/orders", token=body["token"])[0] != 429:
        pass
    carol.click(f"{case} .buy")
    message = carol.locator(f"{case} .message")
    expect(message).to_have_attribute("data-kind", "busy")
    expect(message).to_have_attribute("data-kind", "won", timeout=TIMEOUT_MS)
    carols = [o for o in server.orders() if o[0] == "carol"]
    assert carols == [("carol", CASE_SKU, 1, "pending_payment")], carols
    ops.fill("#limits-form input[name=per_user_rps]", "50")
    ops.fill("#limits-form input[name=per_user_burst]", "100")
    ops.click("#limits-form button")

    # --- a restart under the open page ---------------------------------------------
    server.stop()
    expect(alice.locator("#offline")).to_be_visible(timeout=TIMEOUT_MS)
    server.start()
    expect(alice.locator("#offline")).to_be_hidden(timeout=TIMEOUT_MS)
    alice.click("#orders-refresh")
    paid = alice.locator('#order-list [data-status="paid"]')
    expect(paid).to_have_count(1)
    # The page still acts: alice asks for a refund of the paid order.
    paid.locator("button", has_text="申请退款").click()
    alice.locator("dialog input[name=reason]").fill("不想要了")
    alice.locator("dialog button[type=submit]").click()
    expect(alice.locator('#order-list [data-status="refund_requested"]')).to_have_count(1)
    expect(alice.locator(f"{card} .badge")).to_have_attribute("data-state", "sold_out")

    # --- the operator reviews the refund; the demo gateway pays it back ---------------
    ops.reload()
    ops.click("#pending-refunds")
    row = ops.locator('#order-results tr[data-status="refund_requested"]')
    expect(row).to_have_count(1)
    row.locator("button.approve").click()
    ops.locator("dialog input[name=note]").fill("同意")
    ops.locator("dialog button[type=submit]").click()
    ops.click("#orders-form button[type=submit]")
    refunding = ops.locator('#order-results tr[data-status="refunding"]')
    expect(refunding).to_have_count(1)
    refunding.locator("button", has_text="退款到账").click()
    expect(ops.locator('#order-results tr[data-status="refunded"]')).to_have_count(1)
    alice.click("#orders-refresh")
    expect(alice.locator('#order-list [data-status="refunded"]')).to_have_count(1)

    # What was sold, from the store: one unit, to alice, never twice; refunded
    # before shipping while the round is open, so the unit is on sale again.
    orders = [o for o in server.orders() if o[1] == SKU]
    assert orders == [("alice", SKU, 1, "refunded")], orders
    expect(bob.locator(f"{card} .badge")).to_have_attribute("data-state", "open", timeout=TIMEOUT_MS)
    expect(alice.locator(f"{card} .badge")).to_have_attribute("data-state", "open", timeout=TIMEOUT_MS)
    shots and alice.screenshot(path=str(shots / "shop.png"), full_page=True)
    assert not errors, errors


def test_demo(browser, work):
    """What a newcomer does: `dropgate serve` with no config (the demo
    catalog, its drop opening about 30 s after start), the printed address
    in a browser, the demo phone bought at its opening and paid, the sale
    on the operator page."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(work / "demo.log", "wb")
    demo = subprocess.Popen([str(ROOT / "target/debug/dropgate"), "serve", "--listen", f"127.0.0.1:{port}",
                             "--data-dir", str(work / "demo-data")], stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        printed = ""
        for line in demo.stdout:
            printed += line
            if "/ops" in line:
                break
        assert f"{base}/ " in printed, printed
        card = '[data-drop="demo-phone"]'
        page = browser.new_context(locale="zh-CN").new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        sign_in(page, base, "newcomer")
        expect(page.locator(f"{card} .buy")).to_be_disabled()
        expect(page.locator('[data-drop="mi-15-ultra"] .deposit')).to_contain_text("¥500.00")
        # The button opens with the round on the server's clock: not before, and promptly.
        opens_ms = page.evaluate("Date.parse(shop.drops.get('demo-phone').drop.round.opens_at)")
        page.wait_for_function(f"!document.querySelector('{card} .buy').disabled", timeout=45_000, polling=50)
        enabled_ms = page.evaluate("DG.clock.now()")
        assert opens_ms <= enabled_ms < opens_ms + 1500, (opens_ms, enabled_ms)
        page.click(f"{card} .buy")
        expect(page.locator(f"{card} .message")).to_have_attribute("data-kind", "won")
        add_address(page, "李雷", "13900139000", "北京市", "海淀区中关村大街 1 号")
        checkout = page.locator("#checkout")
        checkout.locator("input[name=method][value=huabei]").check()
        checkout.locator("select.installments").select_option("12")
        pay_in_gateway(page, base, "huabei · 12 期免息")

        ops = browser.new_context(locale="zh-CN").new_page()
        ops.goto(f"{base}/ops")
        expect(ops.locator("#sign-in-note")).to_contain_text(SECRETS["admin_token"])
        ops.fill("#admin-token", SECRETS["admin_token"])
        ops.click("#token-form button[type=submit]")
        live = ops.locator('#live-drops [data-drop="demo-phone"]')
        expect(live.locator('.totals [data-outcome="won"]')).to_have_text("1")
        expect(live.locator('[data-sku="demo-8-256-black"] .remaining')).to_have_text("99 / 100")
        assert not errors, errors
        db = sqlite3.connect(work / "demo-data" / "orders.db")
        rows = db.execute("SELECT user_id, sku, status, payment_method, installments FROM orders").fetchall()
        db.close()
        assert rows == [("newcomer", "demo-8-256-black", "paid", "huabei", 12)], rows
    finally:
        demo.terminate()
        demo.wait(timeout=30)


def main():
    subprocess.run(["cargo", "build", "--locked", "--quiet", "--bin", "dropgate"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="dropgate-pages-"))
    shots = Path(os.environ.get("SCREENSHOTS", work / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    server = Server(work)
    server.start()
    ok = False
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            try:
                test(server, browser, shots)
                test_demo(browser, work)
            finally:
                browser.close()
        ok = True
        print(f"tests/browser/test_pages.py: passed (screenshots in {shots})")
    finally:
        server.stop()
        if ok and "SCREENSHOTS" not in os.environ:
            shutil.rmtree(work, ignore_errors=True)
        elif not ok:
            print(f"tests/browser/test_pages.py: server log and files in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
