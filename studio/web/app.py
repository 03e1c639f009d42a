"""The studio web app: two Gradio apps on one FastAPI server.

- `/`       the reader app (`studio.reader.page`). No login: a reader's personal link
            `/?token=...` is the credential, checked in every event.
- `/admin`  the researcher app (`studio.admin.view`, with the Generate tab from
            `studio.admin.generate`), behind Gradio's login (`auth=`; credentials from
            `studio.web.auth`). Every admin handler also checks `request.username` itself.

Two separate Blocks rather than one app with hidden admin tabs: the reader app's config,
API and file routes contain nothing of the admin side, and Gradio's auth on `/admin`
guards that app's config, queue, upload and file routes, while readers at `/` never meet a
login form. Gradio's auth cookie is named per app, so the two do not interfere.

File access: no `allowed_paths`; the study's stimuli folder, the database files, the
admin config and the demo reader's token file are in `blocked_paths`. Readers get their
images from the app's own route, `GET /stimulus/<view id>?token=<token>`
(`stimulus_response`): the stored PNG bytes of that reader's current read, `no-store`.
`ReaderRouteGuard` refuses every Gradio file route (`file=`, `file/`) and every upload on
the reader side; Gradio's login guards the admin side's file and upload routes.
`studio.web.security` wraps everything: cross-origin writes refused, no CORS, SameSite=Lax
cookies, CSP and friends on every response, no API descriptions, bad `fn_index` → 422.

Concurrency: reader events are short SQLite calls on a fresh connection each; they share
one concurrency group sized for many simultaneous readers (`READER_CONCURRENCY`), and the
thread pool is raised to match. Generation is CPU-heavy and gets its own small limit.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import pathlib
import re
import socket
import sqlite3
import threading
import time

from studio.web import auth as auth_mod
from studio.web import security as web_security

log = logging.getLogger(__name__)

READER_CONCURRENCY = 64     # >= 50 simultaneous readers, each event a few ms of SQLite
THREADS = 128               # anyio worker threads (Gradio runs sync handlers there)
READER_MAX_UPLOAD = 1024    # the reader app has no upload component: refuse any upload
ADMIN_MAX_UPLOAD = 512 * 1024 * 1024  # a study zip


def blocked_paths(db_path) -> list[str]:
    from studies.storage.connections import stimuli_dir

    db = pathlib.Path(db_path).resolve()
    return [str(stimuli_dir(db)), str(db), f"{db}-wal", f"{db}-shm",
            str(auth_mod.config_path(db)), str(_demo_token_path(db))]


def _demo_token_path(db: pathlib.Path) -> pathlib.Path:
    from studio.demo.study import token_path

    return token_path(db)


# Gradio 6 serves a file named in the URL at /gradio_api/file=<path> and at its alias
# /gradio_api/file/<path>; match both (and any future prefix) wherever they appear.
FILE_ROUTE = re.compile(r"/file[=/]")
# Routes that take data in. Neither app records audio or streams media, so those are
# refused on both sides; only the admin uploads (a study zip), so uploads only there.
NO_INPUT_ROUTE = re.compile(r"/process_recording/?$|^(?:/gradio_api)?/stream/")
UPLOAD_ROUTE = re.compile(r"/(?:upload|upload_progress)/?$")
# Routes neither app uses that fetch or list files (reverse proxy, run history on the Hub,
# monitoring, dev/vibe/profiling tools). Refused on both sides: less surface, no network.
UNUSED_ROUTE = re.compile(r"^(?:/gradio_api)?/(?:proxy=|run-history/|runs/?$|monitoring"
                          r"|vibe-|undo-vibe-edit|dev/reload|profiling/)")


def _not_found():
    from starlette.responses import PlainTextResponse

    return PlainTextResponse("Not found", status_code=404)


def refused_route(path: str) -> bool:
    """Outside /admin: no Gradio file route serves anything (stimuli come from
    `stimulus_response`), and nothing is uploaded.
    Inside /admin, Gradio's login check guards file and upload routes; routes neither app
    uses (streams, recordings, proxy, run history ...) are refused on both sides."""
    is_admin = path == "/admin" or path.startswith("/admin/")
    local = path[len("/admin"):] if is_admin else path
    route = re.sub(r"/{2,}", "/", local)  # route names only; a file target keeps its slashes
    if UNUSED_ROUTE.search(route) or NO_INPUT_ROUTE.search(route):
        return True
    if is_admin:
        return False
    return bool(UPLOAD_ROUTE.search(route) or FILE_ROUTE.search(local))


class ReaderRouteGuard:
    """`refused_route` as a plain ASGI middleware: a 404 before any app sees the request.
    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which re-wraps every response
    (Gradio's event streams included) in an extra task and memory stream per request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and refused_route(scope["path"]):
            await _not_found()(scope, receive, send)
            return
        await self.app(scope, receive, send)


STIMULUS_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                    "X-Content-Type-Options": "nosniff"}


