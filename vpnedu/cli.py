"""The ``vpnedu`` command line.

Every user error ends as one line on stderr -- ``vpnedu: error: <what is
wrong>; <how to fix it>`` -- and exit status 1, never a traceback.
"""

from __future__ import annotations

import sys
import warnings

import click

from . import __version__
from .errors import VpneduError
from .protocol import keys as _keys
from .protocol.suites import SUITES, InsecureSuiteWarning


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="vpnedu")
def cli() -> None:
    """vpnedu: a WireGuard-compatible VPN in Python that shows how it works.

    Start with 'vpnedu handshake-demo' (no root needed).
    """


@cli.command()
def genkey() -> None:
    """Print a new private key (like 'wg genkey')."""
    click.echo(_keys.encode(_keys.generate_private_key()))


@cli.command()
def pubkey() -> None:
    """Read a private key on stdin, print its public key (like 'wg pubkey')."""
    data = sys.stdin.read()
    if not data.strip():
        raise VpneduError("no private key on standard input", "pipe one in: vpnedu genkey | vpnedu pubkey")
    click.echo(_keys.encode(_keys.public_key(_keys.decode(data, "private key"))))


@cli.command()
def genpsk() -> None:
    """Print a new pre-shared key (like 'wg genpsk')."""
    click.echo(_keys.encode(_keys.generate_psk()))


@cli.command("handshake-demo")
@click.option("--suite", type=click.Choice(list(SUITES)), default="wireguard", show_default=True,
              help="Cipher suite both peers use.")
@click.option("--allow-null-teaching", is_flag=True,
              help="Permit the null-teaching suite (tunnel data NOT encrypted).")
def handshake_demo(suite: str, allow_null_teaching: bool) -> None:
    """Two in-memory peers: a handshake and a ping, every message's fields printed."""
    from .demo import handshake_demo as run

    if not run(suite, allow_insecure=allow_null_teaching, out=click.echo):
        raise VpneduError("the demo's ping did not get through", "please report this as a bug")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    prefix = "WARNING" if issubclass(category, InsecureSuiteWarning) else "warning"
    click.echo(f"vpnedu: {prefix}: {message}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning every VpneduError into one line."""
    warnings.showwarning = _show_warning
    warnings.simplefilter("always", InsecureSuiteWarning)
    try:
        cli.main(args=argv, prog_name="vpnedu", standalone_mode=False)
    except VpneduError as e:
        click.echo(f"vpnedu: error: {e}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("vpnedu: interrupted", err=True)
        return 130
    except click.ClickException as e:
        click.echo(f"vpnedu: error: {e.format_message()} (see 'vpnedu --help')", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("vpnedu: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
