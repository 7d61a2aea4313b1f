"""The app's logic, testable without Streamlit: state and filters, time windows, Sankey building,
tables and formatting. app.py and pages/ are thin layers over it."""
