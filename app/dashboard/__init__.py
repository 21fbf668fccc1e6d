"""The read-only dashboard: its data (from the API's own services), its SVG charts, its page."""
