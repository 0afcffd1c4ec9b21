"""`python -m vebus_console.passwd`: the hash to put in `console.users` for a password or token.

Reads the secret from standard input (one line; prompted without echo on a terminal) and
prints its scrypt hash, e.g.:

    $ python -m vebus_console.passwd
    password: ********
    scrypt$16384$8$1$...

`--new-token` makes a random bearer token instead and prints both: the token (give it to
whoever uses it; it is shown once) and its hash (for the config).
"""

from __future__ import annotations

import argparse
import getpass
import sys

from vebus.passwords import hash_secret, new_token

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m vebus_console.passwd",
        description="Print the scrypt hash of a password or token for console.users.",
    )
    p.add_argument("--new-token", action="store_true", help="make a random bearer token")
    a = p.parse_args(argv)
    if a.new_token:
        token = new_token()
        print(f"token:      {token}")
        print(f"token_hash: {hash_secret(token)}")
        return 0
    if sys.stdin.isatty():
        secret = getpass.getpass("password: ")
    else:
        secret = sys.stdin.readline().rstrip("\n")
    if not secret:
        print("vebus console: an empty password cannot sign in", file=sys.stderr)
        return 2
    print(hash_secret(secret))
    return 0


if __name__ == "__main__":
    sys.exit(main())
