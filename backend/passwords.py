"""The password policy, after NIST SP 800-63B 3.1.1.2 and OWASP ASVS 2.1: a minimum
length, no composition rules, and no password that is common, breached or trivially
guessed. Passwords are compared and hashed in their NFKC form, so that one typed on
another keyboard or operating system (NFC or NFD, fullwidth or not) is the same password.
"""

import unicodedata
from functools import cache
from importlib.resources import files
from itertools import pairwise

PASSWORD_MAX_BYTES = 72  # bcrypt's limit: longer passwords are refused, never truncated
# NIST's floor for a memorised secret the user chose; the default is ASVS's 12.
PASSWORD_MIN_LENGTH_FLOOR = 8
DEFAULT_PASSWORD_MIN_LENGTH = 12
# "abcabcabcabc" is as guessable as "abc": a whole password made of one short block
# repeated is refused, up to this block length.
MAX_REPEATED_BLOCK = 4
# "P" and eleven spaces, "aaaaaabbbbbb": a long password of a few characters is a short one.
MIN_DISTINCT_CHARACTERS = 4


def normalise_password(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


def password_problem(password: str, *, min_length: int) -> str | None:
    """Why this (NFKC-normalised) password is refused, or None if it is acceptable.

    Length is counted in code points, as NIST asks, and capped in UTF-8 bytes for bcrypt.
    """
    if any(unicodedata.category(char) in {"Cc", "Cs"} for char in password):
        # Cs: lone surrogates, which JSON can carry but UTF-8 (and so bcrypt) cannot.
        return "must not contain control characters or lone surrogates"
    if len(password) < min_length:
        return f"must be at least {min_length} characters long"
    if len(password.encode()) > PASSWORD_MAX_BYTES:
        return f"must be at most {PASSWORD_MAX_BYTES} bytes in UTF-8"
    folded = password.casefold()
    if folded in _common_passwords():
        return "is too common: it appears in lists of breached passwords"
    if _is_sequence(folded) or _is_repeated_block(folded):
        return "is too simple: a run of repeated or consecutive characters, or a short pattern"
    if len(set(folded)) < MIN_DISTINCT_CHARACTERS:
        return f"is too simple: it needs at least {MIN_DISTINCT_CHARACTERS} different characters"
    return None


def _is_sequence(password: str) -> bool:
    """Every character the one after (or before) the previous: 'abcdefghijkl',
    '123456789012' (digits wrap around, as on a keyboard's number row), '987654321098'."""
    steps = {_step(a, b) for a, b in pairwise(password)}
    return len(steps) == 1 and steps <= {1, -1}


def _step(a: str, b: str) -> int:
    if a.isdigit() and b.isdigit() and a.isascii() and b.isascii():
        return (int(b) - int(a) + 5) % 10 - 5  # 9 -> 0 is +1, 0 -> 9 is -1
    return ord(b) - ord(a)


def _is_repeated_block(password: str) -> bool:
    """One block of up to MAX_REPEATED_BLOCK characters, repeated: 'aaaaaaaaaaaa',
    'abababababab', 'qwerqwerqwerq'."""
    return any(
        password == (password[:size] * len(password))[: len(password)]
        for size in range(1, MAX_REPEATED_BLOCK + 1)
    )


@cache
def _common_passwords() -> frozenset[str]:
    text = files("backend").joinpath("data/common-passwords.txt").read_text(encoding="utf-8")
    _header, _, body = text.partition("\n\n")
    return frozenset(body.splitlines())
