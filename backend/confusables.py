"""Confusable skeletons (Unicode TR39, section 4): two strings that render alike, such as
`root@example.com` and `r\\u043e\\u043et@example.com` (Cyrillic o's), share a skeleton.

No package on PyPI is both well kept and an implementation of the skeleton: ICU's
SpoofChecker has no maintained binary wheel, confusable-homoglyphs keeps a lossy
two-way table without the prototypes, confusables (2021) only lists variants. So this
is the algorithm, a few lines, over Unicode's own data file, shipped unmodified in
backend/data/confusables.txt (version 13.0.0, see backend/data/NOTICE.md).

Changing the data or this code changes skeletons: it needs a migration that recomputes
users.email_skeleton, as the one that added the column does.
"""

import hashlib
import re
import unicodedata
from functools import cache
from importlib.resources import files

# i and j lose their own dot under an accent above (Unicode's Soft_Dotted property), so
# i + COMBINING DOT ABOVE draws as a plain i: what `admİn`.lower() gives.
_REDUNDANT_DOT = re.compile("(?<=[ij])\u0307")


def skeleton(text: str) -> str:
    """TR39's skeleton of the NFKC, lower-case form (identifiers are compared in NFKC,
    UAX 31, and confusables.txt leaves fullwidth forms to it)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = unicodedata.normalize("NFD", text)
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
