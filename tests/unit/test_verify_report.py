"""verify's text report never contradicts itself after --repair (issue 19, point 10)."""

from __future__ import annotations

from collections import Counter

from consumer.trust.compare import Difference, DifferenceKind
from consumer.trust.verify import VerifyReport

HASH_A, HASH_B = "AA" * 32, "BB" * 32


def _missing(tx_hash: str, plays: int) -> Difference:
    return Difference(
        DifferenceKind.MISSING, 7, tx_hash, detail=f"{plays} plays never written", plays=plays
    )


def _report(repaired: bool, set_aside: set[str] | None = None) -> VerifyReport:
    report = VerifyReport("devnet-1", 1, 12, repaired=repaired, set_aside=set_aside or set())
    report.counts = Counter({DifferenceKind.MISSING: 2})
    report.first = [_missing(HASH_A, 6), _missing(HASH_B, 1)]
    return report


def test_a_full_repair_says_ok_after_repair_with_what_it_found_and_wrote() -> None:
    report = _report(repaired=True)
    report.repaired_transactions, report.repaired_plays = 2, 7
    first = report.format_text().splitlines()[0]
    assert first.endswith(
        "OK after repair: found 2 differences, repaired 2 missing transactions (7 plays written)"
    )


def test_a_repaired_difference_is_listed_as_repaired_with_its_plays() -> None:
    report = _report(repaired=True)
    report.repaired_transactions, report.repaired_plays = 2, 7
    text = report.format_text()
    assert f"height 7: missing tx {HASH_A}: repaired, 6 plays written" in text
    assert f"height 7: missing tx {HASH_B}: repaired, 1 play written" in text
    assert "never written" not in text


def test_a_difference_set_aside_by_the_repair_is_not_called_repaired() -> None:
    report = _report(repaired=True, set_aside={HASH_B})
    report.repaired_transactions, report.repaired_plays = 1, 6
    text = report.format_text()
    assert text.splitlines()[0].endswith(
        "1 difference remains; repaired 1 missing transaction (6 plays written)"
    )
    assert f"missing tx {HASH_B}: not repaired: PostgreSQL refused it, set aside" in text


def test_without_repair_a_missing_transaction_still_reads_never_written() -> None:
    text = _report(repaired=False).format_text()
    assert text.splitlines()[0].endswith(": 2 differences")
    assert f"missing tx {HASH_A}: 6 plays never written" in text