def stimulus_response(db_path: str, view_id: str, token: str | None):
    """The PNG of a reader's current read: `view_id` must be an unanswered read of the
    reader whose token this is (a repeat or attention check has its own id; another
    reader's id, an answered read or no token: 404, the same answer as an unknown id). The
    stored bytes are sent as they are — already normalised and metadata-free
    (`studies.imaging.stimuli`) — with no re-encoding and no file written. A missing or unreadable
    file is logged for the admin and answered 503 in words."""
    from starlette.responses import PlainTextResponse, Response

    from studies import serving
    from studies.errors import NotAuthorised

    from studio.reader import handlers as reader_handlers

    try:
        _, data = serving.current_stimulus_png(db_path, (token or "").strip() or None, view_id)
    except NotAuthorised:
        return _not_found()
    except serving.StimulusUnavailable as exc:
        reader_handlers.report_fault(db_path, exc.reader_id, exc)
        return PlainTextResponse("This image is unavailable; the study team has been notified.",
                                 status_code=503, headers=STIMULUS_HEADERS)
    except (sqlite3.Error, OSError) as exc:  # database locked/swapped: say so, in words
        log.error("stimulus route: storage fault: %s", exc)
        return PlainTextResponse("The study's storage cannot be reached right now; try again "
                                 "in a minute.", status_code=503, headers=STIMULUS_HEADERS)
    return Response(data, media_type="image/png", headers=STIMULUS_HEADERS)


