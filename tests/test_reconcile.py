"""Reconciliation on a real Postgres: each kind of difference, drill-down, snapshot, pairs, CLI."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.legacy import make_legacy_db
from toolkit import backfill, migrate, reconcile
from toolkit.errors import KeyshiftError

# A source and a target that start equal: composite key, unconstrained numeric,
# text, timestamptz, jsonb, an array, NULLs. The target has no primary key, so
# it can hold a duplicated row.
TABLES = """
CREATE SCHEMA rec;
CREATE TABLE rec.src (region text NOT NULL, id integer NOT NULL, amount numeric, note text,
                      at timestamptz, payload jsonb, tags integer[], PRIMARY KEY (region, id));
CREATE TABLE rec.tgt (region text NOT NULL, id integer NOT NULL, amount numeric, note text,
                      at timestamptz, payload jsonb, tags integer[]);
INSERT INTO rec.src
SELECT CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END, i, i * 1.5, 'n' || i,
       '2026-03-01 00:00:00+00'::timestamptz + i * interval '1 hour',
       jsonb_build_object('i', i), ARRAY[i, i + 1]
  FROM generate_series(1, 2000) i;
INSERT INTO rec.tgt SELECT * FROM rec.src;
"""
ADHOC = {"source": "rec.src", "target": "rec.tgt", "key": ["region", "id"]}


@pytest.fixture
def conn(head_conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    head_conn.execute(TABLES)
    return head_conn


def adhoc(conn: psycopg.Connection[Any], **kw: Any) -> reconcile.Result:
    args = {**ADHOC, **kw}
    return reconcile.run_adhoc(
        conn,
        args.pop("source"),
        args.pop("target"),
        args.pop("key"),
        args.pop("columns", None),
        args.pop("slices", None),
        args.pop("bucket_by", None),
        **args,
    )


def found(result: reconcile.Result) -> set[tuple[str, tuple[Any, ...], tuple[str, ...]]]:
    return {(d.category, tuple(d.key.values()), tuple(sorted(d.columns))) for d in result.differences}


def test_equal_tables_pass_and_the_run_is_stored(conn: psycopg.Connection[Any]) -> None:
    result = adhoc(conn)
    assert result.verdict == "pass" and result.match_ratio == 1
    assert (result.rows_source, result.rows_target, result.rows_matched) == (2000, 2000, 2000)
    assert result.buckets_mismatched == 0 and result.buckets_total > 100
    stored = conn.execute(
        "SELECT pair, verdict, rows_matched, details->'categories' FROM keyshift.reconcile_runs WHERE id = %s",
        (result.run_id,),
    ).fetchone()
    assert stored == ("adhoc:rec.src->rec.tgt", "pass", 2000, {})


def test_each_kind_of_difference_is_found_and_named_by_key(conn: psycopg.Connection[Any]) -> None:
    conn.execute("DELETE FROM rec.tgt WHERE id = 10")  # missing
    conn.execute("INSERT INTO rec.tgt (region, id, amount) VALUES ('us', 5001, 1)")  # extra
    conn.execute("INSERT INTO rec.tgt SELECT * FROM rec.tgt WHERE id = 20")  # duplicated
    conn.execute("UPDATE rec.tgt SET amount = amount + 0.01 WHERE id = 30")  # changed numeric
    conn.execute("UPDATE rec.src SET note = NULL WHERE id = 40")
    conn.execute("UPDATE rec.tgt SET note = '' WHERE id = 40")  # NULL vs ''
    conn.execute("UPDATE rec.src SET note = NULL WHERE id = 41")
    conn.execute("UPDATE rec.tgt SET note = '0' WHERE id = 41")  # NULL vs '0'
    conn.execute('UPDATE rec.tgt SET payload = \'{"i": 50, "x": null}\' WHERE id = 50')  # jsonb
    conn.execute("UPDATE rec.tgt SET tags = ARRAY[60] WHERE id = 60")  # array
    result = adhoc(conn)
    assert result.verdict == "fail"
    assert found(result) == {
        ("missing", ("eu", "10"), ("amount", "at", "note", "payload", "tags")),
        ("extra", ("us", "5001"), ("amount", "at", "note", "payload", "tags")),
        ("duplicate", ("eu", "20"), ()),
        ("changed", ("eu", "30"), ("amount",)),
        ("changed", ("eu", "40"), ("note",)),
        ("changed", ("us", "41"), ("note",)),
        ("changed", ("eu", "50"), ("payload",)),
        ("changed", ("eu", "60"), ("tags",)),
    }
    assert result.categories == {"missing": 1, "extra": 1, "duplicate": 1, "changed": 5}
    by_key = {tuple(d.key.values()): d for d in result.differences}
    assert by_key[("eu", "30")].columns == {"amount": {"source": "45", "target": "45.01"}}
    assert by_key[("eu", "40")].columns == {"note": {"source": None, "target": ""}}
    assert (by_key[("eu", "20")].source_rows, by_key[("eu", "20")].target_rows) == (1, 2)
    # Every other row matched; the duplicate's one equal copy counts once.
    assert result.rows_matched == 2000 - 1 - 5
    assert (result.rows_source, result.rows_target) == (2000, 2001)


def test_scale_time_zone_and_session_settings_do_not_make_a_difference(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "UPDATE rec.tgt SET amount = (amount::text || '000')::numeric WHERE id <= 100"
    )  # 1.5 = 1.5000
    conn.execute("UPDATE rec.tgt SET amount = 3.0 WHERE id = 2")  # src 3.0 (2 * 1.5): 3.0 = 3.0
    conn.execute("UPDATE rec.src SET amount = 3 WHERE id = 2")  # and 3 = 3.0
    conn.execute("SET TimeZone = 'Asia/Kolkata'")
    conn.execute("UPDATE rec.tgt SET at = '2026-03-01 05:30:00+05:30'::timestamptz + id * interval '1 hour'")
    conn.execute("SET DateStyle = 'SQL, DMY'")
    assert adhoc(conn).verdict == "pass"
    # A timestamp without time zone holding UTC wall-clock time equals the timestamptz.
    conn.execute(
        "CREATE TABLE rec.naive AS SELECT region, id, amount, at AT TIME ZONE 'UTC' AS at FROM rec.src"
    )
    naive = adhoc(conn, target="rec.naive", columns=["amount", "at"])
    assert naive.verdict == "pass", found(naive)
    conn.execute("UPDATE rec.tgt SET at = at + interval '1 microsecond' WHERE id = 7")
    assert found(adhoc(conn)) == {("changed", ("us", "7"), ("at",))}


def test_a_change_in_one_bucket_among_many_drills_into_that_bucket_only(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute("UPDATE rec.tgt SET note = 'changed' WHERE id = 1234")
    by_day = adhoc(conn, bucket_by="at:day")
    assert by_day.buckets_total == 84 and by_day.buckets_mismatched == 1
    assert found(by_day) == {("changed", ("eu", "1234"), ("note",))}
    [bad] = [b for b in by_day.buckets if not b["match"]]
    assert bad["bucket"] == "2026-04-21 00:00:00+00"  # 2026-03-01 + 1234 h
    by_width = adhoc(conn, bucket_by="id:100")
    assert by_width.buckets_mismatched == 1 and found(by_width) == found(by_day)
    assert adhoc(conn, bucket_by="at:hour").buckets_mismatched == 1
    # Rows without a bucket value have a bucket of their own.
    conn.execute("UPDATE rec.src SET at = NULL WHERE id IN (3, 4)")
    conn.execute("UPDATE rec.tgt SET at = NULL WHERE id = 3")
    nulls = adhoc(conn, bucket_by="at:day")
    assert found(nulls) == {
        ("changed", ("eu", "1234"), ("note",)),
        ("changed", ("eu", "4"), ("at",)),  # its two buckets are both drilled into: one key
    }
    assert sorted(b["bucket"] for b in nulls.buckets if not b["match"]) == [
        "2026-03-01 00:00:00+00",
        "2026-04-21 00:00:00+00",
        "null",
    ]


def test_an_indexed_integer_key_is_bucketed_by_ranges_by_default(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE INDEX ON rec.src (id)")
    conn.execute("CREATE INDEX ON rec.tgt (id)")
    conn.execute("UPDATE rec.tgt SET note = 'x' WHERE id = 1500")
    result = adhoc(conn, key=["id", "region"])
    # 2000 ids in 256 buckets: width 8, bucket n holds ids 8n .. 8n+7.
    assert result.buckets_total == 251 and [b["bucket"] for b in result.buckets if not b["match"]] == ["187"]
    assert found(result) == {("changed", ("1500", "eu"), ("note",))}
    hashed = adhoc(conn)  # leading column region: buckets of the key's hash
    assert found(hashed) == {("changed", ("eu", "1500"), ("note",))}
    assert [b["bucket"] for b in hashed.buckets if not b["match"]] != ["187"]


def test_max_rows_limits_the_listing_not_the_counts(conn: psycopg.Connection[Any]) -> None:
    conn.execute("UPDATE rec.tgt SET amount = 0 WHERE id <= 50")
    result = adhoc(conn, max_rows=7)
    assert len(result.differences) == 7
    assert result.categories == {"changed": 50}
    assert result.rows_matched == 1950


def test_slices_compare_only_their_rows(conn: psycopg.Connection[Any]) -> None:
    conn.execute("UPDATE rec.tgt SET amount = 0 WHERE region = 'us' AND id = 3")
    assert adhoc(conn, slices={"region": "eu"}).verdict == "pass"
    us = adhoc(conn, slices={"region": "us"})
    assert us.rows_source == 1000 and found(us) == {("changed", ("us", "3"), ("amount",))}


def test_strict_and_lenient_verdicts_use_the_threshold_setting(conn: psycopg.Connection[Any]) -> None:
    conn.execute("UPDATE rec.tgt SET amount = 0 WHERE id = 1")  # 1999 of 2000 = 99.95 %
    assert adhoc(conn).verdict == "fail"
    lenient = adhoc(conn, mode="lenient")
    assert lenient.verdict == "pass" and lenient.threshold == Decimal("0.9995")
    conn.execute("SELECT keyshift.set_setting('reconcile.lenient_threshold', '99.99', 'test')")
    assert adhoc(conn, mode="lenient").verdict == "fail"


def test_tolerances_are_exact_by_default_and_declared_per_column(conn: psycopg.Connection[Any]) -> None:
    conn.execute("ALTER TABLE rec.src ADD COLUMN price float8")
    conn.execute("ALTER TABLE rec.tgt ADD COLUMN price float8")
    conn.execute("UPDATE rec.src SET price = id / 3.0")
    conn.execute("UPDATE rec.tgt SET price = id / 3.0 + 1e-9")  # noise on every row
    conn.execute("UPDATE rec.tgt SET at = at + interval '300 milliseconds' WHERE id = 11")
    exact = adhoc(conn)
    assert exact.categories == {"changed": 2000}
    tolerant = {"price": "abs:0.000001", "at": "precision:second"}
    ok = adhoc(conn, tolerances=tolerant)
    assert ok.verdict == "pass" and ok.rows_matched == 2000 and not ok.differences
    assert adhoc(conn, tolerances={"price": "rel:0.000001", "at": "precision:second"}).verdict == "pass"
    conn.execute("UPDATE rec.tgt SET price = price + 0.01 WHERE id = 9")
    one = adhoc(conn, tolerances=tolerant)
    assert found(one) == {("changed", ("us", "9"), ("price",))}
    assert one.rows_matched == 1999
    for bad, message in [
        ({"note": "abs:1"}, "does not apply to rec.src.note"),
        ({"price": "abs:x"}, "is not abs:N"),
        ({"at": "precision:fortnight"}, "is not abs:N"),
        ({"id": "abs:1"}, "not a compared column"),
    ]:
        with pytest.raises(KeyshiftError, match=message):
            adhoc(conn, tolerances=bad)


def _writer(dsn: str) -> Callable[[reconcile.Progress], None]:
    """A progress hook that commits writes from another session at each step of the run."""

    def write(p: reconcile.Progress) -> None:
        with psycopg.connect(dsn, autocommit=True) as other:
            n = other.execute("SELECT count(*) FROM rec.src").fetchone()[0]  # type: ignore[index]
            other.execute(
                "INSERT INTO rec.src (region, id, amount) VALUES ('eu', %s, 1)", (10_000 + n,)
            )  # only in the source: a later read would see a mismatch
            other.execute("UPDATE rec.tgt SET amount = -1 WHERE id = 2")

    return write


@pytest.mark.parametrize("parallel", [False, True], ids=["one backend", "exported snapshot"])
def test_writes_during_a_run_cause_no_false_mismatch(
    conn: psycopg.Connection[Any], head_dsn: str, parallel: bool
) -> None:
    result = adhoc(
        conn, progress=_writer(head_dsn), helper_dsn=head_dsn if parallel else None, bucket_by="id:100"
    )
    assert result.verdict == "pass", found(result)
    after = adhoc(conn, bucket_by="id:100")
    assert after.verdict == "fail" and ("changed", ("eu", "2"), ("amount",)) in found(after)


def test_a_concurrent_writer_thread_keeping_both_sides_equal_never_fails_a_run(
    conn: psycopg.Connection[Any], head_dsn: str
) -> None:
    stop = threading.Event()

    def writer() -> None:
        i = 0
        with psycopg.connect(head_dsn, autocommit=True) as other:
            while not stop.is_set():
                i += 1
                with other.transaction():  # both sides in one transaction
                    other.execute("INSERT INTO rec.src (region, id, amount) VALUES ('w', %s, %s)", (i, i))
                    other.execute("INSERT INTO rec.tgt (region, id, amount) VALUES ('w', %s, %s)", (i, i))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        verdicts = [adhoc(conn, helper_dsn=head_dsn, record=False).verdict for _ in range(5)]
    finally:
        stop.set()
        thread.join()
    assert verdicts == ["pass"] * 5
    assert conn.execute("SELECT count(*) FROM rec.src WHERE region = 'w'").fetchone()[0] > 0  # type: ignore[index]


def test_hostile_names_are_quoted_and_unknown_ones_refused(conn: psycopg.Connection[Any]) -> None:
    conn.execute('CREATE SCHEMA "Mixed Case"')
    conn.execute('CREATE TABLE "Mixed Case"."we""ird" ("k ey" int, "va;l" text)')
    conn.execute('INSERT INTO "Mixed Case"."we""ird" VALUES (1, \'a\'), (2, NULL)')
    conn.execute('CREATE TABLE "Mixed Case".copy AS SELECT * FROM "Mixed Case"."we""ird"')
    ok = reconcile.run_adhoc(conn, '"Mixed Case"."we""ird"', '"Mixed Case".copy', ["k ey"])
    assert ok.verdict == "pass" and ok.rows_source == 2
    for kwargs, message in [
        ({"source": "rec.src; DROP TABLE rec.tgt"}, "is not a table or view"),
        ({"source": "rec.nope"}, "is not a table or view"),
        ({"key": ['id"; DROP TABLE rec.tgt; --']}, "has no column"),
        ({"slices": {"id": "1; DROP TABLE rec.tgt"}}, "does not fit its column"),
        ({"slices": {"x' OR '1'='1": "1"}}, "has no column"),
        ({"bucket_by": "note:day"}, "is text, not a date or timestamp"),
        ({"bucket_by": "id;drop"}, "is not COL:day"),
    ]:
        with pytest.raises(KeyshiftError, match=message) as err:
            adhoc(conn, **kwargs)
        assert err.value.exit_code == 2 and "\n" not in err.value.message
    assert conn.execute("SELECT count(*) FROM rec.tgt").fetchone() == (2000,)
    assert conn.execute("SELECT count(*) FROM keyshift.reconcile_runs").fetchone() == (1,)


# ---------------------------------------------------------------- registered pairs

# The pair the DXY relocation registers (revision dxy_relocation), exactly.
DXY_SPEC = {
    "source": "market.derived_data_bars",
    "target": "market.data_bars",
    "key": ["timeframe", "ts"],
    "columns": ["open", "high", "low", "close", "volume"],
    "source_slice": {"symbol": "DXY", "timeframe": "1m"},
    "target_slice": {"instrument_key": "DXY_ICE_INDEX", "timeframe": "1m"},
    "bucket_by": "ts:day",
    "source_marker": "relocated_at",
}


def relocation_tables(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Two tables of the DXY relocation's shape, and the spec with its keys."""
    conn.execute(
        """
        CREATE TABLE rec.derived (symbol text, timeframe text, ts timestamptz, open numeric, high numeric,
            low numeric, close numeric, volume bigint, relocated_at timestamptz,
            PRIMARY KEY (symbol, timeframe, ts));
        CREATE TABLE rec.bars (instrument_key text, timeframe text, ts timestamptz, open numeric,
            high numeric, low numeric, close numeric, volume bigint, PRIMARY KEY (instrument_key, timeframe, ts));
        INSERT INTO rec.derived (symbol, timeframe, ts, open, high, low, close, volume)
        SELECT s, tf, '2026-11-01'::timestamptz + m * interval '1 minute', 100 + m / 1000.0, 101, 99, 100.5, m
          FROM unnest(ARRAY['DXY', 'EURX']) s, unnest(ARRAY['1m', '5m']) tf, generate_series(0, 4319) m;
        INSERT INTO rec.bars SELECT 'DXY_ICE_INDEX', timeframe, ts, open, high, low, close, volume
          FROM rec.derived WHERE symbol = 'DXY' AND timeframe = '1m';
        INSERT INTO rec.bars SELECT 'OTHER_X_INDEX', timeframe, ts, 1, 1, 1, 1, 1 FROM rec.derived WHERE symbol = 'DXY';
        """
    )
    return {**DXY_SPEC, "source": "rec.derived", "target": "rec.bars"}


