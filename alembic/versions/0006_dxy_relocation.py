"""dxy_relocation: DXY 1m bars move from derived_data_bars to data_bars, through a generic relocation.

Installs the relocation's functions (sql/templates/relocation*.sql.j2) with
DXY's parameters, registers DXY in the registry, its settings and its
reconcile pair, and the write function market.write_dxy_bar. The reader view
market.bars_1m keeps reading DXY from derived_data_bars until the switch
(`keyshift relocate dxy switch`); the copy needs data_bars in key_primary
(its unique index over instrument_key, timeframe, ts).

Revision ID: dxy_relocation
Revises: index_memberships_dual_write
"""

from __future__ import annotations

import json

from toolkit import migrate
from toolkit.resources import sql_dir

revision = "dxy_relocation"
down_revision = "index_memberships_dual_write"
branch_labels = None
depends_on = None

NAME = "dxy_1m_bars"
SOURCE_SLICE = {"symbol": "DXY", "timeframe": "1m"}
TARGET_SLICE = {"instrument_key": "DXY_ICE_INDEX", "timeframe": "1m"}
BAR_COLUMNS = ["open", "high", "low", "close", "volume"]
# The reconcile pair, exactly as keyshift reconcile reads it.
PAIR_SPEC = {
    "source": "market.derived_data_bars",
    "target": "market.data_bars",
    "key": ["timeframe", "ts"],
    "columns": BAR_COLUMNS,
    "source_slice": SOURCE_SLICE,
    "target_slice": TARGET_SLICE,
    "bucket_by": "ts:day",
    "source_marker": "relocated_at",
}
# Frozen parameters shared by the relocation (sql/templates/relocation.sql.j2)
# and its write function (relocation_write.sql.j2).
SLICE = dict(
    name=NAME,
    source_schema="market",
    source_table="derived_data_bars",
    source_slice=SOURCE_SLICE,
    target_schema="market",
    target_table="data_bars",
    target_slice=TARGET_SLICE,
    cursor_column="ts",
    target_unique=["instrument_key", "timeframe", "ts"],
)
RELOCATION = dict(
    SLICE,
    carried_columns=["ts", *BAR_COLUMNS],
    marker_column="relocated_at",
    view_schema="market",
    view_name="bars_1m",
    soak_setting="dxy.soak_window",
    pair_spec=json.dumps(PAIR_SPEC),
    pair_description="DXY 1m bars: the derived_data_bars slice equals the data_bars slice, per day",
    registered_by=revision,
)
WRITE = dict(
    SLICE,
    function_schema="market",
    function_name="write_dxy_bar",
    arguments=[
        ["ts", "timestamptz"],
        ["open", "numeric"],
        ["high", "numeric"],
        ["low", "numeric"],
        ["close", "numeric"],
        ["volume", "int8"],
    ],
    defaults={"volume": 0},
    source_stamp="computed_at",
    description=(
        "Write one DXY 1m bar (upsert): data_bars, and derived_data_bars until cleanup; "
        "returns the relocation step"
    ),
)


def _reader(name: str) -> str:
    return (sql_dir() / name).read_text(encoding="utf-8").strip()


def upgrade() -> None:
    migrate.set_timeouts()
    migrate.run_sql_file("dxy_relocation.sql")
    migrate.run_template("relocation_control")
    migrate.run_template(
        "relocation",
        reader_before=_reader("dxy_bars_1m_before.sql"),
        reader_after=_reader("dxy_bars_1m_after.sql"),
        **RELOCATION,
    )
    migrate.run_template("relocation_write", **WRITE)


def downgrade() -> None:
    migrate.set_timeouts()
    migrate.run_template(
        "relocation_write_down",
        function_schema=WRITE["function_schema"],
        function_name=WRITE["function_name"],
        arguments=WRITE["arguments"],
    )
    migrate.run_template(
        "relocation_down",
        name=NAME,
        source_schema=RELOCATION["source_schema"],
        source_table=RELOCATION["source_table"],
        marker_column=RELOCATION["marker_column"],
        view_schema=RELOCATION["view_schema"],
        view_name=RELOCATION["view_name"],
    )
    migrate.run_template("relocation_control_down")
    migrate.run_sql_file("dxy_relocation_down.sql")
