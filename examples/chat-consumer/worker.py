"""The chat worker: consumes the "chat" topic and answers every sender."""
import asyncio
import contextlib
import sys

from connmix_py.client import ApiError, AsyncClient, Consumer


async def main(api: str = "http://127.0.0.1:6789") -> None:
    async with AsyncClient(api, transport="ws") as client, Consumer(api, ["chat"]) as frames:
        async for frame in frames:  # frame.client_id sent frame.data
            with contextlib.suppress(ApiError):  # 401: the sender left meanwhile
                await client.send(frame.client_id, f"you said: {frame.data}")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
