"""Entry point of the web app (the full pages are being built; see the README)."""
import streamlit as st

st.set_page_config(page_title="Data cleansing with SGD-influence", page_icon="🧹")
st.title("Data cleansing with SGD-influence")
st.write("The engine is ready from the command line: `python -m influence train`, `score`, "
         "`retrain` and `check`. The pages of the web app are not built yet.")
