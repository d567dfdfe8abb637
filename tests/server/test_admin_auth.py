"""Admin API tokens (server/admin_auth.py): where they come from, and who a request's
``Authorization`` header names."""

from collections.abc import Iterable
from pathlib import Path

import pytest

from turnout.errors import Unauthenticated
from turnout.server.admin_auth import TOKEN_VARIABLE, AdminTokens

NEEDS_BEARER = "the admin API needs an 'Authorization: Bearer <token>' header"
NOT_VALID = "the admin token is not valid"


def token_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text, encoding="utf-8")
    return path


def names_of(tokens: AdminTokens | None, presented: Iterable[str]) -> dict[str, str]:
    """Who each presented token is (token → name)."""
    assert tokens is not None
    return {token: tokens.who(f"Bearer {token}") for token in presented}


def test_neither_environment_nor_file_turns_the_api_off() -> None:
    assert AdminTokens.load({}, None) is None


@pytest.mark.parametrize("value", ["", "   ", "\t\n"])
def test_an_empty_environment_variable_is_no_token(value: str) -> None:
    assert AdminTokens.load({TOKEN_VARIABLE: value}, None) is None


def test_a_token_from_the_environment() -> None:
    tokens = AdminTokens.load({TOKEN_VARIABLE: "  s3cret \n", "OTHER": "x"}, None)

    assert tokens is not None
    assert tokens.who("Bearer s3cret") == "env"


def test_other_variables_are_not_tokens() -> None:
    assert AdminTokens.load({"TURNOUT_ADMIN_TOKENS": "s3cret", "TOKEN": "x"}, None) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("alpha\n", {"alpha": "token1"}, id="bare-token"),
        pytest.param("alice alpha\n", {"alpha": "alice"}, id="named-token"),
        pytest.param(
            "# tokens of the team\n\nalice alpha\n   \nbeta\n  # indented comment\nbob gamma",
            {"alpha": "alice", "beta": "token5", "gamma": "bob"},
            id="comments-blank-lines-and-line-numbers",
        ),
        pytest.param("  carol\t delta  \n", {"delta": "carol"}, id="surrounding-whitespace"),
        pytest.param("#alice alpha\nbeta\n", {"beta": "token2"}, id="commented-out"),
        pytest.param("alice alpha\nalice beta\n", {"beta": "alice"}, id="a-name-twice-last-wins"),
    ],
)
def test_tokens_from_a_file(tmp_path: Path, text: str, expected: dict[str, str]) -> None:
    tokens = AdminTokens.load({}, token_file(tmp_path, text))

    assert names_of(tokens, expected) == expected


def test_a_name_given_twice_drops_its_earlier_token(tmp_path: Path) -> None:
    tokens = AdminTokens.load({}, token_file(tmp_path, "alice alpha\nalice beta\n"))

    assert tokens is not None
    with pytest.raises(Unauthenticated):
        tokens.who("Bearer alpha")


def test_environment_and_file_together(tmp_path: Path) -> None:
    tokens = AdminTokens.load({TOKEN_VARIABLE: "from-env"}, token_file(tmp_path, "ops opstoken\n"))

    assert names_of(tokens, ["from-env", "opstoken"]) == {
        "from-env": "env",
        "opstoken": "ops",
    }


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param("alice alpha extra\n", 1, id="three-fields"),
        pytest.param("ok\n# fine\nalice alpha # note\n", 3, id="trailing-comment"),
    ],
)
def test_a_malformed_line_is_refused(tmp_path: Path, text: str, line: int) -> None:
    path = token_file(tmp_path, text)

    with pytest.raises(ValueError, match=r"expected TOKEN or NAME TOKEN$") as caught:
        AdminTokens.load({}, path)

    assert str(caught.value) == f"{path}:{line}: expected TOKEN or NAME TOKEN"


def test_a_file_with_only_comments_is_no_token(tmp_path: Path) -> None:
    assert AdminTokens.load({}, token_file(tmp_path, "# nobody yet\n\n")) is None


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        AdminTokens.load({}, tmp_path / "absent")


WHO = [
    pytest.param("Bearer alpha", "alice", id="right-token"),
    pytest.param("Bearer beta", "bob", id="other-right-token"),
    pytest.param("bearer alpha", "alice", id="scheme-case-insensitive"),
    pytest.param("BEARER alpha", "alice", id="scheme-upper-case"),
    pytest.param("Bearer  alpha  ", "alice", id="spaces-around-token"),
]


@pytest.mark.parametrize(("header", "name"), WHO)
def test_who_names_the_token(header: str, name: str) -> None:
    tokens = AdminTokens({"alice": "alpha", "bob": "beta"})

    assert tokens.who(header) == name


REFUSED = [
    pytest.param(None, NEEDS_BEARER, id="missing"),
    pytest.param("", NEEDS_BEARER, id="empty"),
    pytest.param("alpha", NEEDS_BEARER, id="no-scheme"),
    pytest.param("Basic YWxpY2U6YWxwaGE=", NEEDS_BEARER, id="basic-scheme"),
    pytest.param("Token alpha", NEEDS_BEARER, id="token-scheme"),
    pytest.param("Bearer", NEEDS_BEARER, id="scheme-alone"),
    pytest.param("Bearer ", NOT_VALID, id="empty-token"),
    pytest.param("Bearer wrong", NOT_VALID, id="wrong-token"),
    pytest.param("Bearer ALPHA", NOT_VALID, id="token-case-matters"),
    pytest.param("Bearer alph", NOT_VALID, id="prefix-of-a-token"),
    pytest.param("Bearer alphaa", NOT_VALID, id="token-plus-more"),
    pytest.param("Bearer alice", NOT_VALID, id="a-name-is-not-a-token"),
    pytest.param("Bearer alpha beta", NOT_VALID, id="two-tokens"),
    pytest.param("Bearer älpha", NOT_VALID, id="non-ascii"),
]


@pytest.mark.parametrize(("header", "message"), REFUSED)
def test_who_refuses(header: str | None, message: str) -> None:
    tokens = AdminTokens({"alice": "alpha", "bob": "beta"})

    with pytest.raises(Unauthenticated) as caught:
        tokens.who(header)

    assert caught.value.message == message


def test_the_same_token_under_two_names_is_the_first() -> None:
    tokens = AdminTokens({"first": "shared", "second": "shared"})

    assert tokens.who("Bearer shared") == "first"
