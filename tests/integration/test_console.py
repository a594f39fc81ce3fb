"""The web console (GET /console) in a real headless Chromium: Debian's
``chromium`` driven by Playwright's Python package (no browser download:
``executable_path`` is the system's). Each test saves a screenshot in its
tmp_path."""
from __future__ import annotations

import asyncio
import json
import os
import re

import aiohttp
import pytest
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, async_playwright, expect

from connmix_py import Engine, parse_settings
from tests.conftest import engine_config, reference_command
from tests.helpers import assert_silent
from tests.integration.test_message_center import EVENT, start_example

CHROMIUM = reference_command("chromium", "chromium")
# Generous: the machine is shared; these guard against a hang, not a speed.
WAIT_MS = 15_000

NONZERO_RATE = re.compile(r"^(?!0\.0$)\d+\.\d$")

# Echoes frames as they came; "boom" fails the callback (close 1011);
# "sub <channel>" subscribes and answers the client id.
SCRIPT = """
function on_message(msg)
    local conn = mix.websocket()
    if msg.data == "boom" then error("boom") end
    local channel = msg.type == "text" and string.match(msg.data, "^sub (.+)$")
    if channel then
        conn:subscribe(channel)
        conn:set_context_value("joined", channel)
        conn:send(conn:client_id())
        return
    end
    conn:send(msg.data, msg.type)
end
"""

VIEWER = {"username": "viewer", "password": "s3cret-Viewer", "roles": ["read"]}
# What Chromium logs for a request answered 403 (not an error of the page's own).
FORBIDDEN_LOGGED = "Failed to load resource: the server responded with a status of 403 (Forbidden)"
ADMIN = {"username": "admin", "password": "s3cret-Admin", "roles": ["read", "write"]}


@pytest.fixture
async def browser():
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        await launched.close()


class ConsolePage:
    """A browser page on /console that records what would be console errors."""

    def __init__(self, page: Page, tmp_path) -> None:
        self.page = page
        self.tmp_path = tmp_path
        self.errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    async def open(self, api_port: int):
        response = await self.page.goto(f"http://127.0.0.1:{api_port}/console")
        return response

    async def screenshot(self, name: str) -> None:
        await self.page.screenshot(path=os.path.join(self.tmp_path, f"{name}.png"), full_page=True)

    async def log_shows(self, text: str) -> None:
        await expect(self.page.locator("#ws-log")).to_contain_text(text, timeout=WAIT_MS)


@pytest.fixture
async def open_console(browser, tmp_path):
    contexts = []

    async def open_page(api_port: int, credentials: dict | None = None) -> ConsolePage:
        http_credentials = ({"username": credentials["username"], "password": credentials["password"]}
                            if credentials else None)
        context = await browser.new_context(http_credentials=http_credentials)
        contexts.append(context)
        console = ConsolePage(await context.new_page(), tmp_path)
        await console.open(api_port)
        return console

    yield open_page
    for context in contexts:
        await context.close()


async def test_page_loads_without_console_errors(start_engine, open_console):
    running = await start_engine(SCRIPT)
    console = await open_console(running.engine.api_port)
    page = console.page
    await expect(page.locator("#fig-node")).to_have_text("1", timeout=WAIT_MS)
    await expect(page.locator("#servers tbody tr")).to_have_count(1, timeout=WAIT_MS)
    await expect(page.locator("#ws-url")).to_have_value(
        f"ws://127.0.0.1:{running.engine.server_port()}/ws", timeout=WAIT_MS)
    await console.screenshot("loaded")
    assert console.errors == []


async def test_figures_change_after_a_client_connects(start_engine, open_console):
    running = await start_engine(SCRIPT)
    console = await open_console(running.engine.api_port)
    page = console.page
    await expect(page.locator("#fig-connections")).to_have_text("0", timeout=WAIT_MS)
    ws = await running.connect()
    await ws.send_str("sub news")
    assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.TEXT  # its client id
    await expect(page.locator("#fig-connections")).to_have_text("1", timeout=WAIT_MS)
    await expect(page.locator("#fig-channels")).to_have_text("1", timeout=WAIT_MS)
    await expect(page.locator("#fig-subscriptions")).to_have_text("1", timeout=WAIT_MS)
    await expect(page.locator("#servers tbody td").nth(3)).to_have_text("1", timeout=WAIT_MS)
    # Messages in and out while the page polls: it shows rates above zero.
    rates = [page.locator("#fig-in-rate"), page.locator("#fig-out-rate")]
    for _ in range(WAIT_MS // 100):
        await ws.send_str("ping")
        assert (await ws.receive(timeout=5)).data == "ping"
        shown = [await rate.text_content() or "" for rate in rates]
        if all(NONZERO_RATE.match(text) for text in shown):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"the rates never went above zero: {shown}")
    await ws.send_str("boom")  # a Lua error: counted, the client closed with 1011
    assert (await ws.receive(timeout=5)).data == 1011
    await expect(page.locator("#fig-lua-errors")).to_have_text("1", timeout=WAIT_MS)
    await expect(page.locator("#fig-connections")).to_have_text("0", timeout=WAIT_MS)
    await console.screenshot("figures")
    assert console.errors == []


