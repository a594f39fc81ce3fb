"""The chat worker: consumes the "chat" topic and answers every sender.

Run alone, it logs what it does: "consuming chat from ...", one line per
answer, and the consumer's "connection lost; connecting again" / "cannot
connect ...; again in 0.4s" while the engine restarts."""
import asyncio
import contextlib
import logging
import sys

from connmix_py.client import ApiError, AsyncClient, Consumer

log = logging.getLogger("chat-worker")


async def main(api: str = "http://127.0.0.1:6789") -> None:
    async with AsyncClient(api, transport="ws") as client, Consumer(api, ["chat"]) as frames:
        async for frame in frames:  # frame.client_id sent frame.data
            with contextlib.suppress(ApiError):  # 401: the sender left meanwhile
                await client.send(frame.client_id, f"you said: {frame.data}")
                log.info("answered client %s", frame.client_id)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(*sys.argv[1:]))
