"""A TCP proxy that can cut a connection on demand: how the tests make Firestore "unavailable".

    python -m emulators.faultproxy --listen 127.0.0.1:PORT --target 127.0.0.1:PORT --down-flag FILE

While FILE exists, every open connection is closed and new ones are refused, so the real
client sees UNAVAILABLE exactly as it would when Firestore is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path


class Proxy:
    def __init__(self, target: tuple[str, int], down_flag: Path) -> None:
        self.target = target
        self.down_flag = down_flag
        self.writers: set[asyncio.StreamWriter] = set()

    def down(self) -> bool:
        return self.down_flag.exists()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down():
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if self.down():  # checked on every chunk: not a byte passes once the flag is set
                        dst.transport.abort()
                        break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()
                self.writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def watch(self) -> None:
        while True:
            if self.down():
                for writer in list(self.writers):
                    writer.transport.abort()
                self.writers.clear()
            await asyncio.sleep(0.05)


async def serve(listen: tuple[str, int], proxy: Proxy) -> None:
    server = await asyncio.start_server(proxy.handle, *listen)
    async with server:
        await asyncio.gather(server.serve_forever(), proxy.watch())


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_hostport, required=True)
    parser.add_argument("--target", type=_hostport, required=True)
    parser.add_argument("--down-flag", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.listen, Proxy(args.target, args.down_flag)))


if __name__ == "__main__":
    main()
