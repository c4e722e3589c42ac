"""``studycast audit``: verify the hash-chained logs, and signed checkpoints of them."""

from __future__ import annotations

from pathlib import Path

import click

from attendance.audit import (
    ChainReport,
    describe_fault,
    make_checkpoint,
    public_key_pem,
    verify_against,
    verify_chains,
)
from attendance.clock import utcnow
from attendance.errors import StudycastError
from attendance.store import Store
from server.cli.common import echo_json, json_option, load_settings, with_store
from server.cli.output import print_table
from server.settings import Settings


@click.group()
def audit() -> None:
    """Check that the attendance log and the admin trail were not altered."""


@audit.command("verify")
@click.option(
    "--against",
    "against",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A checkpoint file: also prove the log extends it unchanged.",
)
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The PEM public key the checkpoint must be signed with (default: this server's key).",
)
@json_option
def verify(against: Path | None, public_key: Path | None, as_json: bool) -> None:
    """Recompute both hash chains; exit 1 naming the first bad row if one does not hold."""
    if public_key is not None and against is None:
        raise click.UsageError("--public-key is only used with --against")
    checkpoint_text = against.read_text(encoding="utf-8") if against else None
    key_pem = public_key.read_bytes() if public_key else None

    @with_store
    async def go(store: Store, settings: Settings) -> ChainReport:
        if checkpoint_text is None:
            return await verify_chains(store, now=utcnow())
        return await verify_against(
            store, checkpoint_text, key_pem or public_key_pem(settings), now=utcnow()
        )

    report = go()
    if as_json:
        echo_json(report.as_json())
    else:
        print_table(
            "audit chains" + (f" against {against.name}" if against else ""),
            ["chain", "rows", "pruned (followed)", "head", "result"],
            [
                (
                    c.chain,
                    c.rows,
                    c.pruned_followed,
                    c.head[:16],
                    f"broken at position {c.fault.position}" if c.fault else "holds",
                )
                for c in report.chains.values()
            ],
        )
    if not report.ok:
        for chain in report.chains.values():
            if not chain.ok:
                click.echo(describe_fault(chain), err=True)
        raise SystemExit(1)
    if not as_json:
        click.echo(
            "the log extends the checkpoint unchanged; both chains hold"
            if against
            else "both chains hold"
        )


@audit.command("checkpoint")
@json_option
def checkpoint(as_json: bool) -> None:
    """Verify both chains and print a checkpoint of them signed with this server's key.

    Save the output to a file and keep it with the public key (``studycast audit public-key``);
    ``studycast audit verify --against FILE`` later proves that the log extends it unchanged.
    """

    @with_store
    async def go(store: Store, settings: Settings) -> str:
        made = await make_checkpoint(store, settings, now=utcnow(), actor="cli")
        return made.document()

    # The document is JSON already: --json prints the same, for scripts that always pass it.
    del as_json
    click.echo(go())


@audit.command("public-key")
def public_key() -> None:
    """Print the public key (PEM) that checks this server's checkpoints."""
    try:
        pem = public_key_pem(load_settings())
    except StudycastError as exc:
        raise click.ClickException(exc.detail) from exc
    click.echo(pem, nl=False)
