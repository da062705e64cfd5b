"""Alerts: open and resolved regression alerts, acknowledge or resolve them, and the chart
behind each one."""

import streamlit as st

st.title("Alerts")
st.info(
    "Regression alerts come with `telltale alerts run` (hourly, from cron), which is not in "
    "this build yet."
)
