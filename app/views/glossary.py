"""The glossary: what the words the pages use mean (docs/glossary.md; the pages link here)."""
import streamlit as st

from app import words

st.title("Glossary")
st.caption("The words the pages use, in plain terms. The README's docs hold the details.")
for entry in words.glossary().values():
    st.subheader(entry.title, anchor=entry.anchor)
    st.markdown(words.glossary_for_app(entry.text))
