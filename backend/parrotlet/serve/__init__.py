"""ServeCore: sessions, validation, the graph executor, and the HTTP server around engines."""