def build_app(db_path, *, admin_auth: auth_mod.AdminAuth, model: str | None = None,
              base_url: str | None = None, batches_dir=None):
    """A FastAPI app with the reader app at `/` and the admin app at `/admin`."""
    import anyio.to_thread
    import fastapi
    import gradio as gr

    from studio.admin import view as admin_view

    from studio.reader import handlers as reader_handlers
    from studio.reader import page as reader_page

    db_path = str(pathlib.Path(db_path).resolve())

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        # One idle connection held open while serving: every request opens and closes its
        # own, and when the *last* connection to a WAL database closes, SQLite checkpoints
        # and removes the WAL — on every request. Keeping one open halves an answer's cost.
        try:
            from studies.storage.connections import open_db

            keeper = open_db(db_path, create=False)
        except Exception:  # no database yet, or unreadable: requests will say so
            keeper = None
        try:
            yield
        finally:
            if keeper is not None:
                keeper.close()

    app = fastapi.FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    blocked = blocked_paths(db_path)
    app.add_middleware(ReaderRouteGuard)
    add_admin_routes(app)

    @app.get(f"/{reader_handlers.STIMULUS_ROUTE}/{{view_id}}", include_in_schema=False)
    def stimulus(view_id: str, token: str | None = None):
        # sync: runs in the thread pool, next to the reader events' SQLite calls
        return stimulus_response(db_path, view_id, token)

    admin = admin_view.build_admin_blocks(db_path, admin_auth, model=model,
                                          base_url=base_url, batches_dir=batches_dir)
    admin.queue(default_concurrency_limit=8)
    no_queue_analytics(admin)
    gr.mount_gradio_app(
        app, admin, path="/admin", auth=admin_auth.login,
        auth_message="MediSyn Studio — researcher login",
        allowed_paths=[], blocked_paths=blocked, max_file_size=ADMIN_MAX_UPLOAD,
        ssr_mode=False, footer_links=[], run_history=False, show_error=True, mcp_server=False,
        css=admin_view.ADMIN_CSS, head=admin_view.ADMIN_HEAD, theme=gr.themes.Soft())

    reader = reader_page.build_reader_blocks(db_path)
    reader.queue(default_concurrency_limit=READER_CONCURRENCY)
    no_queue_analytics(reader)
    gr.mount_gradio_app(
        app, reader, path="/",
        allowed_paths=[], blocked_paths=blocked, max_file_size=READER_MAX_UPLOAD,
        ssr_mode=False, footer_links=[], run_history=False, show_error=False, mcp_server=False,
        head=reader_page.HEAD, css=reader_page.READER_CSS,
        theme=gr.themes.Soft())
    app.state.reader_blocks, app.state.admin_blocks = reader, admin  # for tests/benchmarks

    def fn_ids(is_admin: bool) -> set[int]:
        return set((admin if is_admin else reader).fns)

    # Outermost: sees (and hardens) every request and response, Gradio's included.
    app.add_middleware(web_security.WebSecurity, base_url=base_url, fn_ids=fn_ids)
    return app


def add_admin_routes(app) -> None:
    """Routes of the outer app that come before the mounted Gradio apps (first match wins):
    - `/admin` without the slash redirects to `/admin/` (the reader app, mounted at `/`,
      would answer it 404);
    - logging out is a POST (`/admin/logout`), so that a cross-site link or image cannot end
      the admin's sessions: `studio.web.security` refuses cross-origin POSTs, and GET
      answers 405. It ends every session of the logged-in admin, as Gradio's own did."""
    from starlette.responses import PlainTextResponse, RedirectResponse

    def admin_without_slash(request):
        query = request.url.query
        # relative, so that a path prefix added by a reverse proxy is kept
        return RedirectResponse("admin/" + (f"?{query}" if query else ""), status_code=307)

    def logout(request):
        if request.method != "POST":
            return PlainTextResponse("Log out with the studio's Log out button.",
                                     status_code=405, headers={"Allow": "POST"})
        return logout_response(mounted_app(app, "/admin"), request)

    # Starlette routes (the endpoint gets the request), registered before the mounts
    app.add_route("/admin", admin_without_slash, methods=["GET", "HEAD"],
                  include_in_schema=False)
    for path in ("/admin/logout", "/admin/logout/"):
        app.add_route(path, logout, methods=["GET", "HEAD", "POST"], include_in_schema=False)


def mounted_app(app, path: str):
    """The app mounted at `path` (Gradio's `App` for /admin), or None."""
    from starlette.routing import Mount

    for route in app.routes:
        if isinstance(route, Mount) and route.path == path:
            return route.app
    return None


def logout_response(gradio_app, request):
    """End every session of the user whose login cookie `request` carries (what Gradio's GET
    /logout did) and send the browser back to the login form (303: a GET follows)."""
    from starlette.responses import RedirectResponse

    response = RedirectResponse("./", status_code=303)
    if gradio_app is None:
        return response
    names = (f"access-token-{gradio_app.cookie_id}",
             f"access-token-unsecure-{gradio_app.cookie_id}")
    user = next((gradio_app.tokens.get(request.cookies.get(n)) for n in names
                 if request.cookies.get(n) in gradio_app.tokens), None)
    if user is not None:
        for token in [t for t, u in list(gradio_app.tokens.items()) if u == user]:
            gradio_app.tokens.pop(token, None)
    for name in names:
        response.delete_cookie(key=name, path="/")
    return response


