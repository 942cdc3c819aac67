"""The account rules: what an email address and a password must be, free of any framework.

The password policy follows NIST SP 800-63B 3.1.1.2 and OWASP ASVS 2.1: a minimum
length, no composition rules, and no password that is common, breached or trivially
guessed. Passwords are compared and hashed in their NFKC form, so that one typed on
another keyboard or operating system (NFC or NFD, fullwidth or not) is the same password.
"""

import gzip
import unicodedata
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from itertools import pairwise
from typing import NamedTuple

from email_validator import EmailNotValidError, validate_email

from backend.confusables import is_default_ignorable

PASSWORD_MAX_BYTES = 72  # bcrypt's limit: longer passwords are refused, never truncated
# NIST's floor for a memorised secret the user chose; the default is ASVS's 12.
PASSWORD_MIN_LENGTH_FLOOR = 8
DEFAULT_PASSWORD_MIN_LENGTH = 12
# "abcabcabcabc" is as guessable as "abc": a whole password made of one short block
# repeated is refused, up to this block length.
MAX_REPEATED_BLOCK = 4
# "P" and eleven spaces, "aaaaaabbbbbb": a long password of a few characters is a short one.
MIN_DISTINCT_CHARACTERS = 4
EMAIL_MAX_CHARS = 254
# Bidirectional controls reorder what is shown around them ("Ada" + U+202E + "exe.gnp"
# shows as "Adapng.exe"); no name needs one.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def normalise_password(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


# The passwords this project's README, docs, .env.example and bench show as examples:
# anyone who read them knows them (tests/test_docs_drift.py finds every one there).
EXAMPLE_PASSWORDS = frozenset(
    {"Admin-Pass-1", "Change-Me-Now-1", "Analytical-Engine-1843", "Bench-Password-1"}
)
# A common password with a guessable tail ("Summer2024!!", "Welcome12345") is refused
# too: a tail of up to this many digits and symbols, or a longer one that is a run of
# consecutive or repeated digits ("1234567") with up to MAX_TAIL_SYMBOLS symbols after.
# Longer tails are left to the other rules: "TestPassword123" stays accepted, since its
# base "testpassword" is on no list.
MAX_GUESSABLE_TAIL = 6
MAX_TAIL_SYMBOLS = 3
# The base before a tail must be this long: a shorter one ("abc") is no word to refuse.
MIN_BASE_LENGTH = 4
# A password built from the email's local part: a local part this long (casefolded, its
# punctuation dropped) that makes up at least this share of the password's letters and
# digits ("alice.smith@x" and "AliceSmith2024").
MIN_LOCAL_PART_LENGTH = 4
MIN_LOCAL_PART_SHARE = 0.5


class PasswordProblem(NamedTuple):
    code: str  # stable, for programs: the `code` of the field's error in a 422
    message: str


def password_problem(password: str, *, min_length: int) -> PasswordProblem | None:
    """Why this (NFKC-normalised) password is refused, or None if it is acceptable.

    Length is counted in code points, as NIST asks, and capped in UTF-8 bytes for bcrypt.
    """
    if any(unicodedata.category(char) in {"Cc", "Cs"} for char in password):
        # Cs: lone surrogates, which JSON can carry but UTF-8 (and so bcrypt) cannot.
        return PasswordProblem(
            "password_control_characters",
            "must not contain control characters or lone surrogates",
        )
    if len(password) < min_length:
        return PasswordProblem(
            "password_too_short", f"must be at least {min_length} characters long"
        )
    if len(password.encode()) > PASSWORD_MAX_BYTES:
        return PasswordProblem(
            "password_too_long", f"must be at most {PASSWORD_MAX_BYTES} bytes in UTF-8"
        )
    folded = password.casefold()
    if _is_sequence(folded) or _is_repeated_block(folded):
        return PasswordProblem(
            "password_too_simple",
            "is too simple: a run of repeated or consecutive characters, or a short pattern",
        )
    if len(set(folded)) < MIN_DISTINCT_CHARACTERS:
        return PasswordProblem(
            "password_too_simple",
            f"is too simple: it needs at least {MIN_DISTINCT_CHARACTERS} different characters",
        )
    visible = _visible(password).casefold()
    if visible in _example_passwords():
        return PasswordProblem(
            "password_too_common", "is an example from this project's documentation"
        )
    if _is_common(visible):
        return PasswordProblem(
            "password_too_common",
            "is too common: it appears in lists of breached passwords, alone or with a few "
            "digits or symbols after it",
        )
    return None


