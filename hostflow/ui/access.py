"""An optional password in front of the whole app (issue 5: the app binds 127.0.0.1 by default and
can require a password). Set HOSTFLOW_APP_PASSWORD, or HOSTFLOW_APP_PASSWORD_FILE naming a file
that holds it (kept out of process lists and logs). Unset: no prompt."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import streamlit as st

SESSION_KEY = "_hostflow_authorised"


class AccessConfigError(RuntimeError):
    """The password setting names a file that cannot be read."""


def expected_password() -> str:
    path = os.environ.get("HOSTFLOW_APP_PASSWORD_FILE", "")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise AccessConfigError(
                f"HOSTFLOW_APP_PASSWORD_FILE: cannot read {path}: {exc.strerror}"
            ) from None
    return os.environ.get("HOSTFLOW_APP_PASSWORD", "")


def authorised() -> bool:
    """True when no password is set or this session gave it; otherwise show the prompt."""
    try:
        expected = expected_password()
    except AccessConfigError as exc:
        st.error(str(exc))
        return False
    if not expected or st.session_state.get(SESSION_KEY):
        return True
    st.title("hostflow")
    with st.form("login"):
        given = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Open")
    if submitted:
        if hmac.compare_digest(given.encode(), expected.encode()):
            st.session_state[SESSION_KEY] = True
            st.rerun()
        st.error("Wrong password.")
    return False