async def push(console: ConsolePage, kind: str, target: str, data: str, binary: bool = False) -> None:
    page = console.page
    await page.locator(f'input[name="kind"][value="{kind}"]').check()
    await page.locator("#push-target").fill(target)
    await page.locator("#push-data").fill(data)
    await page.locator("#push-binary").set_checked(binary)
    await page.locator("#push-form button[type=submit]").click()


async def client_send(console: ConsolePage, text: str, binary: bool = False) -> None:
    page = console.page
    await page.locator("#ws-binary").set_checked(binary)
    await page.locator("#ws-message").fill(text)
    await page.locator("#ws-send").click()


async def client_connect(console: ConsolePage, url: str | None = None) -> None:
    """Connect the page's test client (to the suggested server when url is None)."""
    page = console.page
    await expect(page.locator("#ws-url")).not_to_have_value("", timeout=WAIT_MS)
    if url is not None:
        await page.locator("#ws-url").fill(url)
    await page.locator("#ws-connect").click()
    await console.log_shows("open")


async def test_client_completes_the_message_center_flow(auth_app, tmp_path, open_console):
    """The article's flow, every step in the page: the test client logs in
    and subscribes, the publish form sends the article's message, the
    inspector shows the subscriber with its uid, the client closes."""
    center = await start_example(auth_app, tmp_path)
    try:
        console = await open_console(center.engine.api_port)
        await client_connect(console)
        await client_send(console, '{"op":"auth","token":"***"}')
        await console.log_shows('← {"result":true}')
        await client_send(console, '{"op":"subscribe","channel":"@user"}')
        await expect(console.page.locator("#ws-log li.in")).to_have_count(2, timeout=WAIT_MS)
        await push(console, "publish", "user:1001", json.dumps(EVENT, separators=(",", ":")))
        await expect(console.page.locator("#push-result")).to_have_text(
            "published: delivered to 1, failed 0", timeout=WAIT_MS)
        await console.log_shows(f"← {json.dumps(EVENT, separators=(',', ':'))}")
        await console.page.locator("#inspect-channel").fill("user:1001")
        await console.page.locator("#inspect-form button[type=submit]").click()
        inspector = console.page.locator("#inspect-result")
        await expect(inspector).to_contain_text('"uid": 1001', timeout=WAIT_MS)
        await expect(inspector).to_contain_text("user:1001", timeout=WAIT_MS)
        await console.screenshot("message-center")
        await console.page.locator("#ws-close").click()
        await console.log_shows("closed: code 1000")
        assert console.errors == []
    finally:
        await center.engine.stop()


async def test_client_sends_binary_and_shows_close_codes(start_engine, open_console):
    running = await start_engine(SCRIPT)
    console = await open_console(running.engine.api_port)
    await client_connect(console)
    await client_send(console, "hello")
    await console.log_shows("← hello")
    await client_send(console, "01 ff 7e", binary=True)
    await console.log_shows("← binary 01 ff 7e")
    await client_send(console, "zz", binary=True)
    await console.log_shows("binary: give hex bytes")
    await client_send(console, "boom")  # the script fails: the engine closes with 1011
    await console.log_shows("closed: code 1011")
    await console.screenshot("test-client")
    assert console.errors == []


async def test_publish_and_send_forms_deliver_to_a_connected_client(start_engine, open_console, session):
    running = await start_engine(SCRIPT)
    ws = await running.connect()
    await ws.send_str("sub news")
    client_id = (await ws.receive(timeout=5)).data
    console = await open_console(running.engine.api_port)
    await push(console, "publish", "news", "extra!")
    await expect(console.page.locator("#push-result")).to_have_text(
        "published: delivered to 1, failed 0", timeout=WAIT_MS)
    assert (await ws.receive(timeout=5)).data == "extra!"
    await push(console, "send", client_id, "AAEC", binary=True)
    await expect(console.page.locator("#push-result")).to_have_text("sent", timeout=WAIT_MS)
    assert (await ws.receive(timeout=5)).data == b"\x00\x01\x02"
    await push(console, "send", "999999", "lost")
    await expect(console.page.locator("#push-result")).to_contain_text("error 401: send failed", timeout=WAIT_MS)
    await console.screenshot("push")
    await assert_silent(ws)
    assert console.errors == []


