"""``studycast loadtest``: many frame-counting WHEP viewers on one session; prints JSON results.

The viewers live in ``client.loadtest`` (imported when the command runs, so ``studycast --help``
stays quick); see it for what is measured and how.
"""

from __future__ import annotations

import click

from attendance.errors import InvalidInput
from server.addresses import check_addresses
from server.cli.common import echo_json, run

# The same limits as client.loadtest.MAX_VIEWERS / MAX_SECONDS / MAX_PROCS (a test checks).
MAX_VIEWERS = 2000
MAX_SECONDS = 3600
MAX_PROCS = 32


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--whep",
    "whep_url",
    required=True,
    metavar="URL",
    help="WHEP endpoint of the session, e.g. http://127.0.0.1:8080/whep/SESSION.",
)
@click.option(
    "--token",
    required=True,
    envvar="STUDYCAST_WHEP_TOKEN",
    show_envvar=True,
    help="Viewer token, sent as a bearer token.",
)
@click.option(
    "--viewers", type=click.IntRange(1, MAX_VIEWERS), required=True, help="How many viewers."
)
@click.option(
    "--seconds",
    type=click.IntRange(1, MAX_SECONDS),
    required=True,
    help="How long every viewer watches once all have joined.",
)
@click.option(
    "--procs",
    type=click.IntRange(1, MAX_PROCS),
    default=1,
    show_default=True,
    help="Processes to spread the viewers over (about one per spare core).",
)
@click.option(
    "--ramp",
    type=click.FloatRange(0.1, 1000),
    default=20.0,
    show_default=True,
    help="Viewers joining per second, over all processes.",
)
@click.option(
    "--ice-address",
    "ice_addresses",
    multiple=True,
    default=("127.0.0.1",),
    show_default=True,
    help="Address the viewers offer as ICE host candidate (repeatable).",
)
def loadtest(
    whep_url: str,
    token: str,
    viewers: int,
    seconds: int,
    procs: int,
    ramp: float,
    ice_addresses: tuple[str, ...],
) -> None:
    """Watch a session with many cheap viewers and print what they received, as JSON."""
    if not whep_url.startswith(("http://", "https://")):
        raise click.BadParameter("must be an http:// or https:// URL", param_hint="--whep")
    try:
        addresses = check_addresses(ice_addresses)
    except InvalidInput as exc:
        raise click.BadParameter(exc.detail, param_hint="--ice-address") from exc
    from client.loadtest import run_loadtest  # aiortc and av load only when needed

    result = run(
        run_loadtest(
            whep_url,
            token,
            viewers,
            seconds,
            procs,
            ramp_per_second=ramp,
            ice_addresses=addresses,
        )
    )
    echo_json(result)
