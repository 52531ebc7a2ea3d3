"""`sudo-edge`: load the settings, log to stderr (journald keeps it), run the satellite.

`sudo-edge mute`, `unmute` and `status` ask the running daemon instead, over its control socket.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from . import __version__, settings
from .control import COMMANDS, ControlError, ask
from .satellite import serve
from .state import StateError

EX_CONFIG = 78
"""Exit status for a configuration the daemon cannot use; the unit does not restart on it."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="sudo-edge",
        description="Sudo's daemon on the family's Raspberry Pi. Configuration: /etc/sudo/edge.toml "
        "or $SUDO_EDGE_CONFIG; any key as SUDO_EDGE_<SECTION>_<KEY>.",
    )
    parser.add_argument("--version", action="version", version=f"sudo-edge {__version__}")
    parser.add_argument(
        "command",
        nargs="?",
        choices=COMMANDS,
        help="ask the running daemon: mute the microphone (closed until unmuted, across restarts), "
        "unmute it, or show its state; without a command, run the daemon",
    )
    args = parser.parse_args(argv)
    try:
        loaded = settings.load()
    except settings.ConfigError as exc:
        print(f"sudo-edge: {exc}", file=sys.stderr)
        sys.exit(EX_CONFIG)
    if args.command:
        try:
            answer = asyncio.run(ask(loaded.device.control_socket, args.command))
        except ControlError as exc:
            print(f"sudo-edge: {exc}", file=sys.stderr)
            sys.exit(1)
        print(f"{'muted' if answer['muted'] else 'listening'} ({answer['status'] or 'starting'})")
        return
    logging.basicConfig(
        level=loaded.device.log_level.upper(),
        stream=sys.stderr,
        # journald adds the time and the unit; the level stays visible in `journalctl -u sudo-edge`.
        format="%(levelname)s %(name)s: %(message)s",
    )
    if loaded.device.log_level.upper() != "DEBUG":
        # The SDK logs every signal attempt; our own line per failed join says what matters.
        logging.getLogger("livekit").setLevel(logging.ERROR)
    try:
        asyncio.run(serve(loaded))
    except StateError as exc:
        print(f"sudo-edge: {exc}", file=sys.stderr)
        sys.exit(EX_CONFIG)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
