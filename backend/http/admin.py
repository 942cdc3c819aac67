"""The built admin dashboard (clients/admin) at /admin, so a deployment needs no other web
server: its files, and its index.html for any other path under /admin, so that a
bookmarked or reloaded screen opens the app rather than a 404."""

from pathlib import Path, PurePosixPath

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from backend.config import ADMIN_PATH, HOW_TO_BUILD_THE_DASHBOARD
from backend.http.docs import DOCS_URL

# Only the dashboard's own files and its own origin's API: no inline or foreign script.
# Material UI (emotion) writes <style> elements at run time, hence inline styles.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
# Vite names every built asset after a hash of its content: a new build, new names.
IMMUTABLE = "public, max-age=31536000, immutable"


NOT_BUILT = (
    f"The dashboard is not built: run `{HOW_TO_BUILD_THE_DASHBOARD}`; it is served as soon "
    "as it is, without a restart."
)


class DashboardFiles(StaticFiles):
    """The build's files, looked up at each request: a build made while the server
    runs (`npm run build`, which replaces the folder) is served from its next request."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory=directory, check_dir=False)
        self.index = directory / "index.html"

    def built(self) -> bool:
        return self.index.is_file()

    def index_response(self) -> Response:
        if not self.built():
            raise HTTPException(404, NOT_BUILT)
        # Always revalidated: it names the current build's assets.
        return self._secured(FileResponse(self.index, headers={"Cache-Control": "no-cache"}))

    async def index_endpoint(self, request: Request) -> Response:
        return self.index_response()

    async def get_response(self, path: str, scope: Scope) -> Response:
        if path in {"", "."} or not self.built():
            return self.index_response()
        try:
            response = await super().get_response(path, scope)
        except HTTPException as error:
            # A screen's path has no file extension; a missing asset stays a 404, never
            # an HTML page the browser would try to run as a script.
            if error.status_code != 404 or "." in PurePosixPath(path).name:
                raise
            return self.index_response()
        if path.startswith("assets/"):
            response.headers["Cache-Control"] = IMMUTABLE
        return self._secured(response)

    @staticmethod
    def _secured(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return response


def install_admin(app: FastAPI, directory: Path) -> DashboardFiles:
    files = DashboardFiles(directory)
    # The mount answers /admin/...; /admin itself (and /admin/, which the trailing-slash
    # middleware turns into it) needs a route of its own.
    app.add_route(
        ADMIN_PATH, files.index_endpoint, methods=["GET", "HEAD"], include_in_schema=False
    )
    app.mount(ADMIN_PATH, files, name="admin")
    return files


def install_root(app: FastAPI, dashboard: DashboardFiles | None, *, docs: bool) -> None:
    """`/` leads somewhere: to the dashboard when one is built, else to the API's docs
    when they are served; else it is a 404 like any unknown path."""

    async def root(request: Request) -> Response:
        where = request.scope.get("root_path", "")
        if dashboard is not None and dashboard.built():
            return RedirectResponse(where + ADMIN_PATH)
        if docs:
            return RedirectResponse(where + DOCS_URL)
        raise HTTPException(404)

    app.add_route("/", root, methods=["GET", "HEAD"], include_in_schema=False)
