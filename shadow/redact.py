"""PII redaction: what must not leave the warehouse in a replayed prompt.

Each kind of personal or secret data is found by a precompiled pattern and, where a pattern alone
would flag too much, confirmed by a check the data itself carries (the Luhn digit of a card, the
mod-97 check of an IBAN, a parse of an IP address, the entropy of a token). A match is replaced by
a placeholder naming its kind (``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[IBAN]``, ``[IP]``,
``[SECRET]``).

Kinds run in a fixed order, most specific first: secrets (a key may contain digits and ``@``),
emails, IBANs, cards, IP addresses, phone numbers. Placeholders contain no digits, ``@`` or token
characters, so no later pass (and no second redaction) can match inside one.

What is deliberately *not* redacted, because a replay needs it and it identifies no one: dates,
prices, order and tracking numbers, version strings, ISBNs, postcodes, numbers failing the Luhn or
mod-97 check, bare ``user@`` handles. ``docs/judging.md`` lists the rules and the test figures.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

__all__ = ["REDACTION_KINDS", "RedactedText", "RedactionReport", "redact_text"]

REDACTION_KINDS = ("secret", "email", "iban", "card", "ip", "phone")
"""Every kind the redactor knows, in the order the passes run; placeholders are ``[KIND]``."""


@dataclass(frozen=True)
class RedactedText:
    """A text with its PII replaced by placeholders, and how many of each kind were replaced."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Number of replacements of any kind."""
        return sum(self.counts.values())


class RedactionReport:
    """What was redacted over many texts (for a run's audit trail).

    Add each :class:`RedactedText` as it is produced; ``to_frame()`` has one row per kind.
    """

    def __init__(self) -> None:
        self._redactions: Counter[str] = Counter()
        self._texts_with: Counter[str] = Counter()
        self.texts = 0
        """Texts added."""
        self.texts_redacted = 0
        """Texts in which at least one thing was redacted."""

    def add(self, redacted: RedactedText) -> None:
        """Count one redacted text."""
        self.texts += 1
        self.texts_redacted += redacted.total > 0
        for kind, n in redacted.counts.items():
            self._redactions[kind] += n
            self._texts_with[kind] += n > 0

    @property
    def total(self) -> int:
        """Replacements of any kind over all texts."""
        return sum(self._redactions.values())

    def to_frame(self) -> pl.DataFrame:
        """One row per kind: ``kind``, ``redactions``, ``texts`` (texts with at least one)."""
        return pl.DataFrame(
            {
                "kind": list(REDACTION_KINDS),
                "redactions": [self._redactions[k] for k in REDACTION_KINDS],
                "texts": [self._texts_with[k] for k in REDACTION_KINDS],
            },
            schema={"kind": pl.String, "redactions": pl.Int64, "texts": pl.Int64},
        )


# --------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------

_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL
)
# Tokens whose shape is their provider's published format: a fixed prefix says what they are.
_TOKEN_PREFIXES = (
    "sk-", "sk_", "rk_", "AKIA", "ASIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
    "xox", "AIza", "hf_", "eyJ",
)  # fmt: skip
_PREFIXED_SECRET = re.compile(
    r"(?:"
    r"sk-[A-Za-z0-9_\-]{20,}"  # OpenAI, Anthropic (sk-proj-..., sk-ant-...)
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}"  # GitHub
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_\-]{35}"  # Google API key
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]+"  # JWT
    r")(?![\w-])",
    re.ASCII,
)
_BEARER_WORDS = ("bearer", "basic", "token")
_BEARER = re.compile(r"\b(Bearer|Basic|Token)(\s+)([A-Za-z0-9._~+/=\-]{16,})", re.I | re.A)
# ``name=value`` or ``"name": "value"`` where the name ends in key/token/secret or is a password;
# only the value is replaced. The pattern starts at the ``:`` or ``=`` (rare in prose, so cheap to
# scan for) and the name before it is checked in the replacement.
_ASSIGNED_VALUE = re.compile(r"""[:=]\s*["']?([^\s"'&,;<>()\[\]{}]{6,})""", re.ASCII)
_SECRET_NAME_BEFORE = re.compile(
    r"""(key|token|secret|passw(?:or)?d|pwd|passphrase)["']?\s*$""", re.IGNORECASE | re.ASCII
)
_MIN_KEY_CHARS = 16
_MIN_KEY_ENTROPY = 3.0  # bits per character; random base62 of 16+ chars scores ~3.6-4.0


