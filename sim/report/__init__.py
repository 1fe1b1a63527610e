"""What countdrift writes and reads back: results.json and its schemas,
output folders, tables, charts, the summary page, compare, statistics."""
