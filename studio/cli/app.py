"""medisyn CLI commands: app (`medisyn studio`)."""
from __future__ import annotations

import click

from studio.cli.groups import cli, model, study  # noqa: F401  (groups these commands attach to)


@cli.command("studio")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0 for every interface).")
@click.option("--port", default=7860, show_default=True, type=int)
@click.option("--db", "db_path", default="data/studio.db", show_default=True,
              type=click.Path(dir_okay=False), help="Study database (created if missing).")
@click.option("--model", "model", default=None,
              help="Default model of the Generate tab and of the demo study: a registry key, "
                   "a Hub id in the local cache or a diffusers folder [default: the embedded "
                   "model assets/medisyn-mini].")
@click.option("--base-url", default=None,
              help="Public address for reader links, e.g. https://studio.example.org/ "
                   "[default: http://HOST:PORT/].")
@click.option("--no-demo", is_flag=True, help="Do not seed the demo study into an empty database.")
@click.option("--reset-admin-password", is_flag=True,
              help="Generate and print a new admin password (ignored when "
                   "MEDISYN_ADMIN_PASSWORD is set).")
@click.option("--writer-process/--no-writer-process", default=True, show_default=True,
              help="Commit readers' answers in a process of its own, which keeps answering "
                   "fast under many readers (docs/benchmarks.md).")
@click.option("--forwarded-allow-ips", default=None, metavar="ADDRESSES",
              help="Your reverse proxy's address(es), comma-separated (e.g. 127.0.0.1): only "
                   "from these is X-Forwarded-For/-Proto believed, for the login lockout and "
                   "HTTPS cookies [default: none; the client is the TCP peer].")
def studio_command(host, port, db_path, model, base_url, no_demo, reset_admin_password,
                   writer_process, forwarded_allow_ips):
    """Start the studio: readers at http://HOST:PORT/?token=..., researchers at /admin.

    On first start with an empty database the demo study is seeded (embedded model) and the
    admin credentials and a demo reader link are printed; later starts print the same demo
    link (kept in <db stem>.demo-reader, mode 0600). Admin credentials come from
    MEDISYN_ADMIN_USER / MEDISYN_ADMIN_PASSWORD, else from <db>.admin.json next to the
    database (generated on first start; only a hash is stored).
    """
    from studio.web import app as app_mod

    try:
        info = app_mod.prepare(db_path, model=model, seed_demo=not no_demo, host=host,
                               port=port, base_url=base_url,
                               reset_admin_password=reset_admin_password,
                               echo=lambda msg: click.echo(msg, err=True))
    except app_mod.StartError as exc:
        raise click.ClickException(str(exc)) from None
    from studies.storage import settings
    from studies.errors import StudyError

    try:  # so that `medisyn study invite` later prints links to this studio
        settings.set_base_url(info.db_path, info.base_url)
    except StudyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(info.banner())
    app_mod.launch(info.db_path, host=host, port=port, model=info.model,
                   admin_auth=info.admin_auth, base_url=info.base_url,
                   writer_process=writer_process, forwarded_allow_ips=forwarded_allow_ips,
                   echo=lambda msg: click.echo(msg, err=True))