async def test_channel_inspector_lists_channels_and_shows_context(start_engine, open_console):
    running = await start_engine(SCRIPT)
    ws = await running.connect()
    await ws.send_str("sub <b>room</b>")  # a channel name is shown as text, never as HTML
    client_id = (await ws.receive(timeout=5)).data
    console = await open_console(running.engine.api_port)
    page = console.page
    await page.locator("#list-channels").click()
    await page.get_by_role("link", name="<b>room</b>").click()
    inspector = page.locator("#inspect-result")
    await expect(inspector).to_contain_text(client_id, timeout=WAIT_MS)
    await expect(inspector).to_contain_text('"joined": "<b>room</b>"', timeout=WAIT_MS)
    assert await page.locator("#inspect-result b").count() == 0
    await page.locator("#inspect-channel").fill("empty")
    await page.locator("#inspect-form button[type=submit]").click()
    await expect(inspector).to_have_text("nobody is subscribed to empty on this node", timeout=WAIT_MS)
    await console.screenshot("inspector")
    assert console.errors == []


@pytest.fixture
async def guarded_engine(tmp_path):
    entry = tmp_path / "entry.lua"
    entry.write_text(SCRIPT)
    conf = engine_config(str(entry))
    conf["access"] = {"users": [VIEWER, ADMIN]}
    engine = Engine(parse_settings(conf, base_dir=str(tmp_path)))
    await engine.start()
    yield engine
    await engine.stop()


async def test_with_access_control_the_page_asks_for_credentials(guarded_engine, browser, tmp_path):
    context = await browser.new_context()
    try:
        page = await context.new_page()
        answers = []
        page.on("response", lambda answer: answers.append(answer))
        # Headless Chromium has no credentials dialog: it gives up on the challenge.
        with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
            await page.goto(f"http://127.0.0.1:{guarded_engine.api_port}/console")
        assert [answer.status for answer in answers] == [401]
        assert await answers[0].header_value("www-authenticate") == 'Basic realm="connmix"'
        await page.screenshot(path=os.path.join(tmp_path, "credentials-asked.png"))
    finally:
        await context.close()


async def test_a_read_only_user_sees_the_figures_but_cannot_publish(guarded_engine, open_console, session):
    ws = await session.ws_connect(f"http://127.0.0.1:{guarded_engine.server_port()}/ws")
    await ws.send_str("sub news")
    await ws.receive(timeout=5)
    console = await open_console(guarded_engine.api_port, VIEWER)
    page = console.page
    await expect(page.locator("#fig-subscriptions")).to_have_text("1", timeout=WAIT_MS)
    await push(console, "publish", "news", "not allowed")
    result = page.locator("#push-result")
    await expect(result).to_have_text("403 forbidden: user 'viewer' lacks the write role", timeout=WAIT_MS)
    await expect(result).to_have_class("result error")
    await console.screenshot("read-only")
    await assert_silent(ws)
    writer = await open_console(guarded_engine.api_port, ADMIN)
    await push(writer, "publish", "news", "allowed")
    await expect(writer.page.locator("#push-result")).to_have_text(
        "published: delivered to 1, failed 0", timeout=WAIT_MS)
    assert (await ws.receive(timeout=5)).data == "allowed"
    # The browser logs the refused request itself; nothing else went wrong.
    assert console.errors == [FORBIDDEN_LOGGED] and writer.errors == []


async def test_read_endpoints_answer_without_the_page(start_engine, session):
    running = await start_engine(SCRIPT)
    ws = await running.connect()
    await ws.send_str("sub news")
    client_id = (await ws.receive(timeout=5)).data
    async with session.get(running.api_url + "/v1/console/channel") as resp:
        assert await resp.json() == {"E": {"c": 101, "m": "c must be a non-empty string (channel)"}}
    async with session.get(running.api_url + "/v1/console/channel?c=news") as resp:
        subscriber, = (await resp.json())["r"]["subscribers"]
    assert subscriber["client_id"] == client_id and subscriber["context"] == {"joined": "news"}
    async with session.get(running.api_url + "/v1/console/channels") as resp:
        assert (await resp.json())["r"] == {"channels": [{"name": "news", "subscribers": 1}], "total": 1}
    async with session.get(running.api_url + "/v1/console/summary") as resp:
        summary = (await resp.json())["r"]
    assert summary["servers"] == [{"protocol": "websocket", "port": running.engine.server_port(), "path": "/ws",
                                   "connections": 1}]
    assert (summary["connections"], summary["channels"], summary["subscriptions"]) == (1, 1, 1)
    assert summary["messages_in"] == 1 and summary["messages_out"] == 1


async def test_read_endpoints_need_the_read_role(guarded_engine, session):
    url = f"http://127.0.0.1:{guarded_engine.api_port}/v1/console/summary"
    async with session.get(url) as resp:
        assert resp.status == 401
    viewer = {"Authorization": aiohttp.encode_basic_auth(VIEWER["username"], VIEWER["password"])}
    async with session.get(url, headers=viewer) as resp:
        assert resp.status == 200 and (await resp.json())["r"]["node"] == 1