def no_queue_analytics(blocks) -> None:
    """Gradio's queue rebuilds a pandas summary of its last 10,000 events after *every*
    event (for a monitoring page this app does not serve): measured at ~20% of the server
    CPU of an answer, and growing with the study. Keep a few events and never summarise."""
    queue = blocks._queue
    queue.ANAYLTICS_CACHE_FREQUENCY = 2**62  # sic: Gradio's spelling
    queue.ANALYTICS_MAX_EVENTS = 100


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a background thread (tests, `prevent_thread_lock`-style embedding).

    Client addresses are the TCP peer's. uvicorn would otherwise believe `X-Forwarded-For`
    (and `-Proto`) from 127.0.0.1 by default — any process on the host could then pick the
    address the login lockout sees. Only with `forwarded_allow_ips` (the operator's reverse
    proxy: addresses or networks, comma-separated, as uvicorn takes them) are those headers
    read, and only from those peers."""

    def __init__(self, app, host: str, port: int, *, forwarded_allow_ips: str | None = None):
        import uvicorn

        self.host, self.port = host, port
        proxy = bool(forwarded_allow_ips and forwarded_allow_ips.strip())
        self._server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="on",
            proxy_headers=proxy, forwarded_allow_ips=forwarded_allow_ips if proxy else None))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> "Server":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"studio server did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def launch(db_path, *, host: str = "127.0.0.1", port: int = 7860, model: str | None = None,
           admin_auth: auth_mod.AdminAuth, base_url: str | None = None,
           prevent_thread_lock: bool = False, writer_process: bool = True,
           forwarded_allow_ips: str | None = None, echo=print) -> Server:
    """Serve the studio. Blocks until interrupted unless `prevent_thread_lock`. With
    `writer_process`, readers' answers are committed by a process of its own
    (`start_writer`). `forwarded_allow_ips`: the reverse proxy whose X-Forwarded-For and
    X-Forwarded-Proto are believed (see `Server`); none by default."""
    app = build_app(db_path, admin_auth=admin_auth, model=model, base_url=base_url)
    if writer_process:
        start_writer(db_path, echo=echo)
    server = Server(app, host, port, forwarded_allow_ips=forwarded_allow_ips).start()
    if not prevent_thread_lock:
        try:
            while server._thread.is_alive():
                server._thread.join(0.5)
        except KeyboardInterrupt:
            server.stop()
        finally:
            stop_writer()
    return server


def start_writer(db_path, *, echo=print) -> bool:
    """Start the writer process for the study database (`studies.storage.writer_process`): under
    many readers it keeps answer latency low. If it cannot start, the studio still runs,
    writing in this process (said through `echo`)."""
    from studies.storage import writer_process
    from studies.errors import StudyError

    try:
        writer_process.start(db_path)
        return True
    except (StudyError, OSError) as exc:
        echo(f"note: answers are written by the studio process itself (the writer process "
             f"did not start: {exc})")
        return False


def stop_writer() -> None:
    from studies.storage import writer_process

    writer_process.stop()


# ------------------------------------------------------------------------------ start-up
class StartError(RuntimeError):
    """The studio cannot start (unreadable database folder, bad model path ...)."""


@dataclasses.dataclass
class StartInfo:
    db_path: pathlib.Path
    model: str | None
    base_url: str
    admin_auth: auth_mod.AdminAuth
    admin_password: str | None      # only when just generated
    admin_source: str               # env | file | generated
    demo_study: str | None = None
    demo_link: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def banner(self) -> str:
        cfg = auth_mod.config_path(self.db_path)
        lines = ["", "MediSyn Studio",
                 f"  readers:     {self.base_url}?token=...   (personal links)",
                 f"  researchers: {self.base_url}admin",
                 f"  database:    {self.db_path}"]
        user = self.admin_auth.user
        if self.admin_source == "env":
            lines.append(f"  admin login: {user} / (MEDISYN_ADMIN_PASSWORD)")
        elif self.admin_password:
            lines.append(f"  admin login: {user} / {self.admin_password}")
            lines.append(f"               (generated now and shown once; its hash is in {cfg})")
        else:
            lines.append(f"  admin login: {user} / (set on first start; hash in {cfg};"
                         " --reset-admin-password prints a new one)")
        if self.demo_link:
            lines.append(f"  demo study:  {self.demo_study}")
            lines.append(f"  demo reader: {self.demo_link}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines) + "\n"


def default_model() -> str | None:
    """The embedded model's folder (assets/medisyn-mini), if the registry knows it."""
    try:
        from model_runtime import registry

        return str(registry.embedded_model_path())
    except Exception:  # registry missing or malformed: the studio still serves studies
        return None


