"""Where Telltale meets its users: the ``telltale`` CLI (``cli``, with ``*_cli`` sub-commands),
the Streamlit app (``streamlit_app`` and ``views/``), the attribution front door
(``attribution``), the weekly release review (``review``, ``report``), the regression alerts'
runner and sinks (``alerting``) and the one-command demo (``demo``).

Modules are imported where they are used: the CLI starts without loading Streamlit or vLLM.
"""
