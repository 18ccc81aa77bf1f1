"""Editor support: the language server behind ``dlspec lsp``."""
