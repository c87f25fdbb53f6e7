"""Which characters XML 1.0 can hold: one rule for the XML modules and the loader.

Kept apart from ``_fields`` (which loads lxml) so that loading manifests, which
must refuse a path that an ownership record could not carry, stays light.
Pure.
"""

from __future__ import annotations

import re

# Not in XML 1.0's Char production (#x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] |
# [#x10000-#x10FFFF]): its complement, spelled out, which compiles ~100x faster than
# the negated class (whose ranges re would expand over all of Unicode at start-up).
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def not_xml(value: str) -> str | None:
    """The first character of ``value`` XML 1.0 cannot hold (a control character, a
    lone surrogate as a file name that is not UTF-8 decodes to), or None."""
    bad = NOT_XML.search(value)
    return None if bad is None else bad.group()
