"""The ``studycast`` command line. Each group lives in its own module; this one assembles them."""

from __future__ import annotations

import click

from server.cli.audit import audit
from server.cli.common import settings_options
from server.cli.db import db
from server.cli.directory import unit, venue
from server.cli.loadtest import loadtest as loadtest_command
from server.cli.nodes import node
from server.cli.publish import publish
from server.cli.report import report
from server.cli.retention import retention
from server.cli.roster import roster
from server.cli.serve import serve
from server.cli.sessions import session
from server.cli.users import user
from server.cli.watch import watch


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@settings_options
def main() -> None:
    """studycast: live study sessions for many venues and members, with an audited record."""


for command in (
    serve,
    db,
    user,
    roster,
    unit,
    venue,
    session,
    report,
    audit,
    retention,
    loadtest_command,
    publish,
    watch,
    node,
):
    main.add_command(command)
