"""A TCP forwarder for the several-hosts rig: `python -m tests.tcp_forward LISTEN=TARGET …`.

Each argument is `host:port=host:port`; every connection accepted on the first address is carried
byte for byte to the second (half-closes passed on). Prints `ready` once every address is bound.
It stands in for the network between hosts: PostgreSQL and RabbitMQ listen on 127.0.0.1 only
here, and a worker in a network namespace reaches them over its veth through one of these.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

_CHUNK = 256 * 1024


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"not host:port: {text!r}")
    return host, int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies until EOF, then passes the EOF on (a half-close), or drops on a broken connection."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


async def _serve(routes: list[tuple[tuple[str, int], tuple[str, int]]]) -> None:
    servers = []
    for listen, target in routes:

        async def handle(
            reader: asyncio.StreamReader,
            writer: asyncio.StreamWriter,
            target: tuple[str, int] = target,
        ) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection(*target)
            except OSError:
                writer.transport.abort()
                return
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                for w in (writer, up_writer):
                    w.close()
                    with contextlib.suppress(ConnectionError, OSError):
                        await w.wait_closed()

        servers.append(await asyncio.start_server(handle, *listen, reuse_address=True))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: list[str]) -> int:
    routes = []
    for arg in argv:
        listen, sep, target = arg.partition("=")
        if not sep:
            raise SystemExit(f"not LISTEN=TARGET: {arg!r}")
        routes.append((_address(listen), _address(target)))
    if not routes:
        raise SystemExit("usage: python -m tests.tcp_forward HOST:PORT=HOST:PORT …")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(routes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