def prepare(db_path, *, model=None, seed_demo=True, host="127.0.0.1", port=7860,
            base_url=None, reset_admin_password=False, echo=print, env=None) -> StartInfo:
    """Everything `medisyn studio` does before serving: database folder, admin credentials,
    the demo study on first start (seeded with `studio.demo.study.seed_demo`), a demo reader link."""
    import sqlite3

    from studies.storage.connections import check_database_file
    from studies.errors import StudyError
    from studies.ingest import list_studies

    db_path = pathlib.Path(db_path).expanduser().resolve()
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartError(f"cannot create the database folder {db_path.parent}: {exc}") from None
    try:
        # Before anything is written next to it (admin credentials, demo study): a file that
        # is not a study database (empty, not SQLite, another program's) is refused.
        check_database_file(db_path)
        studies_now = list_studies(db_path) if db_path.exists() else []
    except (StudyError, sqlite3.DatabaseError, OSError) as exc:
        if isinstance(exc, StudyError):
            raise StartError(str(exc)) from None
        raise StartError(f"cannot open the study database {db_path}: "
                         f"{type(exc).__name__}: {exc}") from None
    model = model or default_model()
    if base_url is None:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        base_url = f"http://{shown}:{port}/"
    if not base_url.endswith("/"):
        base_url += "/"
    creds, password = auth_mod.load_or_create(db_path, env=env, reset=reset_admin_password)
    info = StartInfo(db_path, model, base_url, auth_mod.AdminAuth(creds), password, creds.source)

    has_demo = any(st["name"] == _demo_study_name() for st in studies_now)
    if seed_demo and (not studies_now or has_demo):
        try:
            from studio.demo.study import seed_demo as _seed
        except ImportError:
            info.notes.append("no demo study: studio.demo.study is not available")
        else:
            if not studies_now:
                # The addresses first: seeding takes from ~25 s to minutes on a busy machine.
                echo(f"Studio address: {base_url} (readers, with their link), "
                     f"{base_url}admin/ (researchers); it starts serving once the demo study "
                     "is seeded.")
                echo("Seeding the demo study (first start: generating its synthetic images; "
                     "progress and the time left follow)...")
            try:
                # Reuses an existing demo study and prints the demo reader's kept link, so an
                # open demo tab survives the restart (studio.demo.study.token_path).
                demo = _seed(db_path, model, keep_token=auth_mod.write_private, base_url=base_url, log=echo)
            except Exception as exc:  # a broken model must not stop the studio serving studies
                info.notes.append(f"demo study not available: {type(exc).__name__}: {exc}")
            else:
                info.demo_study, info.demo_link = demo.study, demo.link
                info.notes.extend(demo.notes)  # e.g. the demo fails its own leak audit
    return info


def _demo_study_name() -> str:
    try:
        from studio.demo import study as demo

        return getattr(demo, "DEMO_STUDY", "demo")
    except ImportError:
        return "demo"