def password_email_problem(password: str, email: str) -> PasswordProblem | None:
    """Why this password is refused for the account with this email, or None: a password
    made mostly of the email's local part is the first guess of whoever knows the email."""
    local = _alphanumerics(email.rpartition("@")[0])
    if len(local) < MIN_LOCAL_PART_LENGTH:
        return None
    letters = _alphanumerics(_visible(password))
    if letters.count(local) * len(local) >= MIN_LOCAL_PART_SHARE * len(letters) > 0:
        return PasswordProblem(
            "password_like_email", "must not be made of the email address's name part"
        )
    return None


def _alphanumerics(text: str) -> str:
    return "".join(char for char in text.casefold() if char.isalnum())


def _visible(password: str) -> str:
    """The password as it looks, for the checks only (it is hashed as it was typed):
    without format characters (Cf: zero-width space, soft hyphen, ...) and other default
    ignorables, nor surrounding whitespace, which add nothing a reader of it sees."""
    return "".join(
        char
        for char in password
        if unicodedata.category(char) != "Cf" and not is_default_ignorable(char)
    ).strip()


def _is_common(folded: str) -> bool:
    if folded in common_passwords():
        return True
    tail_length = len(folded) - len(folded.rstrip(_TAIL_CHARACTERS))
    base, tail = folded[: len(folded) - tail_length], folded[len(folded) - tail_length :]
    if not tail or len(base) < MIN_BASE_LENGTH:
        return False
    if base not in common_passwords() and base not in _example_passwords():
        return False
    digits = tail.rstrip(_SYMBOLS)
    return len(tail) <= MAX_GUESSABLE_TAIL or (
        len(tail) - len(digits) <= MAX_TAIL_SYMBOLS
        and digits.isdigit()
        and (_is_sequence(digits) or _is_repeated_block(digits))
    )


_SYMBOLS = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ "
_TAIL_CHARACTERS = "0123456789" + _SYMBOLS


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
def common_passwords() -> frozenset[str]:
    """The common passwords, lower-cased, read once, when first needed: 111,711 of them,
    360 kB gzipped in the package; reading takes about 0.1 s, the set about 11 MB."""
    packed = files("backend").joinpath("data/common-passwords.txt.gz").read_bytes()
    _header, _, body = gzip.decompress(packed).decode().partition("\n\n")
    return frozenset(body.splitlines())


@cache
def _example_passwords() -> frozenset[str]:
    return frozenset(password.casefold() for password in EXAMPLE_PASSWORDS)


@dataclass(frozen=True)
class AccountRules:
    """The configurable part of the account validators (PASSWORD_MIN_LENGTH,
    ALLOW_INTERNATIONAL_EMAILS).

    The validators are pydantic annotations that FastAPI runs with no access to the app
    or its settings, and they must stay there: the OpenAPI document, generated clients
    and fuzzers read the rules off the same types. So the settings are applied to the
    process, once, by the app factory and the CLI (`use_account_rules`), and read at
    validation and at schema generation time. One process serves one configuration.
    """

    password_min_length: int = DEFAULT_PASSWORD_MIN_LENGTH
    allow_international_emails: bool = False


_rules = AccountRules()


def use_account_rules(rules: AccountRules) -> None:
    global _rules
    _rules = rules


def account_rules() -> AccountRules:
    """The rules the process was given (use_account_rules), read at validation time."""
    return _rules


def normalise_email(value: str, *, allow_international: bool) -> str:
    """The address as stored: email-validator's normal form, lower-cased.

    Emails are identifiers here, never mail targets: internal domains such as .internal,
    .lan or .test are accepted, which EmailStr refuses. Without `allow_international`
    the whole address must be ASCII once normalised, so that no letter can be a
    look-alike from another script (`r\\u043e\\u043et`, Cyrillic o's). The domain's fullwidth or
    upper-case letters are folded to ASCII by IDNA (UTS 46) and are accepted; a Unicode
    domain, or its xn-- form (shown decoded), is not. Look-alikes that remain, within
    ASCII (`rn`, `m`) or when international addresses are allowed, are refused by the
    unique confusable skeleton (see crud and backend/confusables.py).
    """
    if len(value) > EMAIL_MAX_CHARS:
        raise ValueError(f"must be at most {EMAIL_MAX_CHARS} characters long")
    try:
        address = validate_email(
            value,
            check_deliverability=False,
            globally_deliverable=False,
            test_environment=True,
            allow_smtputf8=allow_international,
        )
    except EmailNotValidError as error:
        raise ValueError(f"is not a valid email address: {error}") from error
    if not allow_international and address.domain != address.ascii_domain:
        raise ValueError(
            "is not a valid email address: internationalised domain names are not accepted "
            "here; use ASCII letters, digits and hyphens."
        )
    return address.normalized.lower()