def register(conn: psycopg.Connection[Any], name: str, kind: str, spec: dict[str, Any]) -> None:
    conn.execute(
        "SELECT keyshift.register_pair(%s, %s, %s, 'test pair', 'test')", (name, kind, json.dumps(spec))
    )


def test_relocation_pair_checks_the_slice_and_its_conservation(conn: psycopg.Connection[Any]) -> None:
    spec = relocation_tables(conn)
    register(conn, "reloc", "relocation", spec)
    ok = reconcile.run_pair(conn, "reloc")
    assert ok.verdict == "pass" and ok.rows_source == ok.rows_target == 4320 and ok.buckets_total == 3
    conn.execute(
        "UPDATE rec.bars SET close = 0 WHERE instrument_key = 'DXY_ICE_INDEX' AND ts = '2026-11-02 00:07+00'"
    )
    bad = reconcile.run_pair(conn, "reloc")
    assert found(bad) == {("changed", ("1m", "2026-11-02 00:07:00"), ("close",))}
    assert bad.buckets_mismatched == 1
    conn.execute("UPDATE rec.bars SET close = 100.5 WHERE instrument_key = 'DXY_ICE_INDEX'")
    # A mark outside the slice breaks the invariant: fails even in lenient mode.
    conn.execute(
        "UPDATE rec.derived SET relocated_at = now() WHERE symbol = 'EURX' AND ts = '2026-11-01 00:01+00'"
    )
    touched = reconcile.run_pair(conn, "reloc", mode="lenient")
    assert touched.verdict == "fail" and touched.match_ratio == 1
    assert found(touched) == {
        ("touched_outside_slice", ("EURX", "1m", "2026-11-01 00:01:00"), ()),
        ("touched_outside_slice", ("EURX", "5m", "2026-11-01 00:01:00"), ()),
    }
    conn.execute("UPDATE rec.derived SET relocated_at = NULL")
    # After cleanup, a slice row still live (unmarked) in the source is live in both.
    register(conn, "reloc", "relocation", {**spec, "cleaned_at": "2026-11-04T00:00:00Z"})
    conn.execute(
        "UPDATE rec.derived SET relocated_at = now() WHERE symbol = 'DXY' AND timeframe = '1m' AND volume <> 9"
    )
    live = reconcile.run_pair(conn, "reloc")
    assert live.categories == {"live_in_both": 1}
    assert found(live) == {("live_in_both", ("DXY", "1m", "2026-11-01 00:09:00"), ())}
    conn.execute("UPDATE rec.derived SET relocated_at = now() WHERE symbol = 'DXY' AND timeframe = '1m'")
    assert reconcile.run_pair(conn, "reloc").verdict == "pass"
    # After purge the source slice is gone: only the invariants are checked.
    conn.execute("DELETE FROM rec.derived WHERE relocated_at IS NOT NULL")
    register(conn, "reloc", "relocation", {**spec, "cleaned_at": "x", "purged_at": "2026-11-05T00:00:00Z"})
    purged = reconcile.run_pair(conn, "reloc")
    assert purged.verdict == "pass" and purged.notes and purged.buckets_total == 0


