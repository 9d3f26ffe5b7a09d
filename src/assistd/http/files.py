"""/v1/files: uploads stream to disk as they arrive; list, retrieve, download and delete.

The multipart body is parsed with python-multipart's push parser, chunk by chunk as the client
sends it: form fields are small and kept, the `file` part goes straight to its `Blob` on disk,
so an upload never sits whole in memory. Past the size limit, reading stops at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from assistd.domain.errors import InvalidRequest, invalid
from assistd.domain.objects import new_file_id, new_file_row
from assistd.http.common import ok, page, path, runtime
from assistd.http.errors import ApiError
from assistd.http.json_checks import check_json
from assistd.http.models import ListQuery, Model
from assistd.storage.files import Blob, FileStore
from assistd.storage.space import disk_full_error, is_disk_full

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FilePurpose = Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]
MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 32
DEFAULT_FILENAME = "upload"  # what httpx (and so the SDK) names a file given without a name


class ExpiresAfter(Model):
    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2_592_000)


class FileCreate(Model):
    purpose: FilePurpose
    expires_after: ExpiresAfter | None = None


class FileListQuery(ListQuery):
    limit: int = Field(default=10_000, ge=1, le=10_000)
    purpose: str | None = None


def too_large(limit: int) -> InvalidRequest:
    return invalid(f"File is too large: this server accepts files of at most {limit} bytes.", "file")


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class FormReader:
    """python-multipart callbacks: form fields kept (small), the `file` part fed to a Blob."""

    def __init__(self, blob: Blob, limit: int) -> None:
        self.blob = blob
        self.limit = limit
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.complete = False
        self._parts = 0
        self._header = bytearray()
        self._value = bytearray()
        self._disposition = b""
        self._name = ""
        self._to_file = False
        self._data = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise invalid(f"The form has more than {MAX_PARTS} parts.")
        self._disposition, self._name, self._to_file = b"", "", False
        self._data = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]
        self._check_header_size()

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._check_header_size()

    def _check_header_size(self) -> None:
        if len(self._header) + len(self._value) > MAX_FIELD_BYTES:
            raise invalid("A header of the form is too long.")

    def on_header_end(self) -> None:
        if bytes(self._header).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._value)
        self._header, self._value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._name = _decode(options.get(b"name", b""))
        self._to_file = self._name == "file"
        if not self._to_file:
            return
        if self.filename is not None:
            raise invalid("Only one file can be uploaded per request.", "file")
        self.filename = _decode(options.get(b"filename", DEFAULT_FILENAME.encode()))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._to_file:
            if self.blob.size + (end - start) > self.limit:
                raise too_large(self.limit)
            self.blob.add(data[start:end])
            return
        self._data += data[start:end]
        if len(self._data) > MAX_FIELD_BYTES:
            raise invalid(f"The form field '{self._name}' is too long.", self._name or None)

    def on_part_end(self) -> None:
        if not self._to_file and self._name:
            self.fields[self._name] = _decode(bytes(self._data))

    def on_end(self) -> None:
        self.complete = True


def _boundary(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "")
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise invalid(
            f"Invalid Content-Type header ({content_type or 'none'}), expected multipart/form-data "
            "with the fields 'file' and 'purpose'."
        )
    return options[b"boundary"]


async def read_form(request: Request, reader: FormReader) -> None:
    """Feed the request body to the parser as it arrives, writing file data out as it builds up."""
    parser = MultipartParser(_boundary(request), reader.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if reader.blob.should_flush:
                await reader.blob.flush()
        parser.finalize()
    except MultipartParseError as exc:
        raise invalid(f"The multipart/form-data body could not be parsed: {exc}.") from exc
    except ClientDisconnect as exc:
        # Nobody reads this answer; it only keeps a routine disconnect out of the error log.
        raise invalid("The client disconnected before the upload was complete.") from exc
    if not reader.complete:
        raise invalid("The multipart/form-data body ended before its closing boundary.")


def _nest(fields: dict[str, str]) -> dict[str, Any]:
    """Form keys like `expires_after[seconds]` (how the SDK sends objects) as nested dicts."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        outer, bracket, inner = key.partition("[")
        if bracket and inner.endswith("]") and isinstance(out.get(outer, {}), dict):
            out[outer] = {**out.get(outer, {}), inner[:-1]: value}
        else:
            out[key] = value
    return out


async def _receive(request: Request, blob: Blob, limit: int) -> dict[str, Any]:
    """Read the upload into `blob`; returns the new file's row (the blob is not committed yet)."""
    reader = FormReader(blob, limit)
    await read_form(request, reader)
    form = FileCreate.model_validate(_nest(reader.fields))
    if reader.filename is None:
        raise invalid("Missing required parameter: 'file'.", "file", "missing_required_parameter")
    check_json({"file": reader.filename})  # a NUL in its name: PostgreSQL's text can't hold it
    seconds = form.expires_after.seconds if form.expires_after else None
    return new_file_row(blob.file_id, reader.filename, form.purpose, blob.size, seconds)


def _store(request: Request) -> FileStore:
    rt = runtime(request)
    return FileStore(rt.store.db, rt.settings.files_dir, rt.disk_reserve)


async def create(request: Request) -> Response:
    files = _store(request)
    try:
        return ok(await _create(request, files))
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full_error() from exc
        raise


async def _create(request: Request, files: FileStore) -> dict[str, Any]:
    await files.purge_expired()
    blob = files.blob(new_file_id())
    await blob.open()
    try:
        row = await _receive(request, blob, runtime(request).settings.max_upload_bytes)
    except BaseException:
        blob.discard()
        raise
    return await files.add(row, blob)


async def list_(request: Request) -> Response:
    pages, query = page(request, FileListQuery)
    assert isinstance(query, FileListQuery)
    return ok(await _store(request).list(pages, query.purpose))


async def retrieve(request: Request) -> Response:
    return ok(await _store(request).get(path(request, "file_id")))


async def delete(request: Request) -> Response:
    file_id = path(request, "file_id")
    await _store(request).delete(file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


async def content(request: Request) -> Response:
    files, file_id = _store(request), path(request, "file_id")
    await files.get(file_id)
    where = files.path(file_id)
    if not where.is_file():
        raise ApiError(500, f"The bytes of {file_id} are missing from the data directory.", type="server_error")
    return FileResponse(where, media_type="application/octet-stream")


routes = [
    Route("/files", create, methods=["POST"]),
    Route("/files", list_, methods=["GET"]),
    Route("/files/{file_id}", retrieve, methods=["GET"]),
    Route("/files/{file_id}", delete, methods=["DELETE"]),
    Route("/files/{file_id}/content", content, methods=["GET"]),
]
