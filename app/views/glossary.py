"""The glossary: what the words the pages use mean (docs/glossary.md). The pages link here with
?term=<anchor> (words.term): that entry is shown on top."""
import streamlit as st

from app import words

st.title("Glossary")
asked = words.glossary().get(st.query_params.get("term", ""))
if asked:
    st.info(f"**{asked.title}.** {words.glossary_for_app(asked.text)}", icon=":material/menu_book:")
st.caption("The words the pages use, in plain terms. The README's docs hold the details.")
for entry in words.glossary().values():
    st.subheader(entry.title, anchor=entry.anchor)
    st.markdown(words.glossary_for_app(entry.text))
