"""Confusable skeletons (Unicode TR39, section 4): two strings that render alike, such as
`root@example.com` and `r\\u043e\\u043et@example.com` (Cyrillic o's), share a skeleton.

No package on PyPI is both well kept and an implementation of the skeleton: ICU's
SpoofChecker has no maintained binary wheel, confusable-homoglyphs keeps a lossy
two-way table without the prototypes, confusables (2021) only lists variants. So this
is the algorithm, a few lines, over Unicode's own data file, shipped unmodified in
backend/data/confusables.txt (version 13.0.0, see backend/data/NOTICE.md).

Changing the data or this code changes skeletons: it needs a migration that recomputes
users.email_skeleton, as alembic/versions/20261208_9d3b7e4f1a26_invisible_skeletons.py
does (with recompute_email_skeletons there).
"""

import hashlib
import re
import unicodedata
from functools import cache
from importlib.resources import files

# i and j lose their own dot under an accent above (Unicode's Soft_Dotted property), so
# i + COMBINING DOT ABOVE draws as a plain i: what `admİn`.lower() gives.
_REDUNDANT_DOT = re.compile("(?<=[ij])\u0307")
# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): characters that
# render as nothing, so a text of them alone looks empty, and `ro\u034fot` looks like `root`.
DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)  # fmt: skip


def is_default_ignorable(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in DEFAULT_IGNORABLE)


def _is_invisible(char: str) -> bool:
    # Format characters (Cf) too, most of them default-ignorable already: email-validator
    # refuses them in an address today, and the skeleton should not rest on that.
    return is_default_ignorable(char) or unicodedata.category(char) == "Cf"


def skeleton(text: str) -> str:
    """TR39's skeleton of the NFKC, lower-case form (identifiers are compared in NFKC,
    UAX 31, and confusables.txt leaves fullwidth forms to it), without the characters
    that render as nothing: default-ignorable and format (Cf) ones, as TR39 drops the
    former before mapping (`ro\\u034fot`, `root\\ufe0f` and `ro\\u3164ot` are `root`)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = unicodedata.normalize("NFD", text)
    text = "".join(char for char in text if not _is_invisible(char))
    prototypes = _prototypes()
    text = "".join(prototypes.get(char, char) for char in text)
    return _REDUNDANT_DOT.sub("", unicodedata.normalize("NFD", text))


def email_skeleton(email: str) -> str:
    """What users.email_skeleton holds: a SHA-256 of the skeleton, a fixed 64 characters
    whatever NFKC expands an address to, for the unique index."""
    return hashlib.sha256(skeleton(email).encode()).hexdigest()


@cache
def _prototypes() -> dict[str, str]:
    """confusables.txt: `source ; prototype ; type # comment`, code points in hex."""
    path = files("backend").joinpath("data/confusables.txt")
    prototypes = {}
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        fields = line.split("#", 1)[0].split(";")
        if len(fields) < 2:
            continue
        source, prototype = (
            "".join(chr(int(point, 16)) for point in field.split()) for field in fields[:2]
        )
        prototypes[source] = prototype
    return prototypes