def _shannon_entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def _char_classes(s: str, *, symbols: bool) -> int:
    return (
        any(c.islower() for c in s)
        + any(c.isupper() for c in s)
        + any(c.isdigit() for c in s)
        + (symbols and any(not c.isalnum() for c in s))
    )


def _looks_secret(name_kind: str, value: str) -> bool:
    if name_kind.lower() in {"password", "passwd", "pwd", "passphrase"}:
        # a password can be short, but plain words after "Password:" are usually prose
        return _char_classes(value, symbols=True) >= 2
    # identifiers in snake or kebab case are names, not keys: symbols do not count here
    return (
        len(value) >= _MIN_KEY_CHARS
        and _char_classes(value, symbols=False) >= 2
        and _shannon_entropy(value) >= _MIN_KEY_ENTROPY
    )


def _prefixed_secret(m: re.Match[str]) -> str | None:
    return None if _glued(m, "-") else "[SECRET]"


def _assigned_secret(m: re.Match[str]) -> str | None:
    name = _SECRET_NAME_BEFORE.search(m.string, max(0, m.start() - 40), m.start())
    if name is None or not _looks_secret(name.group(1), m.group(1)):
        return None
    return m.group(0)[: m.start(1) - m.start()] + "[SECRET]"


def _bearer(m: re.Match[str]) -> str | None:
    token = m.group(3)
    if _char_classes(token, symbols=False) < 2 or _shannon_entropy(token) < _MIN_KEY_ENTROPY:
        return None
    return m.group(1) + m.group(2) + "[SECRET]"


# --------------------------------------------------------------------------------------------
# Emails, IBANs, cards
# --------------------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+\-])[A-Za-z0-9](?:[A-Za-z0-9._%+\-]{0,62}[A-Za-z0-9_%+\-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w\-@])",
    re.ASCII,
)

# IBAN lengths from the SWIFT IBAN registry: country code -> characters.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip
# Greedy on purpose: the run may swallow following words, the check below cuts it to the
# country's length (printed IBANs come in groups of four separated by spaces).
_IBAN = re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?:[ \-]?[A-Z0-9]){11,30}", re.I | re.A)
_IBAN_GATE = re.compile(r"\d{2}[ \-]?[A-Za-z0-9]{4}", re.ASCII)


def _iban_valid(compact: str) -> bool:
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _iban(m: re.Match[str]) -> str | None:
    run = m.group(0)
    length = _IBAN_LENGTHS.get(run[:2].upper())
    if length is None:
        return None
    # where the ``length``-th alphanumeric character ends inside the run
    end, seen = 0, 0
    for end, c in enumerate(run, 1):  # noqa: B007 (end is used after the loop)
        seen += c.isalnum()
        if seen == length:
            break
    else:
        return None
    rest = run[end:]
    if rest[:1].isalnum() or not _iban_valid(run[:end].replace(" ", "").replace("-", "").upper()):
        return None
    return "[IBAN]" + rest


# Card brands' leading digits (IIN ranges): Visa 4, Mastercard 51-55 and 2221-2720, Amex 34/37,
# Diners 30/36/38/39, JCB 35, Discover/UnionPay/Maestro 6, Maestro 50/56-58. Order numbers,
# timestamps and ISBNs (978/979) start elsewhere.
_CARD_PREFIX = re.compile(r"4|5[0-8]|2[2-7]|3[0456789]|6")
_CARD_RUN = re.compile(r"\d(?<![\w\-.,]\d)(?:[ \-]?\d){12,}(?![\w\-]|[.,]\d)", re.ASCII)
_CARD_GATE = re.compile(r"\d(?:[ \-]?\d){12}", re.ASCII)
_CARD_SEP = re.compile(r"([ \-])")
_CARD_MIN_DIGITS, _CARD_MAX_DIGITS = 13, 19


