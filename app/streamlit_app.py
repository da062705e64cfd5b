"""The Telltale app: ``streamlit run app/streamlit_app.py`` (or ``telltale app``).

Pages: Overview, Attribution, Segments, Shadow, Alerts, Release review (``app/views/``). Every
filter lives in the URL, so a link reproduces a view.
"""

import streamlit as st

from app import ui

st.set_page_config(page_title="Telltale", page_icon=":material/monitoring:", layout="wide")

pages = [
    st.Page("views/overview.py", title="Overview", default=True),  # served at the root
    st.Page("views/attribution.py", title="Attribution", url_path="attribution"),
    st.Page("views/segments.py", title="Segments", url_path="segments"),
    st.Page("views/shadow_runs.py", title="Shadow", url_path="shadow"),
    st.Page("views/alerts.py", title="Alerts", url_path="alerts"),
    st.Page("views/release_review.py", title="Release review", url_path="release-review"),
]
page = st.navigation(pages)
st.sidebar.caption(f"Warehouse: `{ui.shown_url()}`")
page.run()
