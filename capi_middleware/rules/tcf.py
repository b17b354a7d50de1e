"""The IAB TCF v2 TC string: decode the core segment a consent decision needs.

A CMP stores the string in the ``euconsent-v2`` cookie; `parse_tc_string` reads its core segment
(purposes and vendor consents) with bounded work whatever the size of the value, and returns
None for anything that is not a valid v2 string. `capi_middleware.consent.tcf_v2` turns it
into a consent policy.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

__all__ = ["TCString", "parse_tc_string"]


_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SIX_BITS = {c: format(i, "06b") for i, c in enumerate(_B64URL)}
# The longest stretch of a core segment the spec allows up to the end of the vendor consents
# (the last field we read): 230 header bits plus 4,095 range entries of 33 bits. Only that many
# characters are decoded, whatever the length of the value, so a hostile cookie costs bounded work.
_MAX_TC_CHARS = (230 + 12 + 4095 * 33) // 6 + 1
_MAX_VENDOR_ID = 65535
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class TCString:
    """The core segment of an IAB TCF v2 TC string (the fields a consent decision needs).

    Purpose, special-feature and vendor numbers are 1-based as in the spec. Vendor consents are
    kept in their encoded form (a bitfield or ranges) so a hostile string cannot make us
    build a huge set: ask `has_vendor_consent`, or `vendor_consents` for the full set.
    """

    version: int
    created: datetime
    last_updated: datetime
    cmp_id: int
    cmp_version: int
    consent_screen: int
    consent_language: str
    vendor_list_version: int
    tcf_policy_version: int
    is_service_specific: bool
    use_non_standard_texts: bool
    special_feature_opt_ins: frozenset[int]
    purposes_consent: frozenset[int]
    purposes_li_transparency: frozenset[int]
    purpose_one_treatment: bool
    publisher_cc: str
    max_vendor_id: int
    vendor_range_encoded: bool
    vendor_bits: int = field(default=0, repr=False)
    vendor_ranges: tuple[tuple[int, int], ...] = field(default=(), repr=False)  # sorted, merged

    def has_vendor_consent(self, vendor_id: int) -> bool:
        """Whether the visitor consented to the vendor with this GVL id."""
        if not 1 <= vendor_id <= self.max_vendor_id:
            return False
        if self.vendor_range_encoded:
            # vendor_ranges is sorted and merged: find the last range starting at or before.
            i = bisect_right(self.vendor_ranges, (vendor_id, _MAX_VENDOR_ID))
            return i > 0 and self.vendor_ranges[i - 1][1] >= vendor_id
        # Bit 1 of the bitfield (the most significant) is vendor 1.
        return bool((self.vendor_bits >> (self.max_vendor_id - vendor_id)) & 1)

    @property
    def vendor_consents(self) -> frozenset[int]:
        """Every vendor id with consent (at most 65,535 ids)."""
        if self.vendor_range_encoded:
            return frozenset(i for start, end in self.vendor_ranges for i in range(start, end + 1))
        bits = format(self.vendor_bits, f"0{self.max_vendor_id}b") if self.max_vendor_id else ""
        return frozenset(i + 1 for i, b in enumerate(bits) if b == "1")


class _Truncated(Exception):
    pass


class _BitReader:
    def __init__(self, bits: str) -> None:
        self.bits = bits
        self.pos = 0

    def read(self, n: int) -> int:
        end = self.pos + n
        if end > len(self.bits):
            raise _Truncated
        chunk = self.bits[self.pos : end]
        self.pos = end
        return int(chunk, 2) if chunk else 0

    def flag(self) -> bool:
        return self.read(1) == 1

    def flags(self, n: int) -> frozenset[int]:
        end = self.pos + n
        if end > len(self.bits):
            raise _Truncated
        chunk = self.bits[self.pos : end]
        self.pos = end
        return frozenset(i + 1 for i, b in enumerate(chunk) if b == "1")

    def letters(self) -> str:
        # Two 6-bit letters, 0 = "A" (ConsentLanguage, PublisherCC).
        return "".join(chr(65 + v) if v < 26 else "?" for v in (self.read(6), self.read(6)))

    def time(self) -> datetime:
        return _EPOCH + timedelta(milliseconds=self.read(36) * 100)  # deciseconds


def _merge_ranges(ranges: list[tuple[int, int]], max_id: int) -> tuple[tuple[int, int], ...]:
    # Entries may overlap and run past MaxVendorId; merged, they hold each id at most once, so
    # lookups bisect and the full set costs at most 65,535 ids.
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if start > max_id:
            break
        end = min(end, max_id)
        if merged and start <= merged[-1][1] + 1:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return tuple(merged)


def parse_tc_string(value: str) -> TCString | None:
    """Decode the core segment of a TCF v2 TC string; None when it is not one.

    Only the first ``.``-separated segment is read (the core segment comes first), and of it
    only the fields up to the vendor consents. Never raises; the work is bounded whatever the
    length of ``value``.
    """
    if not isinstance(value, str):
        return None
    core = value[: _MAX_TC_CHARS + 64].strip().partition(".")[0][:_MAX_TC_CHARS].rstrip("=")
    if not core:
        return None
    try:
        bits = "".join(_SIX_BITS[c] for c in core)
    except KeyError:
        return None
    r = _BitReader(bits)
    try:
        version = r.read(6)
        if version != 2:
            return None
        created = r.time()
        last_updated = r.time()
        cmp_id = r.read(12)
        cmp_version = r.read(12)
        consent_screen = r.read(6)
        consent_language = r.letters()
        vendor_list_version = r.read(12)
        tcf_policy_version = r.read(6)
        is_service_specific = r.flag()
        use_non_standard_texts = r.flag()
        special_features = r.flags(12)
        purposes = r.flags(24)
        purposes_li = r.flags(24)
        purpose_one_treatment = r.flag()
        publisher_cc = r.letters()
        max_vendor_id = r.read(16)
        range_encoded = r.flag()
        vendor_bits = 0
        ranges: list[tuple[int, int]] = []
        if range_encoded:
            for _ in range(r.read(12)):
                is_range = r.flag()
                start = r.read(16)
                end = r.read(16) if is_range else start
                if not 1 <= start <= end:
                    return None
                ranges.append((start, end))
        else:
            vendor_bits = r.read(max_vendor_id)
    except _Truncated:
        return None
    return TCString(
        version=version,
        created=created,
        last_updated=last_updated,
        cmp_id=cmp_id,
        cmp_version=cmp_version,
        consent_screen=consent_screen,
        consent_language=consent_language,
        vendor_list_version=vendor_list_version,
        tcf_policy_version=tcf_policy_version,
        is_service_specific=is_service_specific,
        use_non_standard_texts=use_non_standard_texts,
        special_feature_opt_ins=special_features,
        purposes_consent=purposes,
        purposes_li_transparency=purposes_li,
        purpose_one_treatment=purpose_one_treatment,
        publisher_cc=publisher_cc,
        max_vendor_id=max_vendor_id,
        vendor_range_encoded=range_encoded,
        vendor_bits=vendor_bits,
        vendor_ranges=_merge_ranges(ranges, max_vendor_id),
    )