def _luhn_valid(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_card(digits: str) -> bool:
    return (
        _CARD_MIN_DIGITS <= len(digits) <= _CARD_MAX_DIGITS
        and bool(_CARD_PREFIX.match(digits))
        and _luhn_valid(digits)
    )


def _card_end(groups: list[str], start: int) -> int | None:
    """The end of the longest run of whole groups from ``start`` that is a card number."""
    ends, digits, end = [], 0, start
    while end < len(groups) and digits + len(groups[end]) <= _CARD_MAX_DIGITS:
        digits += len(groups[end])
        end += 1
        if digits >= _CARD_MIN_DIGITS:
            ends.append(end)
    return next((e for e in reversed(ends) if _is_card("".join(groups[start:e]))), None)


def _card(m: re.Match[str]) -> str | None:
    # A run of digit groups may hold a card followed by a year, a card after another number, or
    # two cards; a card never starts or ends inside a printed group.
    parts = _CARD_SEP.split(m.group(0))
    groups, seps = parts[0::2], parts[1::2]
    pieces: list[str] = []
    found, i = False, 0
    while i < len(groups):
        end = _card_end(groups, i)
        if end is None:
            pieces.append(groups[i])
            i += 1
        else:
            pieces.append("[CARD]")
            found, i = True, end
        if i < len(groups):
            pieces.append(seps[i - 1])
    return "".join(pieces) if found else None


# --------------------------------------------------------------------------------------------
# IP addresses
# --------------------------------------------------------------------------------------------

# Not inside a longer dotted run (version strings 1.2.3.4.5, section numbers) and not after
# "version"/"v"; octets are checked in the replacement.
_IPV4 = re.compile(
    r"\d(?<![\w.]\d)\d{0,2}(?:\.\d{1,3}){3}(?![\w]|\.\w)(?:/\d{1,2}(?!\d))?", re.ASCII
)
_IPV4_GATE = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d", re.ASCII)
_VERSION_WORD = re.compile(
    r"(?:\b(?:version|release|build|ver\.?|v|section|chapter|step|rule|clause)|§)\s*$",
    re.IGNORECASE | re.ASCII,
)
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3}|:?)"
    r"(?:%[\w.]+)?(?![\w:])",
    re.ASCII,
)


def _ipv4(m: re.Match[str]) -> str | None:
    octets = m.group(0).split("/", 1)[0].split(".")
    if any((len(o) > 1 and o[0] == "0") or int(o) > 255 for o in octets):
        return None
    if _VERSION_WORD.search(m.string, max(0, m.start() - 12), m.start()):
        return None
    return "[IP]"


_IPV6_GATE = re.compile(r":[0-9A-Fa-f]{0,4}:")


def _ipv6(m: re.Match[str]) -> str | None:
    candidate = m.group(0).split("%", 1)[0]
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return None
    # C++/Rust paths (``a::b``) parse as IPv6 too; a real address nearly always has a digit.
    if not any(c.isdigit() for c in candidate):
        return None
    return "[IP]"


# --------------------------------------------------------------------------------------------
# Phone numbers
# --------------------------------------------------------------------------------------------

_SEP = r"[ .\-\u00a0]"
# Each form starts with a fixed character and checks what precedes it right after (a lookbehind
# that includes that character), which lets the regex engine skip ahead cheaply.
_PHONE = re.compile(
    "(?:"
    + "|".join(
        [
            # international: +CC or 00CC then groups, optional (0) trunk digit; 8-15 digits (E.164)
            rf"(?:\+(?<![\w+]\+)|00(?<![\w+]00))[1-9]\d{{0,2}}(?:{_SEP}?\(0\))?"
            rf"(?:{_SEP}?\(?\d{{1,5}}\)?){{1,6}}",
            # North American: (212) 555-0123, 212-555-0123, 212.555.0123, 212 555 0123
            rf"\((?<![\w(]\()[2-9]\d{{2}}\){_SEP}?[2-9]\d{{2}}{_SEP}\d{{4}}",
            r"[2-9](?<![\w.\-][2-9])\d{2}([ .\-])[2-9]\d{2}\1\d{4}",
            # national with a trunk 0: 030 12345678, 020 7946 0018, 01 23 45 67 89, 03-1234-5678,
            # one separator throughout (a date and a time, 01.02.2024 10:30, mixes them)
            r"(?:\((?<![\w.\-/]\()0[1-9]\d{0,4}\)|0(?<![\w.\-/]0)[1-9]\d{0,4})"
            r"([ .\-/\u00a0])\d{2,8}(?:\2\d{2,8}){0,3}",
        ]
    )
    + r")(?![\w]|[ .\-/]\d)",
    re.ASCII,
)
_PHONE_GATE = re.compile(r"\d[\d ()+.\-/\u00a0]{5,}\d", re.ASCII)
# After a word saying "this is a phone number", looser forms count too (5550100, 4155550100).
# As for secrets, the pattern finds the number and the replacement looks back for the word.
_LOOSE_PHONE = re.compile(r"[+(\d][\d .\-()]{5,20}\d(?![\w]|[.\-/]\d)", re.ASCII)
_PHONE_CUE_BEFORE = re.compile(
    r"\b(?:phone|tel|telephone|mobile|cell|call(?:\s+me)?|text\s+me|whatsapp|fax|sms|"
    r"ring\s+me|reach\s+me)\b(?:\s+(?:on|at|is|number|no\.?|#))*[\s:.#]*$",
    re.IGNORECASE | re.ASCII,
)


