"""Text -> parse tree -> typed syntax tree."""
