"""The article's message centre on a grid of three engine processes: the
user's two devices on two different nodes, the backend's publish (the
article's curl) sent to the third; exact counts."""
from __future__ import annotations

import os

from tests.conftest import EXAMPLE_DIR
from tests.grid.conftest import api
from tests.helpers import assert_silent, receive_json
from tests.integration.test_message_center import ARTICLE_CURL_BODY, EVENT, login


async def test_the_users_devices_on_two_nodes_get_a_publish_sent_to_the_third(
        make_grid, auth_app, session, tmp_path):
    with open(os.path.join(EXAMPLE_DIR, "entry.websocket.lua"), encoding="utf-8") as f:
        entry = tmp_path / "entry.websocket.lua"
        entry.write_text(auth_app.serve(f.read()), encoding="utf-8")
    grid = make_grid(str(entry), "/message-center")
    one, two, three = await grid.start_node(), await grid.start_node(), await grid.start_node()
    # login() wants something with a ws_url: a node has one
    phone = await login(session, one, "***")  # uid 1001
    laptop = await login(session, two, "token-1001")  # uid 1001 too
    other = await login(session, three, "token-1002")  # another user, on the publishing node
    await grid.wait_subscribed("user:1001", 2)
    async with session.post(three.api_url + "/v1/mesh/publish", data=ARTICLE_CURL_BODY,
                            headers={"Content-Type": "application/json"}) as resp:
        assert await resp.json() == {"E": None, "r": {"s": 2, "f": 0}}
    assert await receive_json(phone) == EVENT
    assert await receive_json(laptop) == EVENT
    await assert_silent(other)
    # the laptop unsubscribes: the count follows, node two leaves the channel on the broker
    await laptop.send_str('{"op":"unsubscribe","channel":"@user"}')
    assert await receive_json(laptop) == {"result": True}
    await grid.wait_subscribed("user:1001", 1)
    assert await api(session, three, "/v1/mesh/publish", {"c": "user:1001", "d": "again"}) == {
        "E": None, "r": {"s": 1, "f": 0}}
    assert (await phone.receive(timeout=5)).data == "again"
    await assert_silent(laptop)
