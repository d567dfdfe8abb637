"""Who may use the admin API: bearer tokens from the environment (TURNOUT_ADMIN_TOKEN) or a
token file named in config. With neither, the admin API is off."""

import hmac
from collections.abc import Mapping
from pathlib import Path

from turnout.errors import Unauthenticated

TOKEN_VARIABLE = "TURNOUT_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a secret
_SCHEME = "bearer "


class AdminTokens:
    """Named tokens; a request's ``Authorization: Bearer <token>`` names who made it.

    The token file holds one token per line, as ``TOKEN`` or ``NAME TOKEN`` (the name goes into
    the audit log); blank lines and lines starting with ``#`` are skipped.
    """

    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = tokens

    @classmethod
    def load(cls, environment: Mapping[str, str], token_file: Path | None) -> "AdminTokens | None":
        """The configured tokens, or None when there are none (the admin API is then off)."""
        tokens: dict[str, str] = {}
        from_environment = environment.get(TOKEN_VARIABLE, "").strip()
        if from_environment:
            tokens["env"] = from_environment
        if token_file is not None:
            for number, line in enumerate(token_file.read_text(encoding="utf-8").splitlines(), 1):
                fields = line.split()
                if not fields or fields[0].startswith("#"):
                    continue
                if len(fields) > 2:
                    raise ValueError(f"{token_file}:{number}: expected TOKEN or NAME TOKEN")
                name, token = (f"token{number}", fields[0]) if len(fields) == 1 else fields
                tokens[name] = token
        return cls(tokens) if tokens else None

    def who(self, authorization: str | None) -> str:
        """The name of the token presented; Unauthenticated when missing or wrong."""
        if authorization is None or not authorization.lower().startswith(_SCHEME):
            raise Unauthenticated("the admin API needs an 'Authorization: Bearer <token>' header")
        presented = authorization[len(_SCHEME) :].strip().encode()
        found = None
        # Compare against every token, in constant time each, so timing tells nothing.
        for name, token in self._tokens.items():
            if hmac.compare_digest(presented, token.encode()) and found is None:
                found = name
        if found is None:
            raise Unauthenticated("the admin token is not valid")
        return found
