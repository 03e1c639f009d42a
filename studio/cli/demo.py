"""medisyn CLI commands: demo (`medisyn demo`)."""
from __future__ import annotations

import click

from studio.cli.groups import cli, model, study  # noqa: F401  (groups these commands attach to)


@cli.command("demo")
@click.option("--db", "db_path", default="data/studio.db", show_default=True, type=click.Path(dir_okay=False),
              help="Study database (created if missing).")
@click.option("--model", default=None,
              help="Registry key, diffusers folder or cached Hub id [default: the embedded model].")
@click.option("--base-url", default="http://127.0.0.1:7860/", show_default=True,
              help="Address of the studio, for the reader link.")
def demo_command(db_path, model, base_url):
    """Seed the demo study (held-out real + freshly generated images, turing and alignment tasks)
    and print a demo reader link and the admin login. Run again, it reuses the study and
    prints the same link (kept in <db stem>.demo-reader next to the database)."""
    import pathlib

    from studio.web import auth
    from studio.demo.study import seed_demo

    pathlib.Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    info = seed_demo(db_path, model, keep_token=auth.write_private, base_url=base_url,
                     log=lambda msg: click.echo(msg, err=True))
    creds, password = auth.load_or_create(db_path)
    if info.created:
        click.echo(f"created study {info.study!r}: {info.n_real} real + {info.n_synthetic} synthetic images "
                   f"({', '.join(info.modalities)}) in {info.seconds:.0f} s")
    else:
        kept = "same link" if info.link_kept else "new link"
        click.echo(f"study {info.study!r} already exists: reusing it ({kept} for {info.reader!r})")
    click.echo(f"demo reader: {info.link}")
    for note in info.notes:
        click.echo(f"note: {note}")
    if password:
        click.echo(f"admin login: {creds.user} / {password}   (shown once; only a hash is stored in "
                   f"{auth.config_path(db_path)})")
    elif creds.source == "env":
        click.echo(f"admin login: {creds.user} / (MEDISYN_ADMIN_PASSWORD)")
    else:
        click.echo(f"admin login: {creds.user} / (set earlier; hash in {auth.config_path(db_path)})")
