"""
A tiny server-speaks-first backend (SMTP-like), run as a subprocess by the tests.

It listens on 127.0.0.1 (a free port unless ``--port``), prints
``listening on 127.0.0.1:PORT``, and for each connection prints
``connection from HOST:PORT``, writes the banner line at once, then answers
``QUIT`` with ``221 bye`` (and closes) and any other line with ``250 ok``.

    python banner_server.py --banner "220 example ESMTP"
"""

from __future__ import annotations

import argparse
import asyncio


async def serve(host: str, port: int, banner: bytes) -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        print(f"connection from {peer[0]}:{peer[1]}", flush=True)
        writer.write(banner + b"\r\n")
        try:
            await writer.drain()
            while line := await reader.readline():
                if line.strip().upper() == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    break
                writer.write(b"250 ok\r\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(session, host, port)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--banner", default="220 banner.example.test ESMTP")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.banner.encode("utf-8")))


if __name__ == "__main__":
    main()