def test_the_dxy_spec_runs_on_the_real_tables(head_conn: psycopg.Connection[Any]) -> None:
    conn = head_conn
    # Revision dxy_relocation registered the pair with exactly this spec.
    assert [
        (p["name"], p["kind"], p["spec"]) for p in reconcile.pairs(conn) if p["name"] == "dxy_1m_bars"
    ] == [("dxy_1m_bars", "relocation", DXY_SPEC)]
    conn.execute(
        "INSERT INTO market.derived_data_bars (symbol, timeframe, ts, open, high, low, close, volume)"
        " SELECT 'DXY', '1m', '2026-11-01'::timestamptz + m * interval '1 minute', 104.1, 104.2, 104.0, 104.15, 0"
        " FROM generate_series(0, 2999) m"
    )
    conn.execute(
        "INSERT INTO market.data_bars (instrument_key, timeframe, ts, open, high, low, close, volume)"
        " SELECT 'DXY_ICE_INDEX', timeframe, ts, open, high, low, close, volume FROM market.derived_data_bars"
    )
    result = reconcile.run_pair(conn, "dxy_1m_bars")
    assert result.verdict == "pass" and result.rows_matched == 3000 and result.buckets_total == 3
    # What the DXY cleanup guard reads.
    latest = conn.execute(
        "SELECT verdict FROM keyshift.reconcile_runs WHERE pair = 'dxy_1m_bars' ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert latest == ("pass",)


def test_registered_pairs_on_a_legacy_database_before_and_after_the_backfill(
    new_db: Callable[..., str],
) -> None:
    dsn = make_legacy_db(new_db, minutes=50)
    with psycopg.connect(dsn, autocommit=True) as conn:
        names = [p["name"] for p in reconcile.pairs(conn)]
        assert names == [
            "key_coverage.market.data_bars",
            "key_coverage.market.subscriptions",
            "key_coverage.trading.positions",
        ]
        before = {r.pair: r for r in reconcile.run_all(conn)}
        assert before["key_coverage.market.data_bars"].categories == {"null_key": 150}
        assert before["key_coverage.trading.positions"].categories == {"null_key": 2}
        assert all(r.verdict == "fail" for r in before.values())
    for table in ("market.subscriptions", "market.data_bars", "trading.positions"):
        backfill.run(dsn, table)
    migrate.upgrade(dsn, "head")
    with psycopg.connect(dsn, autocommit=True) as conn:
        after = reconcile.run_all(conn)
        assert [r.pair for r in after] == [
            "dxy_1m_bars",
            "index_memberships",
            "key_coverage.market.data_bars",
            "key_coverage.market.subscriptions",
            "key_coverage.trading.positions",
        ]
        assert [r.verdict for r in after] == ["pass"] * 5
        assert after[2].rows_matched == 150
        # A key that disagrees with the registry (token 101 meant AAA before 2026).
        conn.execute("SET session_replication_role = replica")  # past the sync trigger, as a bad loader would
        conn.execute(
            "UPDATE market.data_bars SET instrument_key = 'BBB_NSE_EQUITY'"
            " WHERE instrument_token = 101 AND ts = '2025-12-31 22:05+00'"
        )
        conn.execute("SET session_replication_role = DEFAULT")
        bad = reconcile.run_pair(conn, "key_coverage.market.data_bars")
        assert bad.categories == {"key_mismatch": 1}
        [diff] = bad.differences
        assert diff.columns == {"instrument_key": {"source": "AAA_NSE_EQUITY", "target": "BBB_NSE_EQUITY"}}
        assert diff.key["ts"] == "2025-12-31 22:05:00"


def test_memberships_pair_reports_unmapped_tokens_and_collisions(head_conn: psycopg.Connection[Any]) -> None:
    from tests.legacy import seed_registry

    conn = head_conn
    seed_registry(conn)
    insert = (
        "INSERT INTO screener.index_memberships (index_name, instrument_token, weight, effective_from)"
        " VALUES (%s, %s, %s, %s)"
    )
    conn.execute(insert, ("NIFTY50", 102, 0.05, "2025-06-01"))
    conn.execute(insert, ("NIFTY50", 101, 0.02, "2025-06-01"))
    assert reconcile.run_pair(conn, "index_memberships").verdict == "pass"
    conn.execute(insert, ("NIFTY50", 999, 0.01, "2025-06-01"))  # no mapping: dead-lettered (lenient)
    conn.execute("UPDATE instrument_registry.index_memberships SET weight = 0.5 WHERE source_token = 102")
    result = reconcile.run_pair(conn, "index_memberships")
    assert result.categories == {"unmapped": 1, "changed": 1}
    unmapped = next(d for d in result.differences if d.category == "unmapped")
    assert unmapped.note == "999" and unmapped.key["instrument_key"] is None
    # Two tokens mapping to one key on one day (a registry that let it happen).
    conn.execute(
        'ALTER TABLE instrument_registry.broker_instrument_tokens DROP CONSTRAINT "key periods must not overlap"'
    )
    conn.execute(
        "INSERT INTO instrument_registry.broker_instrument_tokens (broker, instrument_token, instrument_key)"
        " VALUES ('zerodha', 104, 'M&M_NSE_EQUITY')"
    )
    conn.execute(insert, ("NIFTY50", 104, 0.05, "2025-06-01"))
    collided = reconcile.run_pair(conn, "index_memberships")
    assert collided.categories["collision"] == 1
    collision = next(d for d in collided.differences if d.category == "collision")
    assert collision.key == {
        "index_name": "NIFTY50",
        "instrument_key": "M&M_NSE_EQUITY",
        "effective_from": "2025-06-01",
    }
    assert collision.note == "102,104" and collision.source_rows == 2


# ---------------------------------------------------------------- command line


def test_cli_exit_codes_json_and_history(cli: Callable, head_dsn: str) -> None:  # type: ignore[type-arg]
    with psycopg.connect(head_dsn, autocommit=True) as conn:
        conn.execute(TABLES)
    args = ("reconcile", "--source", "rec.src", "--target", "rec.tgt", "--key", "region,id")
    ok = cli(*args, "--bucket-by", "at:day", dsn=head_dsn)
    assert ok.exit_code == 0, ok.stderr
    assert "PASS" in ok.stdout and "match 100.0000%" in ok.stdout
    with psycopg.connect(head_dsn, autocommit=True) as conn:
        conn.execute("UPDATE rec.tgt SET amount = 7 WHERE id = 99")
    bad = cli(*args, "--json", "--max-rows", "5", dsn=head_dsn)
    assert bad.exit_code == 1
    [data] = json.loads(bad.stdout)
    assert data["verdict"] == "fail" and data["categories"] == {"changed": 1}
    assert data["differences"][0]["columns"] == {"amount": {"source": "148.5", "target": "7"}}
    table = cli(*args, "--slice", "region=us", dsn=head_dsn)
    assert table.exit_code == 1 and "us" in table.stdout and "148.5" in table.stdout
    assert cli(*args, "--mode", "lenient", dsn=head_dsn).exit_code == 0
    assert cli(*args, "--tolerance", "amount=abs:141.5", dsn=head_dsn).exit_code == 0
    for bad_args in (
        ("reconcile",),
        ("reconcile", "--source", "rec.src"),
        ("reconcile", "nope"),
        (*args, "--slice", "region"),
        (*args, "--tolerance", "amount=abs:-1"),
        (*args, "--slice", "id=x'; DROP TABLE rec.tgt; --"),
        ("reconcile", "--source", "rec.src;", "--target", "rec.tgt", "--key", "id"),
    ):
        result = cli(*bad_args, dsn=head_dsn)
        assert result.exit_code == 2, (bad_args, result.stdout)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("keyshift: error: ")
    assert cli(*args, dsn="host=127.0.0.1 port=1 dbname=x connect_timeout=2").exit_code == 2
    history = cli("reconcile", "--history", "--json", dsn=head_dsn)
    runs = json.loads(history.stdout)
    assert [r["verdict"] for r in runs] == ["pass", "pass", "fail", "fail", "pass"]
    assert runs[1]["pair"] == "adhoc:rec.src->rec.tgt" and runs[1]["mode"] == "lenient"
    assert "adhoc:rec.src->rec.tgt" in cli("reconcile", "--history", dsn=head_dsn).stdout
