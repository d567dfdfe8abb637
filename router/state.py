"""Run-time state that must survive a restart: the routes as ops changed them, bandit
statistics and the audit log, under the state directory. Files are replaced atomically (written
to a temporary file, flushed to disk, renamed), so a crash leaves the old or the new one, never a
torn one; the audit log is appended to and synced line by line. Every method blocks: call them
off the event loop."""

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROUTES_FILE = "routes.json"
BANDITS_FILE = "bandits.json"
AUDIT_FILE = "audit.jsonl"


class StateStore:
    """The state directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def load_routes(self) -> dict[str, Any]:
        """The saved routes by endpoint ({} when there are none or the file is unreadable)."""
        return self._load(ROUTES_FILE)

    def save_routes(self, routes: dict[str, Any]) -> None:
        """Replace the saved routes."""
        self._save(ROUTES_FILE, routes)

    def load_bandits(self) -> dict[str, Any]:
        """The saved bandit statistics by endpoint."""
        return self._load(BANDITS_FILE)

    def save_bandits(self, bandits: dict[str, Any]) -> None:
        """Replace the saved bandit statistics."""
        self._save(BANDITS_FILE, bandits)

    def append_audit(self, entry: dict[str, Any]) -> None:
        """Add one entry to the audit log."""
        path = self.directory / AUDIT_FILE
        with path.open("a+b") as audit:
            audit.seek(0, os.SEEK_END)
            if audit.tell():
                audit.seek(-1, os.SEEK_END)
                if audit.read(1) != b"\n":
                    audit.write(b"\n")  # after a torn last line, start a line of our own
            audit.write(json.dumps(entry, sort_keys=True).encode() + b"\n")
            audit.flush()
            os.fsync(audit.fileno())

    def read_audit(self, limit: int) -> list[dict[str, Any]]:
        """The latest ``limit`` audit entries, oldest first (a torn last line is skipped)."""
        path = self.directory / AUDIT_FILE
        if not path.exists():
            return []
        entries: list[dict[str, Any]] = []
        for line in reversed(path.read_text(encoding="utf-8", errors="replace").splitlines()):
            if len(entries) == limit:
                break
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return entries[::-1]

    def _load(self, name: str) -> dict[str, Any]:
        path = self.directory / name
        if not path.exists():
            return {}
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            log.error("ignoring unreadable state file %s: %s", path, error)
            return {}
        return document if isinstance(document, dict) else {}

    def _save(self, name: str, document: dict[str, Any]) -> None:
        target = self.directory / name
        descriptor, partial = tempfile.mkstemp(prefix=f".{name}.", dir=self.directory)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                json.dump(document, file, sort_keys=True, indent=1)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, target)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
