"""Alerts: open and resolved regression alerts (from `telltale alerts run`), acknowledge or
resolve them, and the chart behind each one."""

import datetime as dt

import polars as pl
import streamlit as st

import warehouse
from app import charts, ui

st.title("Alerts")

_HOUR = dt.timedelta(hours=1)

with ui.page_guard():
    url, first, last = ui.require_data()
    status = ui.url_select("Status", ["open", "acknowledged", "resolved", "all"], key="status")
    start = ui.url_date("Detected from", key="from", default=first, low=first, high=last)
    end = ui.url_date("Detected until (inclusive)", key="to", default=last, low=start, high=last)
    found = ui.alert_list(url, None if status == "all" else status, start,
                          end + dt.timedelta(days=1))  # fmt: skip
    if not found.height:
        st.info(
            f"No {'' if status == 'all' else status + ' '}alert detected between {start} and "
            f"{end}. `telltale alerts run` (hourly, from cron) raises them; widen the range or "
            "pick another status in the sidebar."
        )
        st.stop()
    counts = found.group_by("severity").len()
    st.markdown(
        f"**{found.height}** alert(s): "
        + ", ".join(f"{n} {s}" for s, n in counts.sort("severity").iter_rows())
    )
    ui.table(
        found.select("severity", "metric", "model_version", "segment", "segment_value",
                     "opened_at", "detected_at", "relative_shift", "status", "updated_by",
                     "note", "alert_id"),
        percent=("relative_shift",),
    )  # fmt: skip
    labels = {
        r["alert_id"]: f"{r['severity']}: {r['metric']} on {r['model_version']}, "
        f"{r['segment']}={r['segment_value']}, {r['detected_at']:%Y-%m-%d %H:%M}"
        for r in found.iter_rows(named=True)
    }
    alert_id = ui.url_select("Alert", list(labels), key="alert", format_func=labels.get)
    alert = found.filter(pl.col("alert_id") == alert_id).row(0, named=True)

    st.subheader(labels[alert_id])
    cols = st.columns(4)
    cols[0].metric("Expected", f"{alert['expected']:.4g}")
    cols[1].metric("Observed", f"{alert['observed']:.4g}", f"{alert['relative_shift']:+.1%}",
                   delta_color="off")  # fmt: skip
    cols[2].metric("Status", alert["status"])
    cols[3].metric("Segments firing", alert["segments_firing"])
    st.caption(
        f"Expected from {alert['basis']} (baseline version {alert['baseline_version'] or '-'}); "
        f"the shift began {alert['opened_at']:%Y-%m-%d %H:%M} UTC and was detected "
        f"{alert['detected_at']:%Y-%m-%d %H:%M} UTC. {alert['note']}"
    )
    opened = alert["opened_at"].replace(tzinfo=None)
    detected = alert["detected_at"].replace(tzinfo=None)
    day0 = (opened - dt.timedelta(days=3)).date()
    day1 = min(detected.date() + dt.timedelta(days=2), last + dt.timedelta(days=1))
    segment = None if alert["segment"] == "all" else (alert["segment"], alert["segment_value"])
    data = ui.series(url, alert["metric"], day0, day1, segment, "hour")
    versions = {alert["model_version"], alert["baseline_version"]} - {""}
    data = data.filter(pl.col("series").is_in(list(versions)) & pl.col("value").is_not_null())
    # the expectation over the run-up, with the shift's interval around it
    run_up = pl.datetime_range(opened, detected, "1h", eager=True).alias("time")
    margin = 1.96 * (alert["shift_se"] or 0.0)
    band = pl.DataFrame({"time": run_up}).with_columns(
        expected=pl.lit(alert["expected"]),
        lower=pl.lit(alert["expected"] - margin),
        upper=pl.lit(alert["expected"] + margin),
    )
    marks = pl.DataFrame(
        {"title": ["shift began", "detected"], "kind": ["alert", "alert"],
         "starts_at": [opened, detected]},
        schema_overrides={"starts_at": pl.Datetime("us")},
    )  # fmt: skip
    st.altair_chart(
        charts.series_chart(
            data, band=band, annotations=pl.concat([marks, ui.notes(url, day0, day1).select(
                "title", "kind",
                pl.col("starts_at").dt.replace_time_zone(None).cast(pl.Datetime("us")),
            )]),
            y_title=alert["metric"],
            title=f"{alert['metric']} by hour, {alert['segment']}={alert['segment_value']}",
        ),
        width="stretch",
    )  # fmt: skip

    st.subheader("Act on it")
    who = st.text_input("Your name", key="by", placeholder="on-call engineer")
    note = st.text_input("Note", key="note", placeholder="what you found or did")
    actions = {"open": ["acknowledged", "resolved"], "acknowledged": ["resolved", "open"],
               "resolved": ["open"]}[alert["status"]]  # fmt: skip
    names = {"acknowledged": "Acknowledge", "resolved": "Resolve", "open": "Reopen"}
    for col, target in zip(st.columns(len(actions)), actions, strict=True):
        if col.button(names[target], key=f"set-{target}", disabled=not who.strip()):
            warehouse.set_alert_status(ui.connection(), alert_id, target, by=who.strip(),
                                       note=note.strip())  # fmt: skip
            ui.alert_list.clear()
            st.rerun()
    if not who.strip():
        st.caption("Give your name to acknowledge or resolve: the alert's history records it.")
    with st.expander("History"):
        ui.table(
            warehouse.alert_history(ui.connection(), alert_id).select(
                "updated_at", "status", "updated_by", "note", "notified_at"
            )
        )