def _digit_count(s: str) -> int:
    return sum(c.isdigit() for c in s)


def _phone(m: re.Match[str]) -> str | None:
    number = m.group(0)
    # part of a longer run of digit groups (an invoice or account number)
    before = m.string[max(0, m.start() - 2) : m.start()]
    if len(before) == 2 and before[0].isdigit() and before[1] in " .-/":
        return None
    n = _digit_count(number) - number.count("(0)")
    if number.startswith(("+", "00")):
        return "[PHONE]" if 8 <= n <= 15 + 2 * number.startswith("00") else None
    if number.lstrip("(").startswith("0"):
        return "[PHONE]" if 9 <= n <= 13 else None
    return "[PHONE]"


def _cued_phone(m: re.Match[str]) -> str | None:
    if not 7 <= _digit_count(m.group(0)) <= 15 or _glued(m, "+"):
        return None
    if _PHONE_CUE_BEFORE.search(m.string, max(0, m.start() - 40), m.start()) is None:
        return None
    return "[PHONE]"


# --------------------------------------------------------------------------------------------
# The passes
# --------------------------------------------------------------------------------------------

_Replace = Callable[[re.Match[str]], str | None]
_Gate = Callable[[str], bool]


def _glued(m: re.Match[str], chars: str) -> bool:
    """Whether the match continues a word (or one of ``chars``) that starts before it."""
    prev = m.string[m.start() - 1 : m.start()]
    return bool(prev) and (prev.isalnum() or prev == "_" or prev in chars)


def _const(placeholder: str) -> _Replace:
    return lambda _m: placeholder


def _contains(*needles: str, lower: bool = False) -> _Gate:
    if lower:
        return lambda text: any(n in text.lower() for n in needles)
    return lambda text: any(n in text for n in needles)


def _finds(pattern: re.Pattern[str]) -> _Gate:
    return lambda text: pattern.search(text) is not None


# (kind, a cheap necessary condition for any match, pattern, replacement or None to keep).
# The gates matter for speed: most texts contain no PII, and a plain substring test or a
# digit-first search costs a fraction of the full pattern.
_PASSES: tuple[tuple[str, _Gate, re.Pattern[str], _Replace], ...] = (
    ("secret", _contains("-----BEGIN"), _PRIVATE_KEY, _const("[SECRET]")),
    ("secret", _contains(*_TOKEN_PREFIXES), _PREFIXED_SECRET, _prefixed_secret),
    ("secret", _contains(*_BEARER_WORDS, lower=True), _BEARER, _bearer),
    ("secret", _contains(":", "="), _ASSIGNED_VALUE, _assigned_secret),
    ("email", _contains("@"), _EMAIL, _const("[EMAIL]")),
    ("iban", _finds(_IBAN_GATE), _IBAN, _iban),
    ("card", _finds(_CARD_GATE), _CARD_RUN, _card),
    ("ip", _finds(_IPV6_GATE), _IPV6, _ipv6),
    ("ip", _finds(_IPV4_GATE), _IPV4, _ipv4),
    ("phone", _finds(_PHONE_GATE), _PHONE, _phone),
    ("phone", _finds(_PHONE_GATE), _LOOSE_PHONE, _cued_phone),
)


def redact_text(text: str) -> RedactedText:
    """``text`` with emails, phone numbers, card numbers, IBANs, IP addresses and secrets replaced
    by ``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[IBAN]``, ``[IP]``, ``[SECRET]``.

    Idempotent: redacting the result again changes nothing.
    """
    counts: dict[str, int] = {}
    for kind, gate, pattern, replace in _PASSES:
        if not gate(text):
            continue
        found = 0
        placeholder = f"[{kind.upper()}]"

        def substitute(
            m: re.Match[str], replace: _Replace = replace, placeholder: str = placeholder
        ) -> str:
            nonlocal found
            out = replace(m)
            if out is None:
                return m.group(0)
            # one match may hold several (two cards in one run of digits)
            found += out.count(placeholder)
            return out

        text = pattern.sub(substitute, text)
        if found:
            counts[kind] = counts.get(kind, 0) + found
    return RedactedText(text, counts)
