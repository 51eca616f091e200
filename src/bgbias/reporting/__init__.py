"""Reports: the results tables and figures, and the query tool."""
