"""UI helpers shared by the Streamlit pages: cached resources and session state (`shared`),
job panels and downloads (`widgets`), plotly figures (`charts`, no streamlit), and the
mapping between widget values and the core's configs (`forms`, no streamlit)."""
